"""The shipped networks on real data they were not trained on (regression guards for the weights)."""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from CardiacAISegLib.agreement import dice  # noqa: E402
from CardiacAISegLib.analysis import Analysis  # noqa: E402
from CardiacAISegLib.pipeline import segment  # noqa: E402
from CardiacAISegLib.models import registry  # noqa: E402
from CardiacAISegLib.readers import load_study  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es"


def _held_out(name):
    card = registry.get_card(name)
    return card["training"]["split"]["val"]


def test_default_models():
    assert registry.default_model("cine") == "unet-light"
    assert registry.default_model("perfusion") == "perfusion-resunet"


def test_unet_light_on_held_out_acdc_patients(shared_data):
    scores = {1: [], 2: [], 3: []}
    for patient in _held_out("unet-light")[:4]:
        study = load_study(shared_data / "acdc" / patient)
        labels, info = segment(study, "unet-light")
        assert info["name"] == "unet-light" and len(info["sha256"]) == 64
        for t in (study.ed_frame, study.es_frame):
            for v in scores:
                scores[v].append(dice(labels[t] == v, study.labels[t] == v))
    assert np.mean(scores[1]) > 0.88 and np.mean(scores[2]) > 0.80 and np.mean(scores[3]) > 0.80, \
        {v: float(np.mean(s)) for v, s in scores.items()}


def test_unet_light_on_the_shipped_sunnybrook_sample():
    """Another centre and vendor (GE), never trained on: LV blood pool against the expert contours."""
    study = load_study(SAMPLE / "dicom", labels=SAMPLE / "contours")
    labels, _ = segment(study, "unet-light", frames="all")
    for t, ks in study.provenance["contour_slices"].items():
        t = int(t)
        assert dice(labels[t][ks] == 1, study.labels[t][ks] == 1) > 0.88


@pytest.mark.parametrize("series,low,high", [("rest", 0.7, 1.4), ("stress", 2.4, 4.0)])
def test_perfusion_resunet_on_qperf_gives_a_myocardium_with_the_expected_mbf(shared_data, series, low, high):
    study = load_study(shared_data / "qperf", series=series)
    labels, _ = segment(study)
    mask = labels[0]
    assert (mask == 1).sum() > 100 and (mask == 2).sum() > 100
    a = Analysis(study, labels).run()
    assert low < a.perfusion["global_mbf_ml_min_g"] < high


def test_model_cards_name_their_data_split_and_licence():
    for card in registry.list_models():
        if not card["_folder"].startswith(str(registry.SHIPPED_DIR)):
            continue
        assert "CC BY-NC-SA 4.0" in card["licence"]
        assert card["training"]["split"]["val"] and card["metrics"] and card["timing"]
        json.dumps({k: v for k, v in card.items() if not k.startswith("_")})


def test_the_cine_default_gives_the_same_numbers_in_any_storage_orientation(shared_data):
    """The same study stored rotated or mirrored in-plane (as scanners and exports do): read in
    one orientation the network moved ACDC 061's ESV by 21 % and its EF by 7.6 points with QC
    "pass" (probe 31; here rotated 90 degrees: ESV 52.3 -> 63.2 mL read once); the shipped card
    reads every slice turned by the heart's axis from its first pass, in 4 readings."""
    from copy import copy

    from CardiacAISegLib.pipeline import compute_analysis

    study = load_study(shared_data / "acdc" / "patient061")
    reference = compute_analysis(study).cine
    for name, turn in (("rotated 90 degrees", lambda a: np.rot90(a, 1, axes=(-2, -1))),
                       ("rows mirrored", lambda a: np.flip(a, -2))):
        stored = copy(study)
        stored.images = np.ascontiguousarray(turn(study.images))
        stored.labels = {}
        if name.startswith("rotated"):   # rows and columns trade places (ACDC's pixels are square)
            stored.ijk_to_ras = study.ijk_to_ras[:, [1, 0, 2, 3]]
        got = compute_analysis(stored).cine
        assert abs(got["lv_ef_pct"] - reference["lv_ef_pct"]) < 1.5, (name, got["lv_ef_pct"], reference["lv_ef_pct"])
        for key in ("lv_esv_ml", "lv_edv_ml", "lv_mass_g"):
            assert got[key] == pytest.approx(reference[key], rel=0.04), (name, key)
