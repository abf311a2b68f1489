"""ONNX Runtime as the CPU runtime of the shipped networks: parity with torch, the registry's
choice of runtime, the exported files' sha256, and a process that never imports torch."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from CardiacAISegLib.errors import CardiacInputError  # noqa: E402
from CardiacAISegLib.models import array_ops, inference, preprocess, registry  # noqa: E402
from CardiacAISegLib.models.inference import OnnxModule, predict_volume_probabilities, segment_cine_study  # noqa: E402
from CardiacAISegLib.models.perfusion_segmentation import segment_perfusion_study  # noqa: E402
from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom  # noqa: E402
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom  # noqa: E402
from CardiacAISegLib.readers import load_study  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
SHIPPED = [c for c in registry.list_models() if c["_source"] == "shipped"]
CINE = [c["name"] for c in SHIPPED if c["task"] == "cine"]


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    registry._CACHE.clear()
    yield
    registry._CACHE.clear()


@pytest.fixture
def no_gpu(monkeypatch):
    """This test's machine as a CPU-only one, whatever it has."""
    monkeypatch.setattr(inference, "cuda_may_be_present", lambda: False)


# --- numpy pre/post-processing against torch's --------------------------------------------

@pytest.mark.parametrize("shape,size", [((3, 1, 256, 216), (320, 270)), ((2, 4, 320, 272), (256, 216)),
                                        ((1, 1, 17, 33), (8, 70)), ((2, 48, 40, 56), (40, 56))])
def test_numpy_resampling_and_padding_match_torch(shape, size):
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    expected = preprocess.resample_slices(torch.from_numpy(x), size).numpy()
    got = array_ops.resample_slices(x, size)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2.5e-7   # one or two float32 ulps of values in [0, 1]
    padded, crop = array_ops.pad_to_multiple(got, 16)
    padded_t, crop_t = preprocess.pad_to_multiple(torch.from_numpy(got), 16)
    assert crop == crop_t and np.array_equal(padded, padded_t.numpy())
    scores = np.random.default_rng(2).normal(size=(2, 4, 5, 6)).astype(np.float32) * 20
    assert np.allclose(array_ops.softmax(scores), torch.softmax(torch.from_numpy(scores), 1).numpy(), atol=1e-6)


# --- parity of the exported networks on real and phantom slices ----------------------------

def _cine_cases(shared):
    cases = [("phantom", make_cine_phantom(seed=3)[0]), ("Sunnybrook sample (GE)", load_study(SAMPLE))]
    if shared is not None:
        cases.append(("ACDC patient001", load_study(shared / "acdc" / "patient001")))
    return cases


@pytest.fixture(scope="module")
def shared_or_none():
    from conftest import SHARED_DATA

    return SHARED_DATA if (SHARED_DATA / "acdc" / "patient001").is_dir() else None


@pytest.mark.parametrize("name", CINE)
def test_onnx_export_matches_torch_on_real_and_phantom_cine(name, shared_or_none):
    card = registry.get_card(name)
    ort = registry.load_model(name, runtime="onnxruntime")
    ref = registry.load_model(name, runtime="torch")
    assert isinstance(ort.module, OnnxModule) and ort.runtime == "onnxruntime"
    assert isinstance(ref.module, torch.nn.Module) and ref.runtime == "torch"
    spec = card["input"]
    # the recurrent gammanet compounds float32 rounding over its timesteps (card: 4e-4 in scores)
    tolerance = 2e-3 if name == "gammanet" else 2e-4
    for label, study in _cine_cases(shared_or_none):
        volume = study.images[study.ed_frame or 0]
        # mid-ventricular slices keep the torch side quick (gammanet takes seconds a slice)
        mid, half = volume.shape[0] // 2, 1 if name == "gammanet" else 2
        volume = volume[mid - half:mid + half]
        spacing_rc = (study.spacing[1], study.spacing[0])
        p_ort = predict_volume_probabilities(ort.module, volume, spacing_rc, spec["pixel_mm"], spec["size_multiple"])
        p_ref = predict_volume_probabilities(ref.module, volume, spacing_rc, spec["pixel_mm"], spec["size_multiple"])
        assert p_ort.shape == p_ref.shape == (volume.shape[0], 4, *volume.shape[1:])
        diff = float(np.abs(p_ort - p_ref).max())
        assert diff < tolerance, f"{name} on {label}: probabilities differ by {diff:.2g}"
        # labels: identical but for pixels where two classes tie to within the difference
        l_ort, l_ref = p_ort.argmax(1), p_ref.argmax(1)
        top2 = np.sort(p_ref, 1)[:, -2:]
        near_tie = (top2[:, 1] - top2[:, 0]) < 2 * diff
        assert not ((l_ort != l_ref) & ~near_tie).any(), f"{name} on {label}: labels differ away from ties"
        assert (l_ort != l_ref).mean() < 1e-4


