"""Which end of the stack is the base where the affine cannot tell (``geometry.base_at_low_k``'s
fallback): the end whose rings are larger. Slices without a ring (past the base or the apex, or a
ring the network missed) counted as no area there, so a perfusion series with its basal ring
missed had its apical ring measured as the basal segments (and the apical segments left empty),
and the MetaImage cine's network ES labels had their base put at the apex. The fallback now
weighs only the slices that hold a ring (``geometry._ring_areas``, the rule the slice-order
check uses)."""
import dataclasses

import numpy as np
import pytest

from CardiacAISegLib import geometry
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.labels import MYO
from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom
from CardiacAISegLib.readers.acdc import load_acdc_patient

BASAL, MID, APICAL = range(1, 7), range(7, 13), range(13, 17)


def _without_orientation(study, label_map):
    """``study`` as a file without patient orientation gives it (an Analyze file, a NIfTI
    without a real affine): only the ring sizes can say which end is the base."""
    return dataclasses.replace(study, labels={0: label_map}, orientation_known=False)


def _basal_ring_missed(label_map, fragment_pixels=0):
    """The labels with the basal slice's (slice 0's) ring missed, keeping ``fragment_pixels`` of
    its myocardium (a speck a network leaves)."""
    out = label_map.copy()
    out[0] = 0
    rows, cols = np.nonzero(label_map[0] == MYO)
    out[0, rows[:fragment_pixels], cols[:fragment_pixels]] = MYO
    return out


def test_a_perfusion_series_whose_basal_ring_was_missed_keeps_its_apical_values_apical():
    """End to end: stress MBF 3.0 basal, 2.5 mid, an apical defect of 1.2. Before, the empty basal
    slice made slice 0 the apex: the apical ring's 1.2 was reported as a basal defect in
    segments 1-6 and segments 13-16 were empty. Now the mid and apical segments read what the
    full labels read there (segment 14: 1.14 either way, the phantom's own fit error)."""
    truth_mbf = {**{s: 3.0 for s in BASAL}, **{s: 2.5 for s in MID}, **{s: 1.2 for s in APICAL}}
    study, _ = make_perfusion_phantom(seed=0, noise=0.003, mbf_per_segment=truth_mbf)
    drawn = next(iter(study.labels.values()))
    labels = _basal_ring_missed(drawn)
    analysis = Analysis(_without_orientation(study, labels), {0: labels}).run()
    full = Analysis(_without_orientation(study, drawn), {0: drawn}).run()
    assert analysis.levels == {1: "mid", 2: "apical"}
    measured = {s["id"]: s["mbf_ml_min_g"] for s in analysis.perfusion["segments"]}
    with_every_ring = {s["id"]: s["mbf_ml_min_g"] for s in full.perfusion["segments"]}
    for segment in (*MID, *APICAL):
        assert measured[segment] == pytest.approx(with_every_ring[segment], rel=0.01), (segment, measured)
        assert measured[segment] == pytest.approx(truth_mbf[segment], rel=0.1), (segment, measured)
    # the missed basal ring leaves the basal segments unmeasured, and says so
    assert all(np.isnan(measured[segment]) for segment in BASAL)
    assert "SEGMENTS_UNMEASURED" in {f["code"] for f in analysis.qc["flags"]}


@pytest.mark.parametrize("fragment_pixels", [0, 8])
@pytest.mark.parametrize("reversed_stack", [False, True])
def test_the_ring_sizes_decide_the_base_over_the_slices_that_hold_a_ring(fragment_pixels, reversed_stack):
    """Every perfusion phantom (20 seeds, stress and rest) with its basal ring missed, or missed
    but for an 8-pixel fragment, stored base first or apex first: the base is found where it is
    (before: at the other end in all 40 of each)."""
    for seed in range(20):
        for stress in (True, False):
            study, _ = make_perfusion_phantom(seed=seed, stress=stress)
            labels = _basal_ring_missed(next(iter(study.labels.values())), fragment_pixels)
            if reversed_stack:
                labels = labels[::-1].copy()
            study = _without_orientation(study, labels)
            assert geometry.base_at_low_k(study, labels) == (not reversed_stack, "area"), (seed, stress)
            levels = geometry.perfusion_slice_levels(study, labels)
            assert levels == (("apical", "mid", "basal") if reversed_stack else ("basal", "mid", "apical"))


def test_apex_to_base_direction_where_the_slice_normal_cannot_tell():
    """A known orientation whose slice normal is perpendicular to the body's base-apex direction
    leaves the ring sizes to decide, and with them the anterior/inferior sense of the insertion
    points: slice 0 (whose ring was missed) is still the base, so apex -> base points toward it."""
    study, _ = make_perfusion_phantom(seed=1)
    labels = _basal_ring_missed(next(iter(study.labels.values())))
    prior = geometry._BASE_TO_APEX_PRIOR
    i = np.cross(prior, [0.0, 0.0, 1.0])
    i /= np.linalg.norm(i)
    k = np.cross(prior, i)          # perpendicular to the prior: the affine cannot tell
    j = np.cross(k, i)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = i * study.spacing[0], j * study.spacing[1], k * study.spacing[2]
    study = dataclasses.replace(study, labels={0: labels}, ijk_to_ras=affine)
    assert study.orientation_known and abs(float(np.dot(study.slice_normal, prior))) < 1e-9
    assert geometry.base_at_low_k(study, labels) == (True, "area")
    assert np.allclose(geometry.apex_to_base_direction(study, labels), -study.slice_normal)


def test_acdc_expert_stacks_keep_their_base_at_slice_0(shared_data):
    """ACDC stores its slices base first and its files carry no orientation: all 160 expert label
    maps (ED and ES) but one find the base at slice 0. patient001's ES, with an empty slice
    before its base, was put apex first before; patient047's ES (an apex wider than its base,
    1483 against 1366 px over its rings' thirds) is put apex first now, as the cine levels
    (``slice_levels``, over the same rings) put it already: before it came out base first only
    because its empty ninth slice counted as an apex of no area."""
    apex_first = []
    for folder in sorted((shared_data / "acdc").glob("patient*")):
        study = load_acdc_patient(folder)
        assert not study.orientation_known
        for frame, phase in ((study.ed_frame, "ED"), (study.es_frame, "ES")):
            low, method = geometry.base_at_low_k(study, study.labels[frame])
            assert method == "area"
            if not low:
                apex_first.append(f"{folder.name} {phase}")
    assert apex_first == ["patient047 ES"]
