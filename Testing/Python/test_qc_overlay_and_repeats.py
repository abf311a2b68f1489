"""QC of a perfusion map against its images (LABELS_OFF_THE_IMAGE) and of a slice stored twice
(SLICES_REPEATED), session 48: probes 106 and 107."""
from copy import copy

import numpy as np
import pytest

from CardiacAISegLib import qc
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom


def review_flags(analysis):
    return {f["code"]: f["message"] for f in analysis.qc["flags"] if f["severity"] == "review"}


def test_a_correct_perfusion_map_is_not_called_off_the_image_by_a_neighbouring_slices_ring():
    """Probe 106: the network's correct masks of 3-slice perfusion series at 2.5 mm pixels
    (myocardium Dice 0.96-1.0, MBF within 3 %) were flagged LABELS_OFF_THE_IMAGE, "moved one slice
    along the stack ... another series' labels?", and --strict exited 3 on a valid exam: the next
    slice's larger ring, moved within the motion correction's reach, lands on darker tissue. The
    phantom's own map (seed 6) was so flagged; the copies moved in-plane, mirrored or rotated
    still catch a misplaced map, and a map moved along the stack is still sent for review."""
    study, _ = make_perfusion_phantom(seed=6, pixel_mm=2.5, n_frames=60, noise=0.005)
    own = Analysis(copy(study), study.labels).run()
    assert "LABELS_OFF_THE_IMAGE" not in review_flags(own), own.qc["flags"]

    for fault, moved in (("mirrored left-right", lambda m: m[:, :, ::-1]),
                         ("rotated 180 degrees", lambda m: m[:, ::-1, ::-1])):
        a = Analysis(copy(study), {t: np.ascontiguousarray(moved(m)) for t, m in study.labels.items()}).run()
        said = review_flags(a).get("LABELS_OFF_THE_IMAGE", "")
        assert said.startswith("labels given: the labels do not seem to overlay this image"), (fault, a.qc["flags"])
    shifted = Analysis(copy(study), {t: np.roll(m, 7, axis=2) for t, m in study.labels.items()}).run()
    assert "LABELS_OFF_THE_IMAGE" in review_flags(shifted), shifted.qc["flags"]

    # one slice towards the last: the basal slice unlabelled, its segments not measured
    along = {t: np.concatenate([np.zeros_like(m[:1]), m[:-1]]) for t, m in study.labels.items()}
    a = Analysis(copy(study), along).run()
    assert "SEGMENTS_UNMEASURED" in review_flags(a) and a.qc["status"] == "review", a.qc["flags"]


def test_the_perfusion_overlay_copies_keep_every_in_plane_move_and_no_move_along_the_stack():
    lab = make_perfusion_phantom(seed=1, n_frames=20)[0].labels[0]
    copies = qc._in_plane_copies(lab, 1.8)
    assert not [name for name in copies if "stack" in name]
    assert np.array_equal(copies["mirrored left-right"], lab[:, :, ::-1])
    assert np.array_equal(copies["rotated 180 degrees"], lab[:, ::-1, ::-1])
    assert sum("along the rows" in name for name in copies) == sum("along the columns" in name for name in copies) >= 2


@pytest.fixture(scope="module")
def cine():
    # the probe's phantom: 10 slices 8 mm apart
    return make_cine_phantom(seed=3, n_frames=20, n_slices=10, size=96, pixel_mm=1.6, slice_mm=8.0)


def _with_slice_stored_twice(study, copy_of_slice):
    """``study`` with slice 5 followed by ``copy_of_slice(its images)``, its labels too."""
    k = 5
    twice = copy(study)
    twice.provenance = dict(study.provenance)
    twice.images = np.concatenate([study.images[:, :k + 1], copy_of_slice(study.images[:, k:k + 1]),
                                   study.images[:, k + 1:]], axis=1)
    twice.labels = {t: np.concatenate([m[:k + 1], m[k:k + 1], m[k + 1:]]) for t, m in study.labels.items()}
    return twice


@pytest.mark.parametrize("how, copy_of_slice", [
    ("at a gain of 1.1", lambda images: images * 1.1),
    ("with fresh noise", lambda images: images + np.random.default_rng(5).normal(0, 0.005, images.shape)),
])
def test_a_cine_slice_stored_twice_not_bit_identical_is_flagged(cine, how, copy_of_slice):
    """Probe 107 D1: a slice stored twice at another gain or with fresh noise read EDV 144.2 for
    129.5 mL and mass 134.3 for 121.3 g with QC pass: only a bit-identical copy was flagged. The
    copy correlates with its slice at 0.9998-1.0 over the cycle, real neighbours at most 0.90."""
    study, _ = cine
    twice = _with_slice_stored_twice(study, copy_of_slice)
    a = Analysis(twice, twice.labels).run()
    said = review_flags(a).get("SLICES_REPEATED", "")
    assert said.startswith("slice(s) 6 and 7 (counted from 1) hold nearly identical images over every frame "
                           "(correlation "), (how, a.qc["flags"])
    r = float(said.split("(correlation ")[1][:6])
    assert r >= qc.NEAR_COPY_MIN_CORRELATION, said
    assert "SLICES_REPEATED" not in review_flags(Analysis(copy(study), study.labels).run())

    identical = _with_slice_stored_twice(study, lambda images: images)
    said = review_flags(Analysis(identical, identical.labels).run())["SLICES_REPEATED"]
    assert said.startswith("slice(s) 6 and 7 (counted from 1) hold the same images in every frame:"), said
    assert "nearly" not in said


