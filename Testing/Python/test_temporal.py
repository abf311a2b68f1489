"""Temporal consistency of a whole-cycle cine segmentation (models/temporal.py) and how sure
ED and ES are (cine.ed_es_certainty, QC ED_UNCERTAIN/ES_UNCERTAIN)."""
import numpy as np
import pytest

from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.cine import ed_es_certainty
from CardiacAISegLib.labels import LV
from CardiacAISegLib.models import temporal
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom


def _probabilities(label_map, confidence, k=4, runner_up=None):
    """(S, K, R, C) probabilities whose argmax is ``label_map``, with ``confidence`` on that class
    and the rest spread over the others, or all of it on class ``runner_up`` where it is given
    (an (S, R, C) map: the class the network hesitated over)."""
    p = np.full(label_map.shape[:1] + (k,) + label_map.shape[1:], (1 - confidence) / (k - 1), np.float32)
    for c in range(k):
        p[:, c][label_map == c] = confidence
    if runner_up is not None:
        hesitant = runner_up != label_map
        for c in range(k):
            p[:, c][hesitant] = np.where(label_map[hesitant] == c, confidence, 0.0) + np.where(runner_up[hesitant] == c, 1 - confidence, 0.0)
    return p


def test_an_unsure_flip_is_corrected_and_a_sure_frame_is_kept():
    lv = np.zeros((1, 8, 8), np.uint8)
    lv[0, 2:6, 2:6] = LV
    empty = np.zeros_like(lv)
    frames = {t: _probabilities(lv, 0.9) for t in range(8)}
    frames[3] = _probabilities(empty, 0.55, runner_up=lv)   # the basal slice drops out, barely (LV 0.45)
    frames[6] = _probabilities(empty, 0.95)        # a confident change is the frame's own
    out = temporal.smoothed_labels(frames)
    assert (out[3] == lv).all(), "an unsure flip between two sure neighbours is taken back"
    assert (out[6] == 0).all(), "a sure frame is not overruled by its neighbours"
    for t in (0, 1, 2, 4, 7):
        assert (out[t] == lv).all()


def test_smoothing_wraps_around_the_cycle():
    lv = np.zeros((1, 6, 6), np.uint8)
    lv[0, 1:4, 1:4] = LV
    frames = {t: _probabilities(lv, 0.9) for t in range(6)}
    frames[0] = _probabilities(np.zeros_like(lv), 0.55, runner_up=lv)   # frame 0's neighbours are frames 5 and 1
    assert (temporal.smoothed_labels(frames)[0] == lv).all()


def test_only_a_whole_cycle_is_smoothed():
    assert temporal.is_whole_cycle(list(range(20)), 20)
    assert not temporal.is_whole_cycle([0, 9], 20)              # ED and ES
    assert not temporal.is_whole_cycle(list(range(4)), 4)        # too short to be a sampled cycle
    assert not temporal.is_whole_cycle(list(range(19)), 20)      # a frame missing


def test_certainty_of_a_clean_curve_and_of_a_curve_with_two_peaks():
    t = np.arange(20)
    clean = 150 - 50 * np.sin(np.pi * t / 20) ** 2       # ED at 0, ES at 10, one smooth cycle
    c = ed_es_certainty(clean)
    assert c["ed_sure"] and c["es_sure"]
    assert 0 in c["ed_candidates"] and 10 in c["es_candidates"]
    assert c["ed_margin_pct"] > 0 and c["es_margin_pct"] > 0

    two_peaks = clean.copy()
    two_peaks[13] = clean.max() * 0.99                     # a basal slice flipping in at frame 13
    c = ed_es_certainty(two_peaks)
    assert not c["ed_sure"] and 13 in c["ed_candidates"] and 0 in c["ed_candidates"]
    assert c["es_sure"]


def test_a_ragged_curve_is_sure_of_neither_ed_nor_es():
    """Probe 81: a curve of noise (EF 98.7) was "sure" of ED and ES with margins of 13-16 %: one
    run of candidates says nothing where every frame jumps. Real whole cycles stand 1-2 % of their
    range out of their neighbours at the median; a slightly noisy clean cycle stays sure."""
    t = np.arange(20)
    clean = 150 - 50 * np.sin(np.pi * t / 20) ** 2
    wobbly = clean + np.random.default_rng(0).normal(0, 1.0, 20)   # 2 % of the range
    c = ed_es_certainty(wobbly)
    assert c["ed_sure"] and c["es_sure"] and not c["ragged"] and c["ragged_pct"] < 8, c
    noise = np.random.default_rng(1).uniform(60, 150, 20)
    c = ed_es_certainty(noise)
    assert c["ragged"] and c["ragged_pct"] >= 8 and not c["ed_sure"] and not c["es_sure"], c
    assert ed_es_certainty(noise[:8])["ragged_pct"] is None   # too few frames to judge