def test_default_cine_model_labels_are_identical_with_either_runtime_on_acdc(shared_data):
    study = load_study(shared_data / "acdc" / "patient001")
    name = registry.default_model("cine")
    by_ort = segment_cine_study(study, registry.load_model(name, runtime="onnxruntime"), device="cpu")
    by_torch = segment_cine_study(study, registry.load_model(name, runtime="torch"), device="cpu")
    assert by_ort.keys() == by_torch.keys() == {study.ed_frame, study.es_frame}
    for t in by_ort:
        assert np.array_equal(by_ort[t], by_torch[t]), f"frame {t}: {(by_ort[t] != by_torch[t]).sum()} pixels differ"


def test_perfusion_export_matches_torch_on_the_phantom():
    name = registry.default_model("perfusion")
    study, _ = make_perfusion_phantom(seed=5, noise=0.02)
    by_ort = segment_perfusion_study(study, registry.load_model(name, runtime="onnxruntime"), device="cpu")[0]
    by_torch = segment_perfusion_study(study, registry.load_model(name, runtime="torch"), device="cpu")[0]
    assert (by_ort == 2).sum() > 200   # a real myocardium, not two empty masks agreeing
    assert np.array_equal(by_ort, by_torch)


# --- cards and sha256 ---------------------------------------------------------------------

