"""`cardiacaiseg analyze` outputs with and without ``--scene`` (issue 14): without it the run writes
results, segmentations and report without importing slicer-core, VTK or torch; with it scene.mrb
comes from the Logic's scene and reopens. All-or-nothing replacement holds for both."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CardiacAISegLib import cli, outputs
from CardiacAISegLib.phantoms.phantom import write_phantom

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
HEAVY = ("slicer", "vtk", "torch")
# runs cli.main in a fresh interpreter and prints which heavy packages it imported, at exit
PROBE = ("import json, sys\nfrom CardiacAISegLib import cli\nrc = cli.main(sys.argv[1:])\n"
         f"print('IMPORTED ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\nsys.exit(rc)\n")


def _probe(*argv):
    env = {k: v for k, v in os.environ.items() if k != "CARDIACAISEG_RUNTIME"}   # the default runtime choice
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTED ")][-1]
    return json.loads(line[len("IMPORTED "):]), proc


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory):
    if not SAMPLE.is_dir():
        pytest.skip(f"shipped sample not found at {SAMPLE}")
    root = tmp_path_factory.mktemp("sample")
    plain = _probe("analyze", SAMPLE, "--out", root / "plain", "--quiet")
    with_scene = _probe("analyze", SAMPLE, "--out", root / "scene", "--quiet", "--scene")
    return {"plain": (root / "plain", *plain), "scene": (root / "scene", *with_scene)}


def test_default_run_imports_no_slicer_vtk_or_torch(sample_runs):
    out, imported, proc = sample_runs["plain"]
    assert imported == [], f"`cardiacaiseg analyze` without --scene imported {imported}"
    assert sorted(os.listdir(out)) == ["report.png", "results.csv", "results.json",
                                       "segmentation.seg.nrrd", "segmentation_es.seg.nrrd"]
    timing = json.loads((out / "results.json").read_text())["timing_s"]
    assert {"writing_segmentation", "writing_report", "writing"} <= set(timing) and "writing_scene" not in timing
    # results.json rounds to 0.1 ms
    assert timing["writing"] >= timing["writing_segmentation"] + timing["writing_report"] - 2e-4


def test_scene_run_writes_a_scene_that_reopens_with_the_same_segmentation(sample_runs):
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.seg_nrrd import read_seg_nrrd

    plain, scene_out = sample_runs["plain"][0], sample_runs["scene"][0]
    assert "slicer" in sample_runs["scene"][1]
    assert sorted(os.listdir(scene_out)) == sorted(os.listdir(plain) + ["scene.mrb"])
    timing = json.loads((scene_out / "results.json").read_text())["timing_s"]
    assert timing["writing_scene"] > 0
    # the same network output both times: same files apart from timing
    for name in ("segmentation.seg.nrrd", "segmentation_es.seg.nrrd", "results.csv"):
        assert (plain / name).read_bytes() == (scene_out / name).read_bytes(), name
    ctx = sc.read_mrb(scene_out / "scene.mrb")
    nodes = {n.GetName(): n for n in sc.nodes_by_class(ctx, "vtkMRMLSegmentationNode")}
    assert len(nodes) == 2
    labels, _, _ = read_seg_nrrd(plain / "segmentation.seg.nrrd")
    (ed,) = [n for name, n in nodes.items() if name.endswith(" ED")]
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(ed, *sc.segmentation_geometry(ed)), labels)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    ph = tmp_path_factory.mktemp("phantom")
    write_phantom("cine", ph, seed=2, n_frames=6, n_slices=5, size=64)
    return [ph / "cine.nii.gz", "--labels", ph / "cine_labels.nii.gz", "--quiet"]


def _analyze(args, out, *extra):
    return cli.main(["analyze", *map(str, args), "--out", str(out), *extra])


def test_old_scene_needs_force_and_goes_with_a_run_without_scene(phantom, tmp_path, capsys):
    out = tmp_path / "out"
    assert _analyze(phantom, out, "--scene") == 0
    assert (out / "scene.mrb").is_file()
    capsys.readouterr()
    assert _analyze(phantom, out) == 2
    err = capsys.readouterr().err
    assert "would overwrite" in err and "scene.mrb" in err and "--force" in err
    # replaced: the scene of the old run does not stay beside the results of the new one
    assert _analyze(phantom, out, "--force") == 0
    assert "scene.mrb" not in os.listdir(out)
    assert set(os.listdir(out)) == set(outputs.OUTPUT_FILES) | {"segmentation_es.seg.nrrd"}


def test_failed_writer_without_scene_keeps_the_old_outputs(phantom, tmp_path, capsys, monkeypatch):
    """The report fails after the segmentations were staged: old outputs (scene.mrb included)
    stay as they were, byte for byte, and no staging folder is left."""
    from CardiacAISegLib import report

    out = tmp_path / "out"
    assert _analyze(phantom, out, "--scene") == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}

    def broken_report(path, *args, **kwargs):
        raise OSError(f"{path}: No space left on device")

    # the renderer both paths end in: in-process, and the CLI's report process (forked after this patch)
    monkeypatch.setattr(report, "write_report", broken_report)
    capsys.readouterr()
    assert _analyze(phantom, out, "--force") == 1
    err = capsys.readouterr().err
    assert "report.png: No space left on device" in err and "Traceback" not in err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


def test_report_drawn_in_process_when_the_report_process_dies(phantom, tmp_path, monkeypatch):
    """A report process that dies without a word (killed, out of memory) costs the run nothing:
    the report is drawn in-process, and it is the picture the process would have drawn."""
    from PIL import Image

    from CardiacAISegLib import report_process

    if not report_process.fork_available():
        pytest.skip("the report process needs os.fork (Linux)")
    assert _analyze(phantom, tmp_path / "normal") == 0
    # forked after this patch: the child leaves at once, before or after the job is handed over
    monkeypatch.setattr(report_process, "_child", lambda job_fd, answer_fd: None)
    assert _analyze(phantom, tmp_path / "fallback") == 0
    drawn = [np.asarray(Image.open(tmp_path / name / "report.png")) for name in ("normal", "fallback")]
    np.testing.assert_array_equal(drawn[0], drawn[1])


def test_batch_scene_reaches_each_study(phantom, tmp_path, monkeypatch):
    """`batch --scene` gives every study analyze's --scene (the cohort's studies run analyze.run)."""
    from CardiacAISegLib import cohort

    image, _, labels, _ = phantom
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,labels\n{image},{labels}\n")
    seen = {}

    class Stop(Exception):
        pass

    def fake_run_cohort(specs, out_root, **kwargs):
        seen["specs"], seen["out"] = specs, out_root
        raise Stop

    monkeypatch.setattr(cohort, "run_cohort", fake_run_cohort)
    for extra, scene in (((), False), (("--scene",), True)):
        assert cli.main(["batch", str(manifest), "--out", str(tmp_path / "cohort"), "--quiet", *extra]) == 1
        assert [bool(s.options.get("scene")) for s in seen["specs"]] == [scene]
    row = cohort.run_study(seen["specs"][0], seen["out"])
    assert row["status"] in ("ok", "qc-review"), row
    assert (Path(seen["out"]) / seen["specs"][0].study / "scene.mrb").is_file()


def test_disk_full_names_the_output_folder_and_empty_out_is_refused(phantom, tmp_path, capsys, monkeypatch):
    """An OSError with no file (ENOSPC from a write) said only "[Errno 28] No space left on
    device"; --out "" wrote the outputs into the current folder (probe 21)."""
    import errno

    from CardiacAISegLib import report

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_report", full)
    out = tmp_path / "out"
    assert _analyze(phantom, out) == 1
    assert f"error: {out}: No space left on device (writing the outputs)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", str(phantom), "--out", ""])
    assert e.value.code == 2 and "argument --out: an empty output folder name" in capsys.readouterr().err


