"""Label maps the readers took wrongly or refused without a way on (probe 107): a dark-blood cine
with its right labels called "rotated 180 degrees", an ED+ES pair as a 2-frame map, a NaN
background worded for images, a NIfTI scaling that moved every label, a blood-pool-only map in
the other convention measured with LV and RV swapped, a label NRRD in cm converted unsaid."""
import nibabel as nib
import numpy as np
import pytest

from CardiacAISegLib.analyze import run
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.labels import LV, MYO, RV
from CardiacAISegLib.phantoms.phantom import write_phantom
from CardiacAISegLib.readers import labelmap, load_study

N_FRAMES = 8


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """(image, 4D ACDC-convention labels of every frame, folder) of a cine phantom."""
    root = tmp_path_factory.mktemp("label-messages")
    paths, _, _ = write_phantom("cine", root / "phantom", seed=3, n_frames=N_FRAMES, n_slices=6, size=80)
    return paths["cine.nii.gz"], paths["cine_labels.nii.gz"], root


def _like(source, path, data, dtype=None):
    """``data`` (nibabel's x, y, z[, t]) saved with ``source``'s affine and header."""
    img = nib.load(str(source))
    out = nib.Nifti1Image(np.asarray(data, dtype or img.get_data_dtype()), img.affine, img.header)
    out.set_data_dtype(dtype or img.get_data_dtype())
    nib.save(out, str(path))
    return path


def _data(path):
    return np.asarray(nib.load(str(path)).dataobj)


def _warnings(study):
    return study.provenance.get("warnings", [])


# --- D5: a dark-blood (inverted) cine with its right labels ----------------------------------
def test_a_dark_blood_cine_with_its_labels_is_said_not_bright_blood(cine, tmp_path):
    """The phantom's grey values inverted, its labels right: the labelled pool is darker than the
    wall (x0.18), and the labels were said to be "rotated 180 degrees", to "part the bright blood
    pool from the dark myocardium better". They fit; the images are what is not bright-blood."""
    image, labels, _ = cine
    values = _data(image)
    dark = _like(image, tmp_path / "dark.nii.gz", values.max() + values.min() - values)
    study = load_study(dark, labels=labels)
    said = [w for w in _warnings(study) if labelmap.NOT_BRIGHT_BLOOD in w]
    assert len(said) == 1, _warnings(study)
    assert "darker than the labelled myocardium" in said[0] and "inverted" in said[0], said[0]
    assert not any("do not seem to overlay" in w for w in _warnings(study)), _warnings(study)

    analysis, _ = run(dark, tmp_path / "out", labels=labels)
    bright, _ = run(image, tmp_path / "bright", labels=labels)
    flags = {f["code"]: f["message"] for f in analysis.qc["flags"]}
    # said as the images' fault, not the labels'; and no SNR read off a pool that is not bright
    assert labelmap.NOT_BRIGHT_BLOOD in flags.get("IMAGES_NOT_BRIGHT_BLOOD", ""), analysis.qc["flags"]
    assert not {"LABELS_OFF_THE_IMAGE", "IMAGE_NOISY"} & set(flags), analysis.qc["flags"]
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_mass_g"):   # the labels' volumes, whatever the grey scale
        assert analysis.cine[key] == pytest.approx(bright.cine[key], rel=1e-9), key


def test_misplaced_labels_on_a_bright_blood_cine_are_still_called_off_the_image(cine):
    """The phantom's map moved far enough that its "pool" lies on darker signal than its "wall"
    (the pool darker than the wall as given, on a bright-blood image) is misplaced, not on a
    dark-blood cine: the message names the way back, as before."""
    image, labels, _ = cine
    study = load_study(image, labels=labels)
    t = max(study.labels, key=lambda f: int((study.labels[f] == LV).sum()))
    judged = 0
    for px in range(20, 40, 4):
        for axis in (1, 2):
            for sign in (1, -1):
                lab = np.roll(study.labels[t], sign * px, axis=axis)
                given = labelmap._pool_wall_contrast(study.images[t], lab)
                if given is None or given >= 1:
                    continue
                judged += 1
                off = labelmap.labels_off_the_image(study, {t: lab})
                assert off is not None and off.startswith("the labels do not seem to overlay this image"), off
    assert judged >= 5


