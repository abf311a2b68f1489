"""RV insertion points and AHA sectors on the perfusion phantom (true masks) against its exact truth."""
import numpy as np
import pytest

from CardiacAISegLib.agreement import insertion_angle_error_deg
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.geometry import study_insertion_points
from CardiacAISegLib.phantom import make_perfusion_phantom


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_insertion_angle_error_under_5_degrees(seed):
    study, truth = make_perfusion_phantom(seed=seed, noise=0.003)
    mask = next(iter(study.labels.values()))
    found = {p["slice"]: p for p in study_insertion_points(study, mask)}
    m = study.ijk_to_ras
    errors = []
    for k, (ant_ijk, inf_ijk) in enumerate(truth["insertion_points"]):
        c = study.ijk_to_ras_points(truth["lv_centre_ijk"][k])[0]
        p = found[k]
        for which, true_ijk in (("anterior", ant_ijk), ("inferior", inf_ijk)):
            true_ras = (m[:3, :3] @ np.asarray(true_ijk, float) + m[:3, 3])
            errors.append(insertion_angle_error_deg(p[f"{which}_ras"], c, true_ras, c))
    assert max(errors) < 5.0, errors


def test_sector_map_matches_truth_and_mbf_within_3_percent():
    study, truth = make_perfusion_phantom(seed=5, noise=0.003)
    a = Analysis(study, study.labels).run()
    seg, true_seg = a.segment_map, truth["segment_map"]
    myo = true_seg > 0
    assert (seg[myo] == true_seg[myo]).mean() > 0.95
    for s in a.perfusion["segments"]:
        true = truth["mbf_per_segment"][s["id"]]
        assert abs(s["mbf_ml_min_g"] - true) / true < 0.03, (s, true)