@pytest.mark.parametrize("card", SHIPPED, ids=lambda c: c["name"])
def test_every_shipped_model_has_a_verified_small_export(card):
    entry = card["onnx"]
    path = registry.verify_onnx(card)
    assert registry.sha256_of(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert path.stat().st_size < 8e6
    assert entry["opset"] >= 13 and 0 <= entry["parity_max_abs_diff"] < 1e-3


def _copy_shipped(user_models, name, new_name):
    """A shipped model copied to the user folder under another name (shipped names are reserved)."""
    folder = user_models / new_name
    shutil.copytree(registry.SHIPPED_DIR / name, folder)
    card = json.loads((folder / "model.json").read_text())
    card["name"] = new_name
    (folder / "model.json").write_text(json.dumps(card))
    return folder


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("CARDIACAISEG_MODELS", str(folder))
    return folder


def test_a_swapped_onnx_file_is_refused_not_run(user_models, no_gpu):
    folder = _copy_shipped(user_models, "unet-light", "copied-net")
    assert registry.load_model("copied-net").runtime == "onnxruntime"
    registry._CACHE.clear()
    shutil.copyfile(registry.SHIPPED_DIR / "perfusion-resunet" / "model.onnx", folder / "model.onnx")
    with pytest.raises(CardiacInputError, match="sha256 mismatch for the ONNX export") as e:
        registry.load_model("copied-net")
    assert str(folder / "model.onnx") in str(e.value)
    # torch, asked for, still runs the verified torch weights
    assert registry.load_model("copied-net", runtime="torch").runtime == "torch"
    (folder / "model.onnx").unlink()
    with pytest.raises(CardiacInputError, match="ONNX export of model 'copied-net' is missing"):
        registry.load_model("copied-net")


@pytest.mark.parametrize("bad", ["../model.onnx", "model.json", "weights.pt", "/tmp/x.onnx"])
def test_an_onnx_entry_pointing_outside_its_file_is_refused(user_models, bad):
    folder = _copy_shipped(user_models, "unet-light", "odd-net")
    card = json.loads((folder / "model.json").read_text())
    card["onnx"]["file"] = bad
    (folder / "model.json").write_text(json.dumps(card))
    cards, skipped = registry.scan_models()
    assert "odd-net" not in [c["name"] for c in cards]
    assert any(f == folder and "onnx file" in why for f, why in skipped)


# --- which runtime runs --------------------------------------------------------------------

def test_cpu_machine_runs_onnxruntime_by_default(no_gpu):
    for card in SHIPPED:
        assert registry.load_model(card["name"]).runtime == "onnxruntime"
        assert registry.choose_runtime(card, device="cpu") == "onnxruntime"


@pytest.mark.parametrize("value", ["torch", "TORCH"])
def test_torch_when_asked_by_environment_or_argument(monkeypatch, no_gpu, value):
    assert registry.load_model("unet-light", runtime=value).runtime == "torch"
    monkeypatch.setenv(registry.RUNTIME_ENV, value)
    loaded = registry.load_model("unet-light")
    assert loaded.runtime == "torch" and isinstance(loaded.module, torch.nn.Module)
    # the argument wins over the environment
    assert registry.load_model("unet-light", runtime="onnxruntime").runtime == "onnxruntime"


def test_torch_for_a_gpu(monkeypatch):
    card = registry.get_card("unet-light")
    assert registry.choose_runtime(card, device="cuda") == "torch"
    assert registry.choose_runtime(card, device="cuda:1") == "torch"
    # a machine where torch finds a GPU: auto picks torch without being told a device
    monkeypatch.setattr(inference, "cuda_may_be_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert registry.choose_runtime(card) == "torch"
    # and an ONNX Runtime model handed an explicit GPU device is swapped for the torch one
    ort = registry.load_model("unet-light", runtime="onnxruntime")
    assert registry.for_device(ort, torch.device("cuda")).runtime == "torch"
    assert registry.for_device(ort, "cpu") is ort


def test_a_bad_runtime_request_names_the_variable(monkeypatch):
    monkeypatch.setenv(registry.RUNTIME_ENV, "tensorrt")
    with pytest.raises(CardiacInputError, match="CARDIACAISEG_RUNTIME: unknown inference runtime 'tensorrt'"):
        registry.load_model("unet-light")
    with pytest.raises(CardiacInputError, match="runtime: unknown inference runtime 'jax'"):
        registry.load_model("unet-light", runtime="jax")


def test_onnxruntime_asked_for_a_model_without_export(user_models):
    folder = _copy_shipped(user_models, "unet-light", "torch-only")
    card = json.loads((folder / "model.json").read_text())
    del card["onnx"]
    (folder / "model.json").write_text(json.dumps(card))
    (folder / "model.onnx").unlink()
    assert registry.load_model("torch-only").runtime == "torch"   # auto: torch, quietly
    with pytest.raises(CardiacInputError, match="torch-only: this model has no ONNX export"):
        registry.load_model("torch-only", runtime="onnxruntime")


def test_thread_count_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CARDIACAISEG_THREADS", "1")
    assert OnnxModule(registry.onnx_path(registry.get_card("unet-light"))).threads == 1
    monkeypatch.setenv("CARDIACAISEG_THREADS", "two")
    with pytest.raises(CardiacInputError, match="CARDIACAISEG_THREADS"):
        inference.cpu_threads()


def test_a_cpu_segmentation_never_imports_torch():
    """The point of the ONNX path for start-up: torch (about 1 s to import) stays out."""
    code = ("import sys\n"
            "from CardiacAISegLib.pipeline import segment\n"
            "from CardiacAISegLib.models import inference\n"
            "inference.cuda_may_be_present = lambda: False\n"
            "from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom\n"
            "study, truth = make_cine_phantom(seed=1, n_frames=4, n_slices=6)\n"
            "labels, info = segment(study, 'unet-light', frames=[0])\n"
            "a, b = labels[0] == 1, study.labels[0] == 1\n"
            "print(2 * (a & b).sum() / (a.sum() + b.sum()))\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert float(lines[0]) > 0.85, f"LV blood pool Dice {lines[0]} against the phantom's truth"
    assert lines[-1] == "False", "torch was imported on the ONNX Runtime path"


def test_network_scores_agree_across_runtimes():
    x = np.random.default_rng(3).random((2, 1, 64, 80), dtype=np.float32)
    by_ort = inference.network_scores(registry.load_model("unet-light", runtime="onnxruntime").module, x)
    by_torch = inference.network_scores(registry.load_model("unet-light", runtime="torch").module, x)
    assert by_ort.shape == by_torch.shape == (2, 4, 64, 80) and by_ort.dtype == by_torch.dtype == np.float32
    assert np.abs(by_ort - by_torch).max() < 1e-4