def test_a_perfusion_slice_stored_twice_at_another_gain_is_flagged():
    """A perfusion slice stored twice moves the slices after it to other AHA levels; its
    neighbours, 20 mm apart, correlate at most 0.88 over the series (120 phantoms)."""
    study, _ = make_perfusion_phantom(seed=3, n_frames=40, noise=0.005)
    assert qc.nearly_repeated_slices(study.images, float(study.spacing[2])) == []
    again = copy(study)
    again.provenance = dict(study.provenance)
    again.images = np.concatenate([study.images[:, :2], 1.1 * study.images[:, 1:2], study.images[:, 2:]], axis=1)
    again.labels = {t: m[[0, 1, 1, 2]] for t, m in study.labels.items()}
    said = review_flags(Analysis(again, again.labels).run()).get("SLICES_REPEATED", "")
    assert "slice(s) 2 and 3 (counted from 1) hold nearly identical images" in said, said


def test_real_stacks_have_no_nearly_repeated_slices_and_thin_stacks_are_not_judged(cine, shared_data):
    """Any two slices of ACDC's studies (ED and ES) correlate at most 0.898 (patient094, 5 mm),
    Sunnybrook's 0.81, the MetaImage cine's 0.78: none near a copy's 0.99. A stack under 5 mm
    apart (a 3D cine) is not judged by correlation: neighbours 1.5-2 mm apart come near 0.99
    (ACDC's slices moved 1.5 mm in-plane: up to 0.986)."""
    from CardiacAISegLib.readers import load_study

    for source in ("acdc/patient094", "acdc/patient001", "sunnybrook", "cine-metaimage/ExampleSequence"):
        path = shared_data / source
        if not path.exists():
            pytest.skip(f"{path} not found")
        st = load_study(path)
        assert qc.nearly_repeated_slices(st.images, float(st.spacing[2])) == [], source

    study, _ = cine
    twice = _with_slice_stored_twice(study, lambda images: images * 1.1)
    assert [(j, k) for j, k, _ in qc.nearly_repeated_slices(twice.images, 8.0)] == [(5, 6)]
    assert qc.nearly_repeated_slices(twice.images, 2.0) == []


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_a_low_noise_phantom_whose_torso_every_slice_shares_has_no_repeated_slices(noise):
    """The cine phantom's torso is the same on every slice: at low noise its neighbouring slices
    correlated at 0.991-0.995 over the whole image and were called "nearly identical" (review 2 of
    session 48). Over the pixels that move (the heart) they are not; a copy at another gain is."""
    from CardiacAISegLib.qc import nearly_repeated_slices

    study, _ = make_cine_phantom(seed=0, noise=noise)
    spacing = float(study.spacing[2])
    assert nearly_repeated_slices(study.images, spacing) == []
    k = study.n_slices // 2
    copied = np.concatenate([study.images[:, :k + 1], 1.1 * study.images[:, k:k + 1], study.images[:, k + 1:]], axis=1)
    assert [(j, i) for j, i, _ in nearly_repeated_slices(copied, spacing)] == [(k, k + 1)]


def test_a_perfusion_label_map_off_the_lv_is_named_not_the_aif():
    """A perfusion label map whose LV pool lies where no bolus passes (mirrored with the heart off
    the centre, shifted, another series') stopped the run with "AIF is flat ... (AIF)", though the
    given AIF was intact: the user was sent to the wrong file (s49, 12 of 72 mirrored maps)."""
    from CardiacAISegLib.errors import CardiacInputError
    from CardiacAISegLib.pipeline import compute_analysis

    study, _ = make_perfusion_phantom(seed=2, noise=0.02)
    moved = {t: np.roll(m, (m.shape[1] // 2, m.shape[2] // 2), axis=(1, 2)) for t, m in study.labels.items()}
    with pytest.raises(CardiacInputError) as e:
        compute_analysis(copy(study), labels=moved)
    assert "labelled LV blood pool shows no contrast bolus" in str(e.value) and "label map" in str(e.value)
    assert "AIF is flat" not in str(e.value)
    # the same labels where they belong run
    assert compute_analysis(copy(study), labels=study.labels).perfusion["global_mbf_ml_min_g"] > 0