def test_acdc_with_its_own_labels_and_inverted_is_told_apart(shared_data):
    """On ACDC's expert maps nothing is said; the same images inverted are said not bright-blood."""
    from copy import copy

    said = 0
    for patient in ("patient001", "patient023", "patient041", "patient062", "patient083"):
        folder = shared_data / "acdc" / patient
        if not folder.is_dir():
            pytest.skip(f"{folder} not found")
        study = load_study(folder)
        assert labelmap.labels_off_the_image(study, study.labels) is None, patient
        inverted = copy(study)
        inverted.images = study.images.max() + study.images.min() - study.images
        off = labelmap.labels_off_the_image(inverted, study.labels)
        said += bool(off and off.startswith(labelmap.NOT_BRIGHT_BLOOD))
    assert said == 5


# --- D6: an ED+ES pair as a 2-frame 4D map -----------------------------------------------------
def test_a_two_frame_map_for_a_longer_cine_is_refused_with_the_way_forward(cine, tmp_path):
    image, labels, _ = cine
    stored = _data(labels)
    pair = _like(labels, tmp_path / "ed_es.nii.gz", stored[..., [0, 3]])
    with pytest.raises(CardiacInputError, match=rf"label map has 2 frames but the image has {N_FRAMES}.*give a 4D map "
                                                rf"of all {N_FRAMES} frames with the frames not labelled all 0"):
        load_study(image, labels=pair)
    # the way it names: a full-length map with the other frames 0
    full = np.zeros_like(stored)
    full[..., [0, 3]] = stored[..., [0, 3]]
    study = load_study(image, labels=_like(labels, tmp_path / "full.nii.gz", full))
    assert sorted(study.labels) == [0, 3]


# --- D7a: NaN background -----------------------------------------------------------------------
def test_a_label_map_with_a_nan_background_is_named_as_a_label_map(cine, tmp_path):
    image, labels, _ = cine
    values = _data(labels).astype(np.float32)
    values[values == 0] = np.nan
    nan = _like(labels, tmp_path / "nan.nii.gz", values, np.float32)
    with pytest.raises(CardiacInputError) as err:
        load_study(image, labels=nan)
    assert err.value.problem.startswith("the label map contains ") and "NaN values" in err.value.problem, err.value
    assert "0 in place of NaN" in err.value.problem and "signal" not in err.value.problem, err.value


# --- D7b: NIfTI scaling on a label map ------------------------------------------------------------
def test_a_label_map_whose_scaling_moves_its_labels_is_refused_naming_the_scaling(cine, tmp_path):
    """A uint8 map with scl_inter 1 read 0-3 as 1-4 (its background as the RV): said only as
    "label values [4]", with 12 review flags."""
    image, labels, _ = cine
    img = nib.load(str(labels))
    scaled = nib.Nifti1Image(np.asarray(img.dataobj, np.uint8), img.affine, dtype=np.uint8)
    scaled.header.set_slope_inter(1, 1)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    with pytest.raises(CardiacInputError, match=r"scl_slope 1, scl_inter 1\), which turns the labels stored as "
                                                r"\[0, 1, 2, 3\] into \[1, 2, 3, 4\]"):
        load_study(image, labels=tmp_path / "scaled.nii.gz")


def test_float_labels_nibabel_stored_with_a_fitted_scaling_read_as_before(cine, tmp_path):
    """nibabel stores float labels as int16 with a slope and intercept of its own choosing: the
    scaled values are the labels, and are read as they always were."""
    image, labels, _ = cine
    img = nib.load(str(labels))
    floats = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
    floats.set_data_dtype(np.int16)
    nib.save(floats, str(tmp_path / "fitted.nii.gz"))
    assert nib.load(str(tmp_path / "fitted.nii.gz")).dataobj.slope != 1
    study, plain = load_study(image, labels=tmp_path / "fitted.nii.gz"), load_study(image, labels=labels)
    for t in plain.labels:
        np.testing.assert_array_equal(study.labels[t], plain.labels[t])