def test_a_ragged_cycle_is_flagged_once_per_phase_with_the_reason():
    study, truth = make_cine_phantom(seed=2, n_frames=20, n_slices=10, size=96)
    study.ed_frame = study.es_frame = None
    ed = truth["ed_frame"]
    labels = {t: (study.labels[ed].copy() if t % 2 else study.labels[t]) for t in range(20)}   # every other frame ED's
    a = Analysis(study, labels).run()
    assert a.cine["ed_es_certainty"]["ragged"]
    flags = [f for f in a.qc["flags"] if f["code"] in ("ED_UNCERTAIN", "ES_UNCERTAIN")]
    assert sorted(f["code"] for f in flags) == ["ED_UNCERTAIN", "ES_UNCERTAIN"], a.qc["flags"]
    assert "jumps from frame to frame" in flags[0]["message"] and "ragged" in flags[1]["message"], flags
    assert flags[1]["message"].startswith(f"ES frame {a.cine['es_frame'] + 1}:")
    # the cine's own warning once, not once per phase (and no "separate parts of the cycle")
    cine_warnings = [w for w in a.warnings if not w.startswith("QC ")]
    assert sum("jumps from frame to frame" in w for w in cine_warnings) == 1, a.warnings
    assert not any("separate parts" in w for w in a.warnings), a.warnings


def test_an_uncertain_ed_is_flagged_and_a_clean_cycle_is_not():
    study, truth = make_cine_phantom(seed=2, n_frames=12, n_slices=10, size=96)
    study.ed_frame = study.es_frame = None   # from the curve, as for DICOM without ED/ES
    clean = Analysis(study, study.labels).run()
    assert clean.cine["ed_es_certainty"]["ed_sure"] and clean.cine["ed_es_certainty"]["es_sure"]
    assert not {"ED_UNCERTAIN", "ES_UNCERTAIN"} & {f["code"] for f in clean.qc["flags"]}

    ed = truth["ed_frame"]
    far = (ed + 6) % 12
    labels = dict(study.labels)
    labels[far] = labels[ed].copy()   # half a cycle away, a frame as large as ED
    a = Analysis(study, labels).run()
    assert a.cine["ed_es_certainty"]["ed_sure"] is False
    flag = next(f for f in a.qc["flags"] if f["code"] == "ED_UNCERTAIN")
    assert str(far + 1) in flag["message"] and a.qc["status"] == "review"   # frames counted from 1
    assert any(w.startswith("ED is uncertain") for w in a.warnings)


def test_whole_cycle_network_segmentation_is_smoothed(monkeypatch):
    """segment_cine_volumes takes the smoothing path for every frame of a cycle and not for
    ED/ES, with labels on the input grid either way."""
    from CardiacAISegLib.models.inference import segment_cine_volumes
    from CardiacAISegLib.models.registry import default_model, load_model

    study, _ = make_cine_phantom(seed=5, n_frames=8, n_slices=6, size=96)
    loaded = load_model(default_model("cine"))
    sp = (study.spacing[1], study.spacing[0])
    calls = []
    real = temporal.smoothed_labels
    monkeypatch.setattr(temporal, "smoothed_labels", lambda p: calls.append(sorted(p)) or real(p))
    volumes = {t: study.images[t] for t in range(study.n_frames)}
    labels, _ = segment_cine_volumes(loaded.module, volumes, sp, loaded.card["input"], n_frames=study.n_frames)
    assert calls == [list(range(8))]
    assert all(m.shape == study.images.shape[1:] and m.dtype == np.uint8 for m in labels.values())
    calls.clear()
    pair, _ = segment_cine_volumes(loaded.module, {0: volumes[0], 4: volumes[4]}, sp, loaded.card["input"], n_frames=8)
    assert calls == [] and set(pair) == {0, 4}
