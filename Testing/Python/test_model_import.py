"""`cardiacaiseg import-model` as a security boundary: plain-slug names, nothing written outside
the user models folder, no replacing without --force (and never a foreign folder), shipped names
kept, cards and networks checked by a test run before install, ONNX run by onnxruntime."""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CardiacAISegLib import cli  # noqa: E402
from CardiacAISegLib.models import registry  # noqa: E402

CLASSES = ["background", "LV blood pool", "LV myocardium", "RV"]


class IntensityClassifier(torch.nn.Module):
    """Class = nearest of the intensities (0, 1, 0.5, 0.25): a 'network' whose answer is known."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centres", torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1))

    def forward(self, x):
        return -100.0 * (x - self.centres) ** 2


class NoClassAxis(torch.nn.Module):
    """Returns (batch, rows, cols): a label-like map instead of class scores."""

    def forward(self, x):
        return x[:, 0] * 2.0


class ThreeClasses(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, -x, x * 0.5], 1)


class FixedSize(torch.nn.Module):
    """Only works on one 64x64 image: fails on the analysis's batches of other sizes."""

    def forward(self, x):
        return x.reshape(1, 1, 64, 64).repeat(1, 4, 1, 1)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("CARDIACAISEG_MODELS", str(folder))
    registry._CACHE.clear()
    yield folder
    registry._CACHE.clear()


def write_card(path, weights_file, name="user-net", fmt="torchscript", **changes):
    card = {"name": name, "title": "Test network", "task": "cine", "version": "1", "classes": list(CLASSES),
            "input": {"pixel_mm": 1.25, "size_multiple": 1, "normalisation": "none"},
            "weights": {"file": weights_file.name, "format": fmt, "sha256": registry.sha256_of(weights_file)},
            "licence": "test"}
    card.update(changes)
    path.write_text(json.dumps(card))
    return path


def torchscript_model(folder, module=None, name="user-net", file="model.ts", **changes):
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / file
    torch.jit.script(module if module is not None else IntensityClassifier()).save(str(weights))
    return weights, write_card(folder / f"{name}.card.json", weights, name=name, **changes)


def onnx_model(folder, name="user-onnx", module=None):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (test extra)")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still the one without onnxscript
        torch.onnx.export((module or IntensityClassifier()).eval(), torch.zeros(1, 1, 32, 32), str(weights), input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "n", 2: "rows", 3: "cols"}}, dynamo=False)
    return weights, write_card(folder / "onnx.card.json", weights, name=name, fmt="onnx")