def test_train_refuses_a_folder_holding_an_earlier_run_and_force_clears_it(tmp_path, capsys):
    """A second `train` into the first's folder replaced its checkpoints and left its snapshots
    beside its own, exit 0 (probe 54). Refused unless --resume (continue) or --force (replace:
    the earlier run's files removed before training)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "history.json", "snapshot-001.pt"):
        (out / name).write_bytes(b"earlier")
    (out / "notes.txt").write_text("mine")
    assert cli.main(["train", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert "already holds a training run (history.json, last.pt, snapshot-001.pt)" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == b"earlier"
    from CardiacAISegLib.models.checkpoints import refuse_or_clear_earlier_run

    refuse_or_clear_earlier_run(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_the_cohort_report_leaves_no_temporary_file_when_it_cannot_be_written(tmp_path, monkeypatch):
    """A full disk left an empty .cohort_report.png.tmp.png behind (probe 54)."""
    import matplotlib.figure

    from CardiacAISegLib.cohort_report import write_cohort_report

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        write_cohort_report([{"study": "a", "status": "ok", "lv_edv_ml": 100.0, "lv_ef_pct": 50.0}], tmp_path / "cohort_report.png")
    assert list(tmp_path.iterdir()) == []


def test_outputs_a_killed_run_had_moved_aside_are_kept_where_they_can_be_seen(phantom, tmp_path):
    """A run killed (SIGKILL) while it swapped its outputs in left its hidden staging folder, with
    the previous run's outputs moved aside in it (probe 54): the next run wrote beside them unasked,
    and they stayed hidden. The next run now keeps them in a visible folder, removes the rest of
    the staging folder and says so in its warnings."""
    out = tmp_path / "out"
    assert _analyze(phantom, out) == 0
    before = json.loads((out / "results.json").read_text())
    stage = out / f"{outputs.STAGE_PREFIX}k1ll3d"   # as replace_outputs leaves it when killed mid-swap
    (stage / ".old").mkdir(parents=True)
    for name in os.listdir(out):
        if name in outputs.REPLACED_FILES:
            os.replace(out / name, stage / ".old" / name)
    (stage / "report.png").write_bytes(b"the killed run's own, not yet moved in")
    assert _analyze(phantom, out) == 0
    kept = out / "cardiacaiseg-previous-outputs-k1ll3d"
    assert json.loads((kept / "results.json").read_text()) == before
    assert not stage.exists() and not [n for n in os.listdir(out) if n.startswith(outputs.STAGE_PREFIX)]
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert any("was stopped while it replaced its outputs" in w and kept.name in w for w in warnings)


def test_a_qperf_folder_read_without_series_says_its_stress_was_read(shared_data, tmp_path, capsys):
    """A QPerf folder holds a stress and a rest series; without --series the stress is read (a
    DICOM folder of both asks which). It was read with no word (probe 60); now said, with how to
    read the rest or both."""
    assert cli.main(["analyze", str(shared_data / "qperf"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("the stress series was read; --series rest reads the rest" in w for w in doc["warnings"])
    assert "the stress series was read" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, said", [("--noise", "nan", "must be a finite number >= 0"),
                                                  ("--noise", "-0.1", "must be a finite number >= 0"),
                                                  ("--seed", "-1", "must be a whole number >= 0")])
def test_phantom_refuses_values_it_cannot_make_a_truth_of(tmp_path, capsys, option, value, said):
    """Probe 74: `phantom --noise nan` wrote an image all NaN beside a truth.json of exact truth,
    exit 0; a negative noise or seed ended in numpy's 'scale < 0', exit 1."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["phantom", "--out", str(tmp_path / "ph"), option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {value}: {said}" in capsys.readouterr().err
    assert not (tmp_path / "ph").exists()


