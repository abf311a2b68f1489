"""The acquisition checks of a first-pass perfusion series (qc.perfusion_acquisition_flags): a
pixel size lost or contradicted in the file, a field of view no scanner has, values cut at a
ceiling or rounded to a few steps. Each is raised by a phantom file made wrong in that one way and
by none of the files made right, nor by the real QPerf series."""
from copy import copy

import numpy as np
import pytest

from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.labels import LV, MYO
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import load_study

ACQUISITION_CODES = {"FIELD_OF_VIEW_LARGE", "PIXEL_SPACING_DISAGREES", "VOXEL_SIZE_DISAGREES", "PIXEL_SPACING_DEFAULT",
                     "IMAGE_CLIPPED", "IMAGE_QUANTISED"}


def codes(analysis, severity="review"):
    return {f["code"] for f in analysis.qc["flags"] if f["severity"] == severity}


def flag(analysis, code):
    return next(f for f in analysis.qc["flags"] if f["code"] == code)


@pytest.fixture(scope="module")
def phantom():
    """The perfusion phantom of test_qc (1.8 mm pixels, 96 x 96, slices 20 mm apart)."""
    return make_perfusion_phantom(seed=4, n_frames=50, noise=0.005)


def write_nifti(path, study, pixel_mm=None, pixdim=None):
    """``study`` as a 4D NIfTI whose sform has its orientation and ``pixel_mm`` pixels (default: its
    own); pixdim[1..3] from the sform unless ``pixdim`` is given (then the qform is left unused at
    the identity, as nibabel leaves it for an image given only an sform)."""
    import nibabel as nib

    scale = 1.0 if pixel_mm is None else pixel_mm / float(study.spacing[0])
    affine = study.ijk_to_ras @ np.diag([scale, scale, 1.0, 1.0])
    image = nib.Nifti1Image(np.transpose(study.images, (3, 2, 1, 0)).astype(np.float32), None)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][1:4] = np.linalg.norm(affine[:3, :3], axis=0) if pixdim is None else pixdim
    image.header["pixdim"][4] = float(np.median(np.diff(study.frame_times_s)))
    nib.save(image, str(path))
    return path


def analysed(path, study):
    """The file read as a perfusion series with the phantom's AIF, measured with its labels."""
    return Analysis(load_study(path, aif=study.aif), study.labels).run()


def test_a_perfusion_nifti_with_its_true_pixel_size_raises_no_acquisition_flag(tmp_path, phantom):
    study, _ = phantom
    a = analysed(write_nifti(tmp_path / "true.nii.gz", study), study)
    assert not ACQUISITION_CODES & {f["code"] for f in a.qc["flags"]}
    assert a.qc["status"] == "pass"


def test_a_perfusion_field_of_view_wider_than_a_scanner_is_flagged(tmp_path, phantom):
    """The phantom's 96 pixels written as 6 mm each (576 mm: a resized image with its old header):
    FIELD_OF_VIEW_LARGE, said for what a perfusion series measures (not volumes and mass)."""
    study, _ = phantom
    a = analysed(write_nifti(tmp_path / "wide.nii.gz", study, pixel_mm=6.0), study)
    assert "FIELD_OF_VIEW_LARGE" in codes(a)
    message = flag(a, "FIELD_OF_VIEW_LARGE")["message"]
    assert "576 x 576 mm" in message and "MBF per gram does not depend on the pixel size" in message
    assert "volumes" not in message
    assert "FIELD_OF_VIEW_LARGE" not in codes(analysed(write_nifti(tmp_path / "true.nii.gz", study), study))


def test_the_sentence_of_a_perfusion_nifti_whose_sform_contradicts_pixdim_is_flagged(tmp_path, phantom):
    """The NIfTI reader's sentence on an sform of 1.8 mm voxels beside a pixdim of 1 x 1 x 1
    (readers.nifti.unused_form_disagrees; ITK and Slicer read pixdim) reaches the perfusion QC as
    it reaches the cine's: VOXEL_SIZE_DISAGREES, with what it means for perfusion."""
    import nibabel as nib

    from CardiacAISegLib.readers.nifti import unused_form_disagrees

    study, _ = phantom
    stale = write_nifti(tmp_path / "stale.nii.gz", study, pixdim=[1.0, 1.0, 1.0])
    said = unused_form_disagrees(nib.load(str(stale)).header)
    assert said and "pixdim [1.0, 1.0, 1.0]" in said
    read = load_study(stale, aif=study.aif)
    read.provenance["voxel_size_check"] = said   # as readers.volume.read_nifti records it
    a = Analysis(read, study.labels).run()
    assert "VOXEL_SIZE_DISAGREES" in codes(a)
    assert flag(a, "VOXEL_SIZE_DISAGREES")["message"].startswith(said)
    assert "in this perfusion series: MBF per gram does not depend on the pixel size" in flag(a, "VOXEL_SIZE_DISAGREES")["message"]
    right = write_nifti(tmp_path / "right.nii.gz", study)
    assert unused_form_disagrees(nib.load(str(right)).header) is None


