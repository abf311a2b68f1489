"""Comparisons of an analysis with a phantom's truth, shared by the perfusion tests."""
import numpy as np


def segment_errors(analysis, truth):
    """(n,) relative MBF error of every AHA segment the analysis measured, against the phantom's."""
    got = {s["id"]: s["mbf_ml_min_g"] for s in analysis.perfusion["segments"]}
    return np.array([(got[i] - v) / v for i, v in truth["mbf_per_segment"].items() if got.get(i) is not None])
