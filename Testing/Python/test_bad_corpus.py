"""The odd-input corpus (``bad_corpus.py``) through `cardiacaiseg analyze` and `import-model`.

Each case has an expected outcome class: a clear error (exit 2, one ``error:`` line naming the
file or flag and the problem, the output folder as it was), a warned result (exit 0 with the
warning or QC code that says what is wrong) or a correct result (exit 0, the number equal to
the phantom's voxel-count truth). Never a traceback, a crash, a partial output or a write
outside the output folder. Label maps are given throughout, so no network runs.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bad_corpus  # noqa: E402

CASES = {c.name: c for c in bad_corpus.CASES}
# through a real `python -m CardiacAISegLib.cli` process too: exit codes and stderr as a shell sees them
SUBPROCESS = ("dicom_compressed_damaged", "labels_binary_mask_0_255", "aif_negative", "acdc_ed_not_an_integer",
              "dicom_localiser_mixed_into_the_series", "import_card_not_json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    base = bad_corpus.make_base(root / "base")
    bad_corpus._BASE_FOR_CHECKS[0] = base
    models = root / "user-models"
    old = os.environ.get("CARDIACAISEG_MODELS")
    os.environ["CARDIACAISEG_MODELS"] = str(models)    # import-model cases may never reach the real one
    from CardiacAISegLib.models import registry

    registry._CACHE.clear()
    yield base, root, models
    registry._CACHE.clear()
    if old is None:
        os.environ.pop("CARDIACAISEG_MODELS", None)
    else:
        os.environ["CARDIACAISEG_MODELS"] = old


def _explain(case, outcome):
    return (f"{case.name}: expected {bad_corpus.expected_class(case)}, got {outcome.klass} (exit {outcome.rc}): "
            f"{outcome.detail}\n{outcome.err[-2000:]}")


def test_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 40
    assert {c.category for c in CASES.values()} >= {"dicom", "volume", "labels", "acdc", "perfusion", "cli", "import"}
    assert {c.expect for c in CASES.values()} == {"error", "warn", "ok"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(corpus, name):
    base, root, models = corpus
    case = CASES[name]
    outcome = bad_corpus.run_case(case, base, root / name, models_dir=models)
    assert "Traceback" not in outcome.err, _explain(case, outcome)
    assert outcome.klass == bad_corpus.expected_class(case), _explain(case, outcome)
    if case.expect == "error":
        assert outcome.rc == 2 and outcome.doc is None
        line = [ln for ln in outcome.err.splitlines() if ln.startswith("error:")][0]
        for word in case.words:
            assert word.lower() in line.lower(), (word, line)
    else:
        assert outcome.rc == 0 and outcome.doc is not None
    if case.command == "import-model":
        assert not models.exists() or not any(models.iterdir()), "a refused import left files in the models folder"


@pytest.mark.parametrize("name", SUBPROCESS)
def test_case_in_a_subprocess(corpus, name):
    base, root, models = corpus
    case = CASES[name]
    outcome = bad_corpus.run_case(case, base, root / f"sub_{name}", subprocess_run=True, models_dir=models)
    assert "Traceback" not in outcome.err, _explain(case, outcome)
    assert outcome.klass == bad_corpus.expected_class(case), _explain(case, outcome)


def test_classifier_catches_what_it_is_for(corpus, monkeypatch):
    """The classifier itself: a silent exit 0, an error that names nothing, a traceback and a
    write outside the output folder are each told apart (so a passing corpus means something)."""
    base, root, models = corpus
    from CardiacAISegLib import cli

    case = CASES["acdc_ed_not_an_integer"]
    monkeypatch.setattr(cli, "main", lambda argv: 0)                       # silent: nothing said, no outputs
    assert bad_corpus.run_case(case, base, root / "cls1").klass == "partial_output"

    def vague(argv):
        print("error: something went wrong", file=sys.stderr)
        return 2
    monkeypatch.setattr(cli, "main", vague)
    assert bad_corpus.run_case(case, base, root / "cls2").klass == "unclear_error"

    def boom(argv):
        raise KeyError("ED")
    monkeypatch.setattr(cli, "main", boom)
    assert bad_corpus.run_case(case, base, root / "cls3").klass == "traceback"

    def stray(argv):
        (root / "stray.txt").write_text("x")
        print(f"error: {root / 'cls4' / 'patient803' / 'Info.cfg'}: ED '1.5' is not a frame number", file=sys.stderr)
        return 2
    monkeypatch.setattr(cli, "main", stray)
    assert bad_corpus.run_case(case, base, root / "cls4").klass == "outside_write"