# --- D7c: a blood-pool-only map in the other convention --------------------------------------------
def _without_myocardium(stored_acdc, convention):
    """ACDC-convention values with the myocardium erased, in ``convention`` ('acdc' or 'ukbb')."""
    pools = np.where(stored_acdc == 2, 0, stored_acdc)
    if convention == "ukbb":
        pools = np.select([pools == 3, pools == 1], [1, 3], 0)
    return pools.astype(np.uint8)


def test_a_ukbb_map_without_myocardium_read_as_acdc_is_refused(cine, tmp_path):
    """1 LV, 3 RV (ukbb) read as acdc measured the RV as the LV (EDV 89.4 mL for 129.5) with
    flags about mass and mirroring: the ring test needs myocardium. The LV pool is the round
    one, the RV the crescent."""
    image, labels, _ = cine
    ukbb = _like(labels, tmp_path / "ukbb.nii.gz", _without_myocardium(_data(labels), "ukbb"))
    with pytest.raises(CardiacInputError, match=r"look like the ukbb convention, not acdc: the map has no myocardium.*"
                                                r"give --label-convention ukbb"):
        load_study(image, labels=ukbb)
    right = load_study(image, labels=ukbb, label_convention="ukbb")
    as_acdc = load_study(image, labels=_like(labels, tmp_path / "acdc.nii.gz", _without_myocardium(_data(labels), "acdc")))
    for t in right.labels:
        np.testing.assert_array_equal(right.labels[t], as_acdc.labels[t])
        assert not (right.labels[t] == MYO).any()


def test_acdc_maps_without_myocardium_are_kept_and_swapped_ones_refused(shared_data, tmp_path):
    """The shape test on real maps: ACDC's expert ED and ES maps with the myocardium erased load
    as they are; with LV and RV swapped as well they are refused."""
    for patient in ("patient001", "patient023", "patient041", "patient062", "patient083"):
        folder = shared_data / "acdc" / patient
        if not folder.is_dir():
            pytest.skip(f"{folder} not found")
        for n in ("01", "02"):
            gt = folder / f"{patient}_frame{n}_gt.nii.gz"
            stored = _data(gt)
            pools = _like(gt, tmp_path / f"{patient}_{n}_pools.nii.gz", _without_myocardium(stored, "acdc"))
            study = load_study(folder / f"{patient}_frame{n}.nii.gz", labels=pools)
            assert {LV, RV} <= set(np.unique(next(iter(study.labels.values())))), patient
            swapped = _like(gt, tmp_path / f"{patient}_{n}_swapped.nii.gz", _without_myocardium(stored, "ukbb"))
            with pytest.raises(CardiacInputError, match="give --label-convention ukbb"):
                load_study(folder / f"{patient}_frame{n}.nii.gz", labels=swapped)


# --- a label NRRD in cm ---------------------------------------------------------------------------
def _nrrd_in_cm(source, path):
    """``source`` (a NIfTI label map) as a NRRD whose directions and origin are in cm."""
    nrrd = pytest.importorskip("nrrd")
    img = nib.load(str(source))
    data = np.asarray(img.dataobj)
    listed = data.ndim == 4
    header = {"space": "right-anterior-superior", "kinds": ["domain"] * 3 + ["list"] * listed,
              "space directions": np.vstack([img.affine[:3, :3].T * 0.1, *[np.full(3, np.nan)] * listed]),
              "space origin": img.affine[:3, 3] * 0.1, "space units": ["cm"] * 3}
    nrrd.write(str(path), data, header, index_order="F")
    return path


def test_a_label_nrrd_in_cm_beside_an_image_in_mm_says_its_conversion(cine, tmp_path):
    """The label file's reader converted its cm to mm and said so, but only warnings about
    sform reached the user: a conversion of the labels' geometry went unsaid."""
    image, labels, _ = cine
    in_cm = _nrrd_in_cm(labels, tmp_path / "labels.nrrd")
    study, plain = load_study(image, labels=in_cm), load_study(image, labels=labels)
    said = [w for w in _warnings(study) if "space units" in w]
    assert len(said) == 1 and said[0].startswith("labels.nrrd: the header gives its sizes in cm (space units): "
                                                 "converted to mm"), _warnings(study)
    for t in plain.labels:
        np.testing.assert_array_equal(study.labels[t], plain.labels[t])
