"""Mending a perfusion mask with the bolus: a lost wall is filled, a swollen wall trimmed, the
cavity restored, blood kept out of the myocardium (perfusion phantom, exact truth)."""
import numpy as np
import pytest

from CardiacAISegLib.labels import LV, MYO, RV
from CardiacAISegLib.models.perfusion_refine import refine_slice
from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom


@pytest.fixture(scope="module")
def phantom():
    study, truth = make_perfusion_phantom(seed=7, stress=True, noise=0.01)
    return study, next(iter(study.labels.values()))


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_true_mask_passes_nearly_unchanged(phantom):
    study, labels = phantom
    for k in range(study.n_slices):
        out, report = refine_slice(study.images[:, k], study.aif, labels[k])
        assert report["refined"]
        assert dice(out == MYO, labels[k] == MYO) > 0.8
        assert dice(out == LV, labels[k] == LV) > 0.9
        assert not (out[labels[k] == RV] == MYO).any()


def test_lost_wall_is_filled_and_cavity_restored(phantom):
    study, labels = phantom
    k = 1
    truth = labels[k]
    broken = truth.copy()
    cols = np.nonzero((truth == LV).any(0))[0]
    half = (np.indices(truth.shape)[1] > cols.mean())
    broken[(truth == MYO) & half] = 0          # the lateral half of the wall lost
    broken[(truth == LV) & ~half] = MYO        # and half the cavity called myocardium
    assert dice(broken == MYO, truth == MYO) < 0.6
    out, report = refine_slice(study.images[:, k], study.aif, broken)
    assert report["sectors_filled"] > 0
    assert dice(out == LV, truth == LV) > 0.9
    assert dice(out == MYO, truth == MYO) > 0.75


def test_swollen_wall_is_trimmed(phantom):
    from scipy import ndimage

    study, labels = phantom
    k = 1
    truth = labels[k]
    swollen = truth.copy()
    heart = ndimage.binary_dilation((truth == LV) | (truth == MYO), iterations=14)
    swollen[heart & (truth == 0)] = MYO          # a wall thicker than the cavity is wide: it took in the surroundings
    out, report = refine_slice(study.images[:, k], study.aif, swollen)
    assert report["sectors_trimmed"] > 0
    assert (out == MYO).sum() < 0.8 * (swollen == MYO).sum()
    assert dice(out == MYO, truth == MYO) > dice(swollen == MYO, truth == MYO) + 0.1


def test_no_blood_pool_leaves_the_mask_and_says_why():
    frames = np.zeros((30, 20, 20), np.float32)
    aif = np.zeros(30)
    aif[10] = 1.0
    labels = np.zeros((20, 20), np.uint8)
    out, report = refine_slice(frames, aif, labels)
    assert not report["refined"] and "blood pool" in report["reason"]
    assert (out == labels).all()


def test_heavily_mended_slices_are_reported_to_the_user():
    from CardiacAISegLib.pipeline import refinement_warnings

    reports = [{"slice": 0, "refined": True, "sectors_filled": 22, "sectors_trimmed": 10, "sectors_widened": 2},
               {"slice": 1, "refined": True, "sectors_filled": 1, "sectors_trimmed": 0, "sectors_widened": 0},
               {"slice": 2, "refined": False, "reason": "no blood pool found at the AIF peak"}]
    warnings = refinement_warnings(reports)
    assert len(warnings) == 2
    assert warnings[0].startswith("slice 0:") and "34 of 36" in warnings[0]
    assert warnings[1].startswith("slice 2:") and "no blood pool" in warnings[1]