def test_a_perfusion_nifti_whose_sform_contradicts_pixdim_is_flagged_when_read(tmp_path, phantom):
    """The perfusion reader kept only some of the NIfTI reader's notes: not this one (session 48)."""
    study, _ = phantom
    a = analysed(write_nifti(tmp_path / "stale.nii.gz", study, pixdim=[1.0, 1.0, 1.0]), study)
    assert "VOXEL_SIZE_DISAGREES" in codes(a)


@pytest.mark.parametrize("diameter_mm, flagged", [(300.0, True), (172.8, False), (None, False)])
def test_perfusion_pixel_spacing_that_disagrees_with_the_reconstruction_diameter_is_flagged(tmp_path, phantom,
                                                                                           diameter_mm, flagged):
    """A DICOM perfusion series of 96 pixels of 1.8 mm (173 mm) whose ReconstructionDiameter says
    300 mm: one of the two is wrong; 172.8 mm agrees, and no diameter says nothing. The integer
    signal the scanner stores (400 per mmol/L over 100) is neither clipped nor quantised."""
    from dicom_factory import write_perfusion_series

    study, _ = phantom
    write_perfusion_series(tmp_path / "d", study, patient={"ReconstructionDiameter": diameter_mm} if diameter_mm else None)
    read = load_study(tmp_path / "d", aif=study.aif, units="signal")
    a = Analysis(read, study.labels).run()
    assert ("PIXEL_SPACING_DISAGREES" in codes(a)) is flagged
    assert not (ACQUISITION_CODES - {"PIXEL_SPACING_DISAGREES"}) & {f["code"] for f in a.qc["flags"]}
    if flagged:
        message = flag(a, "PIXEL_SPACING_DISAGREES")["message"]
        assert "173 mm field of view, but ReconstructionDiameter says 300 mm (3.12 mm pixels)" in message
        assert "MBF per gram does not depend on the pixel size" in message and "volumes" not in message


def test_a_placeholder_pixel_size_the_labels_do_not_rest_on_is_said_as_a_note(tmp_path, phantom):
    """1.0 x 1.0 mm in a NIfTI (the value tools write when the spacing was lost; the phantom's are
    1.8 mm), measured with labels given: the mask and MBF do not depend on it, so an info note."""
    study, _ = phantom
    a = analysed(write_nifti(tmp_path / "one.nii.gz", study, pixel_mm=1.0), study)
    assert "PIXEL_SPACING_DEFAULT" in codes(a, "info") and a.qc["status"] == "pass"
    assert "MBF per gram does not depend on the pixel size" in flag(a, "PIXEL_SPACING_DEFAULT")["message"]


def test_a_placeholder_pixel_size_the_network_segmented_at_is_flagged(tmp_path):
    """A 1.8 mm series written with 1.0 x 1.0 mm and its orientation: the network took the heart
    for 1.8 times smaller than it is and lost a third of its myocardium (MYO Dice 0.70 for 0.96 at
    the true size, session 48): PIXEL_SPACING_DEFAULT asks for review. Written as Analyze (no
    orientation, as the QPerf examples are), the segmentation takes the 1 x 1 mm for no pixel size
    and estimates one from the LV pool: a note, which names the estimate."""
    import nibabel as nib

    from CardiacAISegLib.pipeline import compute_analysis

    study, _ = make_perfusion_phantom(seed=4, size=160, n_frames=60, noise=0.01)
    placeholder = compute_analysis(load_study(write_nifti(tmp_path / "one.nii.gz", study, pixel_mm=1.0), aif=study.aif))
    assert "PIXEL_SPACING_DEFAULT" in codes(placeholder)
    assert "the network segmented the heart at that size" in flag(placeholder, "PIXEL_SPACING_DEFAULT")["message"]
    true = compute_analysis(load_study(write_nifti(tmp_path / "true.nii.gz", study), aif=study.aif))
    assert "PIXEL_SPACING_DEFAULT" not in {f["code"] for f in true.qc["flags"]}
    analyze = tmp_path / "one.hdr"
    nib.save(nib.AnalyzeImage(np.transpose(study.images, (3, 2, 1, 0)).astype(np.float32), np.eye(4)), str(analyze))
    estimated = compute_analysis(load_study(analyze, aif=study.aif, dt=0.5))
    assert "PIXEL_SPACING_DEFAULT" in codes(estimated, "info")
    assert "estimated from the LV pool" in flag(estimated, "PIXEL_SPACING_DEFAULT")["message"]