def test_phantom_force_replaces_a_phantom_of_the_other_kind_whole(tmp_path):
    """Probe 74: a perfusion phantom written with --force over a cine one kept cine.nii.gz and its
    labels beside a truth.json of the perfusion phantom; the folder then read as no study."""
    from CardiacAISegLib.errors import OutputExistsError

    write_phantom("cine", tmp_path, seed=1, n_frames=4, n_slices=4, size=48)
    with pytest.raises(OutputExistsError, match="cine.nii.gz"):
        write_phantom("perfusion", tmp_path, seed=1)
    write_phantom("perfusion", tmp_path, seed=1, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aif.csv", "perfusion.nii.gz", "perfusion_labels.nii.gz",
                                                          "truth.json"]


def test_phantom_force_replaces_only_a_phantom(tmp_path, capsys):
    """Probe 74: --force removed a truth.json or aif.csv of any origin (a study's own AIF,
    someone's ground truth) along with an earlier phantom's files."""
    from CardiacAISegLib.errors import OutputExistsError

    (tmp_path / "truth.json").write_text('{"patient": "P7", "expert EF": 61}')
    with pytest.raises(OutputExistsError, match="no phantom wrote"):
        write_phantom("perfusion", tmp_path, seed=1, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.json"]
    assert "P7" in (tmp_path / "truth.json").read_text()


def test_phantom_says_when_the_noise_drowns_the_signal(tmp_path, capsys):
    """Probe 74: `phantom --noise 1e6` wrote images of noise beside an exact truth without a word."""
    assert cli.main(["phantom", "--kind", "perfusion", "--out", str(tmp_path / "loud"), "--noise", "1e6"]) in (0, None)
    assert "the images are mostly noise" in capsys.readouterr().err
    assert cli.main(["phantom", "--kind", "perfusion", "--out", str(tmp_path / "quiet"), "--noise", "0.02"]) in (0, None)
    assert "mostly noise" not in capsys.readouterr().err


def test_phantom_force_replaces_a_phantom_whose_truth_json_was_lost(tmp_path):
    """Review: a phantom folder whose truth.json was deleted could never be written again (refused
    as 'its truth.json is not a phantom's'), which blocked the module's own sample folder."""
    write_phantom("cine", tmp_path, seed=1, n_frames=4, n_slices=4, size=48)
    (tmp_path / "truth.json").unlink()
    write_phantom("cine", tmp_path, seed=1, n_frames=4, n_slices=4, size=48, force=True)
    assert (tmp_path / "truth.json").exists()