def import_cli(capsys, weights, card, *flags):
    code = cli.main(["import-model", str(weights), str(card), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def expect_refusal(capsys, weights, card, named, problem, *flags):
    """Exit 2, one `error:` line on stderr naming ``named`` and the problem."""
    code, out, err = import_cli(capsys, weights, card, *flags)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(named) in lines[0] and problem in lines[0], lines[0]
    return lines[0]


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("name", ["../x", "../../etc", "a/b", "..", "a..b", ".hidden", "Upper", "", "x" * 65, "C:\\x"])
def test_name_must_be_a_plain_slug_and_nothing_is_written(tmp_path, capsys, user_models, name):
    weights, card = torchscript_model(tmp_path / "src", name=name.replace("/", "_") or "empty")
    data = json.loads(card.read_text())
    data["name"] = name
    card.write_text(json.dumps(data))
    before = tree(tmp_path)
    expect_refusal(capsys, weights, card, card, "is not allowed")
    assert tree(tmp_path) == before            # no user folder, no ../x beside it
    assert not user_models.exists()


def test_existing_model_is_replaced_only_with_force(tmp_path, capsys, user_models):
    first, card1 = torchscript_model(tmp_path / "v1")
    code, out, _ = import_cli(capsys, first, card1)
    assert code == 0 and "imported user-net" in out
    installed = user_models / "user-net" / "model.ts"
    assert registry.sha256_of(installed) == registry.sha256_of(first)

    retrained = IntensityClassifier()
    retrained.centres[0, 3] = 0.3
    second, card2 = torchscript_model(tmp_path / "v2", retrained, file="other.ts", title="Second version")
    assert registry.sha256_of(second) != registry.sha256_of(first)
    expect_refusal(capsys, second, card2, user_models / "user-net", "already installed")
    assert registry.sha256_of(installed) == registry.sha256_of(first)

    code, out, err = import_cli(capsys, second, card2, "--force")
    assert code == 0, err
    assert sorted(p.name for p in (user_models / "user-net").iterdir()) == ["model.json", "other.ts"]
    card = registry.get_card("user-net")
    assert card["title"] == "Second version" and card["weights"]["sha256"] == registry.sha256_of(second)
    assert [p.name for p in user_models.iterdir()] == ["user-net"]   # no staging or replaced folder left


def test_force_never_replaces_a_folder_that_holds_other_files(tmp_path, capsys, user_models):
    weights, card = torchscript_model(tmp_path / "src")
    mine = user_models / "user-net"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    expect_refusal(capsys, weights, card, mine, "not replaced, even with --force", "--force")
    assert (mine / "notes.txt").read_text() == "my notes" and tree(mine) == ["notes.txt"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    mine.rename(tmp_path / "moved")
    os.symlink(elsewhere, user_models / "user-net")
    expect_refusal(capsys, weights, card, user_models / "user-net", "symbolic link", "--force")
    assert tree(elsewhere) == ["keep.txt"]


def test_shipped_name_is_refused_and_models_lists_sources(tmp_path, capsys, user_models):
    shipped = sorted(registry.shipped_names())
    if not shipped:
        pytest.skip("no shipped models in this checkout")
    weights, card = torchscript_model(tmp_path / "src", name=shipped[0])
    expect_refusal(capsys, weights, card, card, f"name {shipped[0]!r} is a shipped model; choose another name", "--force")
    assert not user_models.exists()

    # a folder made by hand (or by an older version) under a shipped name is reported, not used
    hand = user_models / shipped[0]
    hand.mkdir(parents=True)
    (hand / "model.json").write_text(card.read_text())
    (hand / "model.ts").write_bytes(weights.read_bytes())
    weights2, card2 = torchscript_model(tmp_path / "src2", name="user-net")
    assert import_cli(capsys, weights2, card2)[0] == 0

    assert cli.main(["models"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines() if line and not line.startswith((" ", "user models"))}
    assert rows[shipped[0]] == "shipped" and rows["user-net"] == "user"
    assert "a shipped model's name cannot be reused" in out
    # timings say what they counted (the key-image card reads once, the cine default in 4; probe 60)
    assert "ms/slice CPU (4 readings per slice, 2 threads)" in out and "ms/slice CPU (1 reading per slice" in out
    assert f"{hand}: not used: name {shipped[0]!r} is taken by the shipped model" in err
    assert registry.get_card(shipped[0])["_source"] == "shipped"

    assert cli.main(["models", "--json"]) == 0
    listed = {c["name"]: c["source"] for c in json.loads(capsys.readouterr().out)}
    assert listed[shipped[0]] == "shipped" and listed["user-net"] == "user"


def test_missing_weights_are_named_before_the_cards_faults(tmp_path, capsys, user_models):
    """A shipped card given with a weights path that does not exist: the error was about the
    card's 'default' field, not the missing file (probe 60)."""
    shipped_card = Path(registry.__file__).resolve().parents[2] / "Resources" / "Models" / "unet-light" / "model.json"
    expect_refusal(capsys, tmp_path / "none.onnx", shipped_card, tmp_path / "none.onnx", "weights file not found")
    expect_refusal(capsys, tmp_path, shipped_card, tmp_path, "a folder, not a weights file")
    assert not user_models.exists()


def test_corrupt_torchscript_is_refused_naming_the_file(tmp_path, capsys, user_models):
    good, _ = torchscript_model(tmp_path / "good")
    for n, payload in enumerate([b"not a model at all", good.read_bytes()[: good.stat().st_size // 2]]):
        weights = tmp_path / f"broken{n}.ts"
        weights.write_bytes(payload)
        card = write_card(tmp_path / f"broken{n}.json", weights)     # sha256 matches: the file itself is bad
        expect_refusal(capsys, weights, card, weights, "cannot load as TorchScript weights")
        assert not user_models.exists()


@pytest.mark.parametrize("pixel_mm", [0, -1.25, None, "1.25", float("nan")])
def test_bad_pixel_mm_is_refused_naming_the_card(tmp_path, capsys, user_models, pixel_mm):
    weights, card = torchscript_model(tmp_path / "src", input={"pixel_mm": pixel_mm, "size_multiple": 1})
    line = expect_refusal(capsys, weights, card, card, "input.pixel_mm must be a positive number of mm")
    assert repr(pixel_mm) in line
    assert not user_models.exists()


@pytest.mark.parametrize("module, problem", [(NoClassAxis(), "it lacks the class axis"),
                                             (ThreeClasses(), "it gives 3 classes, the card names 4"),
                                             (FixedSize(), "the network fails on a (2, 1, 64, 80) test input")])
def test_network_with_the_wrong_output_is_refused_by_the_test_run(tmp_path, capsys, user_models, module, problem):
    weights, card = torchscript_model(tmp_path / "src", module)
    expect_refusal(capsys, weights, card, weights, problem)
    assert not user_models.exists()


@pytest.mark.parametrize("change, problem", [({"task": "ct"}, "task must be 'cine' or 'perfusion'"),
                                             ({"classes": ["background", "RV", "LV myocardium", "LV blood pool"]},
                                              "classes must be"),
                                             ({"weights": {"file": "../../model.ts", "format": "torchscript",
                                                           "sha256": "0" * 64}}, "must be a plain file name"),
                                             ({"weights": {"file": "model.ts", "format": "keras", "sha256": "0" * 64}},
                                              "weights format 'keras'")])
def test_card_problems_are_refused_naming_the_card(tmp_path, capsys, user_models, change, problem):
    weights, card = torchscript_model(tmp_path / "src", **change)
    expect_refusal(capsys, weights, card, card, problem)
    assert not user_models.exists()


def test_onnx_model_imports_and_segments_a_phantom(tmp_path, capsys, user_models):
    pytest.importorskip("onnxruntime")
    from test_models import oblique_study

    from CardiacAISegLib.pipeline import segment
    from CardiacAISegLib.models.inference import OnnxModule

    weights, card = onnx_model(tmp_path / "src")
    code, out, err = import_cli(capsys, weights, card)
    assert code == 0, err
    assert isinstance(registry.load_model("user-onnx").module, OnnxModule)

    # the answer is known on the oblique test study: the labels must land where the intensities are
    study, truth = oblique_study()
    labels, info = segment(study, "user-onnx")
    assert info["name"] == "user-onnx" and info["sha256"] == registry.sha256_of(weights)
    for v in (1, 2, 3):
        a, b = labels[0] == v, truth == v
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95

    # end to end through the CLI on the cine phantom: ONNX and the same network in torch agree
    assert cli.main(["phantom", "--kind", "cine", "--out", str(tmp_path / "phantom")]) == 0
    ts_weights, ts_card = torchscript_model(tmp_path / "ts", name="user-ts")
    assert import_cli(capsys, ts_weights, ts_card)[0] == 0
    for name in ("user-onnx", "user-ts"):
        assert cli.main(["analyze", str(tmp_path / "phantom" / "cine.nii.gz"), "--out", str(tmp_path / name),
                         "--model", name, "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    onnx_doc, ts_doc = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("user-onnx", "user-ts"))
    assert onnx_doc["model"]["name"] == "user-onnx" and onnx_doc["model"]["sha256"] == registry.sha256_of(weights)
    assert onnx_doc["cine"]["lv_edv_ml"] > 0
    assert onnx_doc["cine"]["lv_edv_ml"] == pytest.approx(ts_doc["cine"]["lv_edv_ml"], rel=1e-3)
    assert onnx_doc["cine"]["lv_mass_g"] == pytest.approx(ts_doc["cine"]["lv_mass_g"], rel=1e-3)


def test_onnx_without_onnxruntime_is_refused_with_the_reason(tmp_path, capsys, user_models, monkeypatch):
    weights, card = onnx_model(tmp_path / "src")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)   # import onnxruntime -> ImportError
    expect_refusal(capsys, weights, card, weights, "ONNX models need onnxruntime")
    assert not user_models.exists()


def test_corrupt_onnx_is_refused_naming_the_file(tmp_path, capsys, user_models):
    pytest.importorskip("onnxruntime")
    weights = tmp_path / "broken.onnx"
    weights.write_bytes(b"\x08\x07garbage")
    card = write_card(tmp_path / "broken.json", weights, fmt="onnx")
    expect_refusal(capsys, weights, card, weights, "cannot load as ONNX weights")
    assert not user_models.exists()


def test_failed_install_leaves_no_folder_behind(tmp_path, capsys, user_models, monkeypatch):
    weights, card = torchscript_model(tmp_path / "src")
    user_models.mkdir()
    (user_models / "other").mkdir()                     # the user's folder exists with other things in it

    def disk_full(src, dst, *args, **kwargs):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry.shutil, "copyfile", disk_full)
    expect_refusal(capsys, weights, card, user_models / "user-net", "No space left on device")
    assert tree(user_models) == ["other"]               # no model folder, no staging folder
    assert "user-net" not in [c["name"] for c in registry.list_models()]


def test_hand_made_user_folder_pointing_outside_is_not_used(tmp_path, capsys, user_models):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    folder = user_models / "sneaky"
    folder.mkdir(parents=True)
    write_card(folder / "model.json", secret, name="sneaky")
    data = json.loads((folder / "model.json").read_text())
    data["weights"]["file"] = "../../secret.bin"
    (folder / "model.json").write_text(json.dumps(data))
    assert "sneaky" not in [c["name"] for c in registry.list_models()]
    assert cli.main(["models"]) == 0
    assert f"{folder}: not used: weights file '../../secret.bin' must be a plain file name" in capsys.readouterr().err


@pytest.mark.parametrize("change, problem", [
    ({"input": {"pixel_mm": 12.5, "size_multiple": 1}}, "input.pixel_mm 12.5 mm is outside 0.3-5 mm"),
    ({"input": {"pixel_mm": 1.25, "size_multiple": 1, "channels": 3}}, "input.channels 3: the engine feeds this cine network 1"),
    ({"default": True}, "'default': true: the shipped default model stays the default"),
])
def test_card_fields_the_engine_cannot_honour_are_refused(tmp_path, capsys, user_models, change, problem):
    """A ×10 pixel_mm typo, a channel count the engine does not feed, a second default: imported
    without a word, they gave a run that found no LV, or two defaults listed (probe round 15)."""
    weights, card = torchscript_model(tmp_path / "src", **change)
    expect_refusal(capsys, weights, card, card, problem)
    assert not user_models.exists()


def test_a_normalisation_other_than_the_engines_is_said_at_import(tmp_path, capsys, user_models):
    weights, card = torchscript_model(tmp_path / "src", input={"pixel_mm": 1.25, "size_multiple": 1,
                                                               "normalisation": "z-score per slice"})
    code, out, err = import_cli(capsys, weights, card)
    assert code == 0 and "imported user-net" in out
    assert "warning: input.normalisation says 'z-score per slice'" in err and "1st-99.5th percentile" in err


def test_a_2_5d_network_is_tested_with_its_neighbouring_slices(tmp_path, capsys, user_models):
    """The import's test run fed every cine network one channel: each 2.5D model (its card's
    input.context_slices, or a state_dict's in_channels) was refused, and a one-channel network
    declared 2.5D was imported, to fail at its first run with a bare ONNX Runtime error."""
    from CardiacAISegLib.models.unet_light import UNetLight

    folder = tmp_path / "ctx"
    folder.mkdir()
    net = UNetLight(in_channels=3, filters=(4, 8, 16, 32, 64))
    with torch.no_grad():   # untrained: LV everywhere, so the import's sample check finds an LV to compare
        net.head.bias[:] = torch.tensor([0.0, 50.0, 0.0, 0.0])
    torch.save(net.state_dict(), folder / "weights.pt")
    card = write_card(folder / "card.json", folder / "weights.pt", name="ctx-net", fmt="state_dict",
                      architecture={"name": "unet-light", "params": {"in_channels": 3, "filters": [4, 8, 16, 32, 64]}},
                      input={"pixel_mm": 1.25, "size_multiple": 16})
    code, out, err = import_cli(capsys, folder / "weights.pt", card)
    assert code == 0, err
    weights, _ = onnx_model(tmp_path / "onnx")          # one input channel
    card = write_card(tmp_path / "onnx" / "ctx.card.json", weights, name="onnx-ctx", fmt="onnx",
                      input={"pixel_mm": 1.25, "size_multiple": 1, "context_slices": 1})
    line = expect_refusal(capsys, weights, card, weights, "(2, 3, ")
    assert "input.context_slices" in line


class BackgroundOnly(torch.nn.Module):
    """Finds nothing: a network fed other numbers than it was trained on."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :1]).repeat(1, 3, 1, 1)], 1)


def test_a_network_that_finds_no_lv_is_named(tmp_path, capsys, user_models):
    """"no LV blood pool labelled at ED" named the image and its labels when an imported network
    had found nothing (probe round 15): the network is named, and what to check in its card."""
    import shutil

    weights, card = torchscript_model(tmp_path / "src", module=BackgroundOnly(), name="blind-net")
    # refused at import since probe 80 (it labels nothing on the shipped sample); a folder put in
    # the user models folder by hand is not imported, and runs
    expect_refusal(capsys, weights, card, weights, "labels no LV blood pool on the shipped sample")
    (user_models / "blind-net").mkdir(parents=True)
    shutil.copyfile(weights, user_models / "blind-net" / weights.name)
    shutil.copyfile(card, user_models / "blind-net" / registry.CARD_NAME)
    assert cli.main(["phantom", "--kind", "cine", "--out", str(tmp_path / "phantom")]) == 0
    code = cli.main(["analyze", str(tmp_path / "phantom" / "cine.nii.gz"), "--out", str(tmp_path / "out"),
                     "--model", "blind-net", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "the network 'blind-net' (version 1) found none there" in err and "input.pixel_mm" in err, err


def test_models_lists_a_card_whose_timing_is_no_number():
    """A user card with "timing": null or a text for its time listed with a traceback (helper-85's
    review); such a card lists without a time."""
    assert cli._timing_text({"timing": None}) == ""
    assert cli._timing_text({"timing": {"cpu_ms_per_slice": "fast", "threads": "2"}}) == ""
    assert cli._timing_text({"timing": {"cpu_ms_per_slice": 20.4, "threads": "2"}, "input": {"tta": "oriented4"}}) \
        == "20 ms/slice CPU (4 readings per slice)"


# --- probe 65: a user's network that fails or gives NaN only on some inputs -------------------------
class NaNWhereSaturated(torch.nn.Module):
    """Finite on noise, NaN where the normalised image is clipped to 1 (a log of 1 - x, say)."""

    def forward(self, x):
        return -100.0 * (x - torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)) ** 2 / (1.0 - x).clamp_min(0.0).sign()


class NaNOnLargeImages(torch.nn.Module):
    """Passes the import's small test inputs, gives NaN on an analysis-sized slice."""

    def forward(self, x):
        scores = -100.0 * (x - torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)) ** 2
        if x.shape[-1] > 128:
            scores = scores * float("nan")
        return scores


class FailsOnLargeImages(torch.nn.Module):
    def forward(self, x):
        if x.shape[-1] > 128:
            raise RuntimeError("this export only takes images up to 128 columns")
        return -100.0 * (x - torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)) ** 2


class ThreeChannelReader(torch.nn.Module):
    """A 2.5D network: reads the slice between its neighbours (3 channels), refuses 1."""

    def forward(self, x):
        if x.shape[1] != 3:
            raise RuntimeError("expected 3 channels")
        return -100.0 * (x[:, 1:2] - torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1)) ** 2


def test_a_network_fixed_at_one_input_size_is_refused_at_import(tmp_path, capsys, user_models):
    """An export fixed at the test run's one shape (batch 2, 64 x 80) was imported ("test run
    passed"), to fail at the analysis's first slice with ONNX Runtime's own message, exit 1."""
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (test extra)")
    folder = tmp_path / "static"
    folder.mkdir()
    weights = folder / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(IntensityClassifier().eval(), torch.zeros(2, 1, 64, 80), str(weights), input_names=["image"],
                          output_names=["scores"], dynamo=False)   # no dynamic axes: 2 x 1 x 64 x 80 only
    card = write_card(folder / "card.json", weights, name="static-net", fmt="onnx")
    line = expect_refusal(capsys, weights, card, weights, "the network fails on a (1, 1, 112, 96) test input")
    assert "the analysis feeds it other sizes and batches" in line and not user_models.exists()


def test_a_network_that_gives_nan_on_a_saturated_image_is_refused_at_import(tmp_path, capsys, user_models):
    weights, card = torchscript_model(tmp_path / "src", module=NaNWhereSaturated(), name="nan-net")
    expect_refusal(capsys, weights, card, weights, "NaN/inf", )
    assert not user_models.exists()


@pytest.mark.parametrize("module, said", [(NaNOnLargeImages(), "gives non-finite class scores (NaN or inf) for "),
                                          (FailsOnLargeImages(), "this export only takes images up to 128 columns")])
def test_a_network_that_fails_in_the_analysis_is_named_in_one_line(tmp_path, capsys, user_models, monkeypatch, module, said):
    """NaN scores became background and the analysis passed QC; a network that raised ended it with
    a 20-line TorchScript traceback and exit 1. The import now segments the shipped sample, whose
    slices are analysis-sized, and refuses such a network; where the sample is not installed the
    analysis says it in one error line naming the model, exit 2."""
    weights, card = torchscript_model(tmp_path / "src", module=module, name="late-net")
    line = expect_refusal(capsys, weights, card, weights, said)
    assert "(the shipped sample's slices)" in line and not user_models.exists()
    monkeypatch.setattr(registry, "IMPORT_SAMPLE", tmp_path / "no-sample")
    assert import_cli(capsys, weights, card)[0] == 0
    assert cli.main(["phantom", "--kind", "cine", "--out", str(tmp_path / "phantom")]) == 0
    capsys.readouterr()
    code = cli.main(["analyze", str(tmp_path / "phantom" / "cine.nii.gz"), "--out", str(tmp_path / "out"),
                     "--model", "late-net", "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: model 'late-net': the network ") and said in lines[0], lines[0]
    assert "input.size_multiple" in lines[0] and not (tmp_path / "out" / "results.json").exists()


def test_a_2_5d_torchscript_network_takes_its_neighbours_from_its_card(tmp_path, capsys, user_models):
    """A TorchScript file does not say what its channels mean: a 2.5D network whose card says
    input.context_slices 1 was fed one channel and refused."""
    weights, card = torchscript_model(tmp_path / "src", module=ThreeChannelReader(), name="ctx-ts",
                                      input={"pixel_mm": 1.25, "size_multiple": 1, "context_slices": 1})
    code, out, err = import_cli(capsys, weights, card)
    assert code == 0, err
    from CardiacAISegLib.models.inference import context_slices

    assert context_slices(registry.load_model("ctx-ts").module) == 1


def test_an_error_said_in_one_line_keeps_its_last_line():
    """Cut at 200 characters, TorchScript's errors lost the failed operation, written last."""
    from CardiacAISegLib.models.inference import last_lines

    error = RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript:\n"
                         + "  File \"code/__torch__.py\", line 12\n" * 30 + "RuntimeError: expected scalar type Float but found Double")
    text = last_lines(error)
    assert text.startswith("The following operation failed") and text.endswith("expected scalar type Float but found Double")
    assert len(text) <= 300 and "\n" not in text


def test_a_float64_onnx_export_is_refused_saying_float32(tmp_path, capsys, user_models):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (test extra)")
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "f64"
    folder.mkdir()
    weights = folder / "f64.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Conv2d(1, 4, 3, padding=1).double().eval(), torch.zeros(1, 1, 32, 32, dtype=torch.float64),
                          str(weights), input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "n", 2: "rows", 3: "cols"}}, dynamo=False)
    card = write_card(folder / "card.json", weights, name="f64-net", fmt="onnx")
    expect_refusal(capsys, weights, card, weights, "e.g. a float64 export (CardiacAISeg runs float32")


def _shipped_unet_light_under_a_card(tmp_path, name, pixel_mm):
    """(weights, card) of the shipped unet-light's weights under a user card naming ``pixel_mm``."""
    import shutil

    shipped = registry.get_card("unet-light")
    folder = tmp_path / "src"
    folder.mkdir()
    weights = folder / "weights.pt"
    shutil.copyfile(registry.weights_path(shipped), weights)
    card = write_card(folder / "card.json", weights, name=name, fmt="state_dict",
                      architecture={"name": "unet-light", "params": shipped["architecture"]["params"]},
                      input={"pixel_mm": pixel_mm, "size_multiple": 16, "heart_crop_mm": 160.0})
    return weights, card


@pytest.mark.parametrize("pixel_mm, agrees", [(1.25, True), (2.5, False)])
def test_an_imported_network_is_compared_with_the_default_on_the_shipped_sample(tmp_path, capsys, user_models, pixel_mm,
                                                                                   agrees):
    """The shipped unet-light weights imported under a card that says 2.5 mm (they were trained at
    1.25): "test run passed", then EF up to 10 points and mass 15-35 g off with QC pass (probe 65).
    The import now segments the shipped sample and compares it with the shipped default: it says
    the disagreement, and every analysis with the network is flagged for review."""
    weights, card = _shipped_unet_light_under_a_card(tmp_path, "my-unet", pixel_mm)
    code, out, err = import_cli(capsys, weights, card)
    assert code == 0, err
    check = registry.get_card("my-unet")["import_check"]
    assert check["agrees"] is agrees and check["compared_with"].startswith("unet-light v")
    if agrees:   # the default's own weights: the same masks
        assert check["dice_lv"] > 0.95 and "It agrees with the shipped default on the shipped sample" in out and "against unet-light" in out and not err   # one reading vs its 4
    else:
        assert check["dice_myo"] < 0.8 and check["lv_mass_g"][0] < 0.85 * check["lv_mass_g"][1], check   # 0.755, -20 % measured
        assert "warning: on the shipped sample" in err and "input.pixel_mm (2.5 mm)" in err, err
    assert cli.main(["phantom", "--kind", "cine", "--out", str(tmp_path / "phantom")]) == 0
    capsys.readouterr()
    cli.main(["analyze", str(tmp_path / "phantom" / "cine.nii.gz"), "--out", str(tmp_path / "out"), "--model", "my-unet",
              "--quiet"])
    codes = [f["code"] for f in json.loads((tmp_path / "out" / "results.json").read_text())["qc"]["flags"]]
    assert ("MODEL_DISAGREES_ON_SAMPLE" in codes) is not agrees, codes


def test_a_card_with_another_pixel_size_than_the_network_was_trained_at_is_said(tmp_path, capsys, user_models):
    """Probe 80: the shipped unet-light (trained at 1.25 mm) under cards of 1.6-2.0 mm agreed with
    the default on the sample (Dice MYO 0.87-0.92) and imported silently; a failing heart then read
    EF 15-20 % for 10.5, QC pass. Read at 0.8x the card's size it agrees clearly better: said, and
    its analyses flagged."""
    weights, card = _shipped_unet_light_under_a_card(tmp_path, "my-unet-18", 1.8)
    code, out, err = import_cli(capsys, weights, card)
    assert code == 0, err
    check = registry.get_card("my-unet-18")["import_check"]
    assert check["dice_myo"] >= 0.8 and check["better_at_pixel_mm"] == 1.44 and check["agrees"] is False, check
    assert "read as if its pixels were 1.44 mm it agrees clearly better" in err, err
    # the listing and the Logic's selector say it too (probe 80: listed like any other model)
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    block = listing[listing.index("my-unet-18"):]
    assert "DISAGREED AT IMPORT: Dice LV" in block.split("\nuser models:")[0], listing
    assert "unet-light" not in listing.split("DISAGREED AT IMPORT")[0].rsplit("my-unet-18", 1)[0].split("\n")[-1]
    from CardiacAISegLib.logic import model_summary

    assert "disagreed at import: Dice LV" in model_summary(registry.get_card("my-unet-18"))
    assert "disagreed" not in model_summary(registry.get_card("unet-light"))


@pytest.mark.parametrize("written, card_says", [("onnx", "torchscript"), ("torchscript", "onnx"),
                                                ("torchscript", "state_dict"), ("state_dict", "torchscript")])
def test_weights_under_another_format_than_the_card_says_are_named_as_such(tmp_path, capsys, user_models, written,
                                                                           card_says):
    """Probe 80: an ONNX file under a card saying "torchscript" was refused as "your checkpoint file
    is corrupted", cut mid-word: the user was sent after a sound file. The refusal now says what
    the file is and which card field to set."""
    if written == "onnx":
        weights, _ = onnx_model(tmp_path / "src")
    elif written == "torchscript":
        weights, _ = torchscript_model(tmp_path / "src")
    else:
        (tmp_path / "src").mkdir()
        weights = tmp_path / "src" / "weights.pt"
        torch.save(ThreeClasses().state_dict() or {"w": torch.zeros(2)}, weights)
    assert registry.weights_format_of(weights) == written
    card = write_card(tmp_path / "card.json", weights, fmt=card_says,
                      **({"architecture": {"name": "unet-light"}} if card_says == "state_dict" else {}))
    names = {"onnx": "ONNX", "torchscript": "TorchScript", "state_dict": "a PyTorch state_dict"}
    expect_refusal(capsys, weights, card, weights, f'the file is written as {names[written]}, but the card\'s '
                   f'weights.format says "{card_says}": set it to "{written}"')
    assert tree(user_models) == []


def test_a_network_that_labels_nothing_on_the_sample_is_refused(tmp_path, capsys, user_models):
    """Probe 80: a network that labels everything background imported with a warning (Dice 0, LV
    EDV 0 mL), was listed and offered, and every analysis with it ended in "no LV"."""
    class Background(torch.nn.Module):
        def forward(self, x):
            zero = x * 0
            return torch.cat([zero + 1, zero, zero, zero], 1)

    weights, card = onnx_model(tmp_path / "bg", name="all-background", module=Background())
    expect_refusal(capsys, weights, card, weights, "labels no LV blood pool on the shipped sample")
    assert not (user_models / "all-background").exists()


def test_an_upper_case_sha256_is_the_same_digest(tmp_path):
    """Probe 80: PowerShell's Get-FileHash prints the digest in capitals; it was refused."""
    weights = tmp_path / "w.onnx"
    weights.write_bytes(b"x")
    card = json.loads(write_card(tmp_path / "card.json", weights, fmt="onnx").read_text())
    card["weights"]["sha256"] = card["weights"]["sha256"].upper()
    registry.validate_card_for_import(card, tmp_path / "card.json")
    assert card["weights"]["sha256"] == registry.sha256_of(weights)


def test_a_model_whose_folder_is_not_used_is_refused_with_the_reason(user_models):
    """Probe 74: `analyze --model NAME` where NAME's user folder holds a card that is not valid
    JSON said 'no such model' (`cardiacaiseg models` said why)."""
    (user_models / "broken").mkdir(parents=True)
    (user_models / "broken" / registry.CARD_NAME).write_text("{not json")
    from CardiacAISegLib.errors import CardiacInputError

    with pytest.raises(CardiacInputError) as e:
        registry.get_card("broken")
    assert Path(e.value.path) == user_models / "broken" / registry.CARD_NAME
    assert "is not used" in e.value.problem and "JSON" in e.value.problem
    with pytest.raises(CardiacInputError, match="no such model"):
        registry.get_card("absent")


def test_models_says_which_installed_model_cannot_run(tmp_path, capsys, user_models):
    """Probe 74: `cardiacaiseg models` listed a model whose weights were changed after import
    (or deleted) as any other; `analyze` then refused it."""
    weights, card = torchscript_model(tmp_path / "v1")
    assert import_cli(capsys, weights, card)[0] == 0
    installed = user_models / "user-net" / "model.ts"
    installed.write_bytes(installed.read_bytes() + b"\0")
    cli.main(["models"])
    out = capsys.readouterr().out
    assert "NOT USABLE" in out and "sha256 mismatch for model 'user-net'" in out
    assert out.count("NOT USABLE") == 1   # the shipped models run
    cli.main(["models", "--json"])
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["user-net"]["usable"] is False and listed["unet-light"]["usable"] is True