def _with_images(study, images):
    changed = copy(study)
    changed.provenance = dict(study.provenance)
    changed.images = images
    return Analysis(changed, study.labels).run()


def test_a_perfusion_series_clipped_at_the_tissue_is_flagged_and_one_clipped_in_the_blood_is_not():
    """A windowed export whose ceiling is the myocardium's median peak: its curves lose their peak
    (segment MBF 13-23 % off on these phantoms, session 48). The blood alone clipped (as the real
    QPerf Gd maps stop at 6.0 mmol/L at the bolus peak), still or breathing, changes no MBF and is
    not flagged."""
    for seed, motion in ((4, False), (5, False), (4, True)):
        study, _ = make_perfusion_phantom(seed=seed, n_frames=50, noise=0.005, motion=motion)
        myo, pool = study.labels[0] == MYO, study.labels[0] == LV
        intact = _with_images(study, study.images)
        assert "IMAGE_CLIPPED" not in codes(intact), seed
        blood_clipped = _with_images(study, np.minimum(study.images, 0.3 * study.images[:, pool].mean(1).max()))
        assert "IMAGE_CLIPPED" not in codes(blood_clipped), (seed, motion)
        ceiling = np.median(study.images[:, myo].max(0))
        clipped = _with_images(study, np.minimum(study.images, ceiling))
        assert "IMAGE_CLIPPED" in codes(clipped), (seed, motion)
        if not motion:
            off = [abs(c["mbf_ml_min_g"] / i["mbf_ml_min_g"] - 1) for c, i in
                   zip(clipped.perfusion["segments"], intact.perfusion["segments"])]
            assert max(off) > 0.1, seed   # why it is flagged


def test_a_perfusion_series_rounded_to_a_few_steps_is_flagged():
    """A Gd map stored in steps of 0.05 mmol/L keeps the myocardium's 0.3-0.4 mmol/L enhancement in
    a few steps: segment MBF 22 % off with QC pass on this phantom (session 48); in steps of
    0.001 mmol/L it is measured as before and not flagged."""
    study, _ = make_perfusion_phantom(seed=5, n_frames=50, noise=0.005)
    intact = _with_images(study, study.images)
    rounded = _with_images(study, np.round(study.images / 0.05) * 0.05)
    assert "IMAGE_QUANTISED" in codes(rounded) and "IMAGE_QUANTISED" not in codes(intact)
    off = [abs(r["mbf_ml_min_g"] / i["mbf_ml_min_g"] - 1) for r, i in zip(rounded.perfusion["segments"],
                                                                           intact.perfusion["segments"])]
    assert max(off) > 0.15
    fine = _with_images(study, np.round(study.images / 0.001) * 0.001)
    assert "IMAGE_QUANTISED" not in codes(fine)


@pytest.mark.parametrize("series", ["stress", "rest"])
def test_the_real_qperf_series_raise_no_acquisition_review(shared_data, series):
    """The QPerf examples store 1 x 1 mm pixels without orientation (Analyze; the segmentation
    estimates 2.9 mm from the LV pool) and Gd maps that stop at 6.0 mmol/L in the blood at the bolus
    peak: the placeholder is a note, the blood's ceiling no clip (the myocardium stays under it), and
    nothing asks for review that did not before."""
    from CardiacAISegLib.pipeline import compute_analysis

    a = compute_analysis(load_study(shared_data / "qperf", series=series))
    assert not ACQUISITION_CODES & codes(a)
    assert "PIXEL_SPACING_DEFAULT" in codes(a, "info")
    assert "estimated from the LV pool" in flag(a, "PIXEL_SPACING_DEFAULT")["message"]


def test_recent_results_keep_the_last_few_by_the_frames_content():
    """perfusion.bolus.RecentResults (public: QC keeps its overlay judgements in one): a copy of
    the same frames is a hit, an edited frame a miss, and the least recently used goes first."""
    from CardiacAISegLib.perfusion.bolus import RecentResults

    kept = RecentResults(size=2)
    frames = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    kept.put(RecentResults.key(frames, 0.5), "a")
    assert kept.get(RecentResults.key(frames.copy(), 0.5)) == "a"
    edited = frames.copy()
    edited[1, 2, 3] += 1
    assert kept.get(RecentResults.key(edited, 0.5)) is None and kept.get(RecentResults.key(frames, 0.6)) is None
    kept.put(RecentResults.key(edited, 0.5), "b")
    kept.get(RecentResults.key(frames, 0.5))   # used: kept over "b"
    kept.put(RecentResults.key(frames, 0.6), "c")
    assert kept.get(RecentResults.key(edited, 0.5)) is None and kept.get(RecentResults.key(frames, 0.5)) == "a"
    kept.clear()
    assert kept.get(RecentResults.key(frames, 0.6)) is None
