"""A whole exam exported from the scanner or PACS: which series is read, and what is said about the
others. Built as a Siemens exam stores it: the short-axis cine one series per slice, with LGE
(one image per slice) at the same positions, perfusion series with their motion-corrected
copies, and the dual-sequence AIF series (probe round 16)."""
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bad_corpus import N_FRAMES, N_SLICES, PIXEL_MM, SIZE, SLICE_MM, base_ed, cine_dicom, make_base
from dicom_factory import write_aif_series, write_dicom, write_perfusion_series

from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import load_study

CINE_UID = "1.2.826.0.1.3680043.10.99"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("exam-base"))


@pytest.fixture(scope="module")
def perfusion():
    return make_perfusion_phantom(seed=3, n_frames=40, noise=0.005)[0]


def _per_slice_cine(base, folder, first_number=20, description="cine_retro_sax", uid=CINE_UID):
    """The cine stack one series per slice (own UID and number, images numbered from 1 in each)."""
    def per_slice(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{uid}.{k + 1}", first_number + k
        ds.SeriesDescription, ds.InstanceNumber = description, t + 1
    cine_dicom(base, folder, per_image=per_slice)


def _per_slice_lge(folder, first_number=50):
    """Segmented LGE: one image per slice, one series per slice, at the cine's positions, matrix
    and pixel size."""
    for k in range(N_SLICES):
        write_dicom(folder / f"LGE{k:02d}.dcm", series=f"1.2.826.0.1.3680043.10.98.{k + 1}", number=first_number + k,
                    desc="LGE_PSIR", ipp=(0.0, 0.0, SLICE_MM * k), shape=(SIZE, SIZE), spacing=(PIXEL_MM, PIXEL_MM),
                    value=300)


def test_lge_at_the_cine_positions_does_not_replace_the_cine_slices(base, tmp_path):
    """The LGE slices were taken for re-acquired cine slices ('a slice position was acquired in
    two series, the later is used'): a one-frame LGE stack was measured as the cine, exit 0."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)
    _per_slice_lge(exam)
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert study.provenance["series_description"] == "cine_retro_sax"
    warnings = study.provenance["warnings"]
    assert not any("acquired in two series" in w for w in warnings), warnings
    assert any(f"{N_SLICES} series (#50/#51" in w and "LGE_PSIR" in w and "one image per slice position" in w
               for w in warnings), warnings
    # the InstanceNumbers restart in every slice series: harmless here, no note (contours that
    # name one are refused by their reader)
    assert not any("InstanceNumber" in w for w in warnings), warnings


def test_a_description_shared_by_a_stack_stored_per_slice_reads_the_stack(base, tmp_path):
    """`--series cine_retro_sax` matched 12 series and was refused ('choose one by its number'),
    and a number reads one slice: no --series value could read the stack."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)
    _per_slice_lge(exam)
    write_dicom(exam / "loc.dcm", series="1.2.826.0.1.3680043.10.97", number=1, desc="localizer", shape=(SIZE, SIZE),
                iop=(0, 1, 0, 0, 0, -1), spacing=(PIXEL_MM, PIXEL_MM))
    study = load_study(exam, series="cine_retro_sax")
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert len(study.provenance["series_uid"].split("+")) == N_SLICES
    # a re-acquired slice (same description, same phase count, later number) is still a repeat
    def repeat(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = f"{CINE_UID}.99", 40, "cine_retro_sax", t + 1
    cine_dicom(base, tmp_path / "repeat", slices=[3], per_image=repeat)
    for f in (tmp_path / "repeat").iterdir():
        f.rename(exam / f"R{f.name}")
    study = load_study(exam, series="cine_retro_sax")
    note = next(w for w in study.provenance["warnings"] if "acquired in two series" in w)
    assert "#40" in note and "leave the later series out of the folder" in note and "--series" not in note


@pytest.mark.parametrize("view_iop, read", [((1, 0, 0, 0, 0, -1), True), ((1, 0, 0, 0, 0.996, -0.087), False)])
def test_long_axis_cines_beside_the_short_axis_stack(base, tmp_path, view_iop, read):
    """An exam export: the short-axis cine (one series) beside a 4-chamber cine (one slice, its
    own series, at 90 degrees) and an LGE stored one series per slice. The folder asked for
    --series; the long-axis view is now left out with a warning, and the stack is read. The LGE
    is left out too: beside a one-series cine its slice series had been merged into a stack of
    their own and read in the cine's place (a one-frame "cine", exit 0). A one-slice series only
    5 degrees off the stack (a repeated slice) is no long-axis view: the user still chooses."""
    exam = tmp_path / "exam"
    cine_dicom(base, exam, series=CINE_UID, desc="cine_retro_sax", number=20)

    def four_chamber(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"{CINE_UID}.400", 400, "cine_retro_4ch"
        ds.ImageOrientationPatient = list(view_iop)
        ds.SOPInstanceUID = f"{CINE_UID}.400.{t + 1}"
    cine_dicom(base, tmp_path / "lax", slices=[N_SLICES // 2], per_image=four_chamber)
    for f in (tmp_path / "lax").iterdir():
        f.rename(exam / f"LAX{f.name}")
    _per_slice_lge(exam)
    if read:
        study = load_study(exam)
        assert study.images.shape[:2] == (N_FRAMES, N_SLICES) and study.provenance["series_number"] == 20
        assert any("#400 'cine_retro_4ch'" in w and "a long-axis view" in w for w in study.provenance["warnings"])
    else:
        with pytest.raises(CardiacInputError, match=r"2 image series in this folder, choose one with --series"):
            load_study(exam)


@pytest.mark.parametrize("beside", ["lge_per_slice", "one_phase_stack", "two_slice_sax"])
def test_no_series_is_picked_where_the_folder_does_not_say_which(base, tmp_path, beside):
    """Folders where today's exam rules picked a series the user may not mean (probe 50): an LGE
    stored one series per slice, or a one-phase stack, beside a lone 4-chamber cine (the 4-chamber
    cine was read as "the cine", LV EDV 26 mL; or the LGE as a one-phase cine); a 2-slice
    short-axis cine beside a 3-slice 4-chamber stack (the short axis was left out as "a long-axis
    view"). Each asks for --series, naming both."""
    exam = tmp_path / "exam"

    def four_chamber(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"{CINE_UID}.400", 400, "cine_4ch"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = f"{CINE_UID}.400.{k + 1}.{t + 1}"
    lax_slices = [2, 3, 4] if beside == "two_slice_sax" else [N_SLICES // 2]
    cine_dicom(base, tmp_path / "lax", slices=lax_slices, per_image=four_chamber)
    exam.mkdir()
    for f in (tmp_path / "lax").iterdir():
        f.rename(exam / f"LAX{f.name}")
    if beside == "lge_per_slice":
        _per_slice_lge(exam)
        names = ("#400 'cine_4ch'", "'LGE_PSIR'")
    elif beside == "one_phase_stack":
        cine_dicom(base, exam, series=f"{CINE_UID}.7", desc="sax_one_phase", number=7, frames=[0])
        names = ("#400 'cine_4ch'", "#7 'sax_one_phase'")
    else:
        cine_dicom(base, exam, series=CINE_UID, desc="cine_sax", number=20, slices=[3, 4])
        names = ("#400 'cine_4ch'", "#20 'cine_sax'")
    with pytest.raises(CardiacInputError, match="image series in this folder, choose one with --series") as refused:
        load_study(exam)
    assert all(name in str(refused.value) for name in names), str(refused.value)


def test_lge_per_slice_with_more_slices_than_the_cine_per_slice_is_not_read(base, tmp_path):
    """Both stored one series per slice, the LGE planned apart (4 mm off the cine's positions)
    and with two slices more: its stack won on its slice count. The cine's stack is read."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)
    for k in range(N_SLICES + 2):
        write_dicom(exam / f"LGE{k:02d}.dcm", series=f"1.2.826.0.1.3680043.10.98.{k + 1}", number=50 + k,
                    desc="LGE_PSIR", ipp=(0.0, 0.0, SLICE_MM * k - 4.0), shape=(SIZE, SIZE), spacing=(PIXEL_MM, PIXEL_MM),
                    value=300)
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES) and study.provenance["series_description"] == "cine_retro_sax"


def test_a_compressed_copy_of_the_series_is_still_a_copy(base, tmp_path):
    """A PACS export that also holds the series in a subfolder, saved JPEG-lossless (same SOP
    UIDs, same pixels, other bytes): both were read and the series refused as "2 acquisitions"
    (probe 50). The copies are read once, as uncompressed copies are."""
    from dicom_factory import compress_files

    import shutil

    exam = tmp_path / "exam"
    cine_dicom(base, exam)
    copies = exam / "copy"
    copies.mkdir()
    for f in sorted(exam.glob("*.dcm")):
        shutil.copy(f, copies / f.name)
    compress_files(sorted(copies.iterdir()))
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert any(f"{N_FRAMES * N_SLICES} file(s) are copies of other images" in w for w in study.provenance["warnings"])


def test_cine_breath_holds_of_two_slices_with_one_pair_acquired_again_stay_one_stack(base, tmp_path):
    """The cine stored one series per slice, two slices per breath-hold (their clocks overlap),
    one pair acquired again later: the rule that tells stress from rest (two acquisitions that
    each cover the whole stack) refused it as "acquisitions of the same slice positions" (probe
    34). The stack is read with the later pair and a note; a series number without clocks reads
    that series alone (nothing shows which series were acquired together)."""
    from dicom_factory import _tm

    exam = tmp_path / "exam"

    def breath_holds(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.{k + 1}", 20 + k
        ds.SeriesDescription, ds.InstanceNumber = "cine_retro_sax", t + 1
        ds.AcquisitionTime = _tm(36000.0 + 30.0 * (k // 2) + 0.045 * t + 0.01 * (k % 2))
    cine_dicom(base, exam, per_image=breath_holds)

    def again(ds, k, t):
        breath_holds(ds, k, t)
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.{k + 91}", 40 + k
        ds.AcquisitionTime = _tm(36600.0 + 0.045 * t + 0.01 * (k % 2))
    cine_dicom(base, tmp_path / "again", slices=[2, 3], per_image=again)
    for f in (tmp_path / "again").iterdir():
        f.rename(exam / f"R{f.name}")
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert sum("acquired in two series" in w for w in study.provenance["warnings"]) == 2
    for f in exam.iterdir():   # clocks gone (an anonymiser): a number reads its own series
        ds = pydicom.dcmread(f)
        del ds.AcquisitionTime
        ds.save_as(f)
    assert load_study(exam, series="20").images.shape[:2] == (N_FRAMES, 1)


def _stress_with_moco(folder, study, pd_frames=0, moco_pd_frames=None):
    write_perfusion_series(folder, study, vendor="siemens", description="Perfusion_stress", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.1", pd_frames=pd_frames)
    write_perfusion_series(folder, study, vendor="siemens", description="Perfusion_stress_MOCO", start_number=41,
                           series="1.2.826.0.1.3680043.10.7.2", pd_frames=pd_frames if moco_pd_frames is None else moco_pd_frames)


def test_kind_perfusion_reads_the_perfusion_series_of_a_whole_exam(base, perfusion, tmp_path):
    """--kind perfusion on an exam with a cine stack: the cine was picked, then refused as
    contradicting --kind with the advice to drop --kind."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam / "cine")
    _stress_with_moco(exam / "perf", perfusion)
    write_aif_series(exam / "perf", perfusion, description="AIF_stress", number=42)
    study = load_study(exam, kind="perfusion")
    assert study.kind == "perfusion" and study.provenance["series_description"] == "Perfusion_stress"
    assert study.n_frames == perfusion.n_frames and study.provenance.get("aif_series_uid")
    assert any("--kind perfusion" in w and "were considered" in w for w in study.provenance["warnings"])
    assert load_study(exam, kind="cine").provenance["series_description"] == "cine_retro_sax"
    # stress and rest: the choice is asked for, with the flags that make it
    write_perfusion_series(exam / "rest", perfusion, vendor="siemens", description="Perfusion_rest", start_number=60,
                           series="1.2.826.0.1.3680043.10.7.3", start_s=37000.0)
    with pytest.raises(Exception) as e:
        load_study(exam, kind="perfusion")
    assert "--series stress --rest" in str(e.value), str(e.value)


def test_kind_cine_leaves_out_the_series_named_perfusion(base, perfusion, tmp_path):
    """A whole exam whose cine stack has no description, beside 'Perfusion_stress' and its AIF
    series: --kind cine still asked for --series (probe 97); the series named perfusion are not
    the cine asked for."""
    import pydicom

    exam = tmp_path / "exam"
    _per_slice_cine(base, exam / "cine")
    for f in (exam / "cine").rglob("*"):
        if f.is_file():
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = ""
            ds.save_as(f)
    write_perfusion_series(exam / "perf", perfusion, vendor="siemens", description="Perfusion_stress", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_aif_series(exam / "perf", perfusion, description="AIF_stress", number=42)
    study = load_study(exam, kind="cine")
    assert study.kind == "cine" and study.n_slices == N_SLICES
    assert any("--kind cine" in w and "whose names say perfusion were left out" in w for w in study.provenance["warnings"])


def test_the_rest_picked_as_a_whole_exam_is_its_rest_series_in_every_front_end(perfusion, tmp_path):
    """An exam folder holding stress and rest, picked as the rest: the CLI read its rest series,
    the Slicer Logic asked for "--series stress --rest" (a flag it does not have) because it read
    the rest without the folder's role (session 31's review). ``load_rest_series`` is the one
    reading all front ends call."""
    from CardiacAISegLib.readers import load_rest_series

    exam = tmp_path / "exam"
    write_perfusion_series(exam / "stress", perfusion, vendor="siemens", description="Perfusion_stress", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_perfusion_series(exam / "rest", perfusion, vendor="siemens", description="Perfusion_rest", start_number=60,
                           series="1.2.826.0.1.3680043.10.7.3", start_s=37000.0, scale=300.0)   # not the same images
    rest = load_rest_series(exam)
    assert rest.kind == "perfusion" and rest.provenance["series_description"] == "Perfusion_rest"
    assert load_rest_series(exam, series="stress").provenance["series_description"] == "Perfusion_stress"
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic

    logic = CardiacAISegLogic(sc.new_scene())
    logic.loadStudy(exam, series="stress")
    assert logic.loadRestStudy(exam).provenance["series_description"] == "Perfusion_rest"
    assert logic.restStudy.provenance["series_description"] == "Perfusion_rest"


def test_a_cine_run_is_not_told_about_perfusion_copies(base, perfusion, tmp_path):
    """A cine read from a whole exam was warned four times that perfusion MOCO copies and maps
    'were left out: the original is read and its frames aligned here' - of another series."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam / "cine")
    _stress_with_moco(exam / "perf", perfusion)
    study = load_study(exam)
    assert study.provenance["series_description"] == "cine_retro_sax"
    assert not any("derived copy" in w for w in study.provenance["warnings"]), study.provenance["warnings"]
    # read as perfusion, the copy of the series read is said
    stress = load_study(exam, series="stress")
    assert any("derived copy" in w and "Perfusion_stress_MOCO" in w for w in stress.provenance["warnings"])


def test_a_moco_copy_without_the_pd_frames_is_a_copy(perfusion, tmp_path):
    """The motion-corrected copy holds the dynamics only, not the proton-density frames its
    original starts with: 'image series in this folder, choose one with --series'."""
    folder = tmp_path / "perf"
    _stress_with_moco(folder, perfusion, pd_frames=2, moco_pd_frames=0)
    study = load_study(folder)
    assert study.provenance["series_description"] == "Perfusion_stress" and study.n_frames == perfusion.n_frames
    assert any("derived copy" in w for w in study.provenance["warnings"])
    assert pydicom.dcmread(next(iter(sorted(folder.iterdir())))).SeriesDescription.startswith("Perfusion_stress")


def test_a_slice_short_of_a_phase_stays_in_its_stack(base, tmp_path):
    """Grouping slice series by their image count split a stack whose one slice lacks a phase
    (or prospective triggering's 20/19/18): the slice was dropped without a word, or the stack
    refused (probe round 19). Counts within 25 % are one acquisition."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam, description="SA")
    last = max(exam.iterdir(), key=lambda f: (pydicom.dcmread(f, stop_before_pixels=True).SeriesNumber,
                                              pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    last.unlink()                                   # the last slice's last phase
    study = load_study(exam)
    assert study.n_slices == N_SLICES and study.n_frames == N_FRAMES - 1
    assert any(f"slices have {N_FRAMES - 1}-{N_FRAMES} phases" in w for w in study.provenance["warnings"])


def test_kind_cine_does_not_narrow_to_series_named_cine(base, tmp_path):
    """A short-axis stack named SA_1..SA_8 beside long-axis CINE_4CH: --kind cine narrowed the
    exam to the long axis (one 4-chamber slice measured, EDV 24 mL). Only perfusion's names
    narrow."""
    exam = tmp_path / "exam"

    def per_slice(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.{k + 1}", 20 + k
        ds.SeriesDescription, ds.InstanceNumber = f"SA_{k + 1}", t + 1
    cine_dicom(base, exam, per_image=per_slice)
    for t in range(N_FRAMES):
        write_dicom(exam / f"LAX{t:02d}.dcm", series="1.2.826.0.1.3680043.10.96", number=5, desc="CINE_4CH",
                    iop=(1, 0, 0, 0, 0, -1), shape=(SIZE, SIZE), spacing=(PIXEL_MM, PIXEL_MM), trigger=40.0 * t,
                    instance=t + 1, value=200)
    study = load_study(exam, kind="cine")
    assert study.n_slices == N_SLICES and len(study.provenance["series_uid"].split("+")) == N_SLICES


def test_a_prior_exam_stored_beside_the_current_one_is_not_merged_into_its_stack(base, tmp_path):
    """Probe 77: a patient's current and prior exam in one folder, both per-slice cines numbered and
    described alike (the prior 4 mm along the normal): all 20 series were read as one stack of 20
    slices, EDV and mass 10 % low (or EF 26 for 51 %), exit 0."""
    exam = tmp_path / "exam"

    def study(uid, date, shift_mm):
        def per_slice(ds, k, t):
            ds.SeriesInstanceUID, ds.SeriesNumber = f"{uid}.{k + 1}", 20 + k
            ds.SeriesDescription, ds.InstanceNumber = "cine_retro_sax", t + 1
            ds.StudyInstanceUID, ds.StudyDate = uid, date
            ds.ImagePositionPatient = [0.0, 0.0, SLICE_MM * k + shift_mm]
        return per_slice

    import shutil

    for name, uid, date, shift in (("current", "1.2.826.0.1.3680043.10.120", "20260105", 0.0),
                                   ("prior", "1.2.826.0.1.3680043.10.121", "20250301", 4.0)):
        cine_dicom(base, tmp_path / name, per_image=study(uid, date, shift))   # (its labels file beside it)
        shutil.copytree(tmp_path / name, exam / name)
    with pytest.raises(CardiacInputError, match=r"they belong to 2 studies \(exams\) of this patient: 2025-03-01 "
                                                r"\(8 series, StudyInstanceUID 1\.2\.826\.0\.1\.3680043\.10\.121\); 2026-01-05"):
        load_study(exam)
    study_alone = load_study(exam / "current")
    assert study_alone.images.shape[:2] == (N_FRAMES, N_SLICES)


def test_orientations_a_float_rounding_apart_are_one_plane_and_not_said_to_be_tilted(base, tmp_path):
    """Probe 77: slices whose orientation cosines differ by 2e-7 across a 0.0005 rounding step
    were said to be "tilted up to 0.0° against the rest of the stack (a re-planned slice?)"."""
    def noisy(ds, k, t):
        ds.ImageOrientationPatient = [1, 0.0004999 if k % 2 else 0.0005001, 0, 0, 1, 0]

    cine_dicom(base, tmp_path / "cine", per_image=noisy)
    study = load_study(tmp_path / "cine")
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert not any("tilted" in w for w in study.provenance["warnings"]), study.provenance["warnings"]


def _molli(folder, positions_mm, first_number=70, times_ms=(100, 180, 260, 1100, 1180, 1260, 2100, 2900)):
    """MOLLI as Siemens files it: one series per slice, 8 images at one position, each at its own
    inversion time (InversionTime, and TriggerTime with it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(positions_mm):
        for i, ti in enumerate(times_ms):
            path = folder / f"MOLLI{k:02d}_{i:02d}.dcm"
            write_dicom(path, series=f"1.2.826.0.1.3680043.10.97.{k + 1}", number=first_number + k,
                        desc="MOLLI_5(3)3_SAX", ipp=(0.0, 0.0, z), shape=(SIZE, SIZE), spacing=(PIXEL_MM, PIXEL_MM),
                        trigger=float(ti), instance=i + 1, value=200 + 10 * i)
            ds = pydicom.dcmread(path)
            ds.InversionTime = float(ti)
            ds.save_as(path, enforce_file_format=True)


def test_t1_mapping_and_lge_are_not_read_as_a_cine(base, tmp_path):
    """An export with MOLLI series, an LGE stack and no cine: three MOLLI series were merged into a
    3-slice "cine" with a 2.8 s cycle (EDV 181 mL, EF 0.7 %, mass 102 g; probe 86). Nothing here
    is a cine: refused, each series named with why. Beside a cine, the cine is read and the MOLLI
    series said to be left out; chosen by itself, a MOLLI series is refused as one."""
    exam = tmp_path / "exam"
    _molli(exam, (0.0, 24.0, 48.0))
    _per_slice_lge(exam)
    for path in exam.glob("LGE*.dcm"):          # an LGE is inversion-recovery: one inversion time
        ds = pydicom.dcmread(path)
        ds.InversionTime = 300.0
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CardiacInputError) as e:
        load_study(exam)
    said = str(e.value)
    assert "no cine or first-pass perfusion series in this folder" in said, said
    assert "T1-mapping series" in said and "8 inversion times (100-2900 ms" in said, said
    assert "late gadolinium enhancement" in said, said
    with pytest.raises(CardiacInputError) as e:
        load_study(exam, series="71")
    assert "no cine or first-pass perfusion series" in str(e.value) and "T1-mapping" in str(e.value), str(e.value)
    # the LGE without its InversionTime is picked, then refused by its name: the MOLLI series
    # left out before are said too (the refusal named the LGE only; probe 87)
    no_ti = tmp_path / "no_ti"
    _molli(no_ti, (0.0, 24.0, 48.0))
    _per_slice_lge(no_ti)
    with pytest.raises(CardiacInputError) as e:
        load_study(no_ti)
    said = str(e.value)
    assert "late gadolinium enhancement" in said and "the folder's other series" in said, said
    assert "MOLLI_5(3)3_SAX" in said and "T1-mapping series" in said, said
    _per_slice_cine(base, exam)
    study = load_study(exam)
    assert study.provenance["series_description"] == "cine_retro_sax"
    assert any("MOLLI_5(3)3_SAX" in w and "T1-mapping series" in w for w in study.provenance["warnings"])


def test_an_aif_series_is_not_read_as_the_perfusion_images(perfusion, tmp_path):
    """The dual-sequence AIF series chosen with --series, or alone in a folder beside the scanner's
    MBF map, was analysed as the perfusion images: MBF 2.56 in 16 segments, only AIF_FROM_LV said
    (probe 86). Chosen beside its perfusion series it is refused naming that series; alone, as an
    AIF series. The map, chosen, is refused as a map though its ImageType does not say MAP."""
    exam = tmp_path / "exam"
    write_perfusion_series(exam, perfusion, vendor="siemens", description="Perfusion_stress", start_number=20,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_aif_series(exam, perfusion, description="Perfusion_stress_AIF", number=22)
    assert load_study(exam, series="20").provenance.get("aif_series_uid")
    with pytest.raises(CardiacInputError) as e:
        load_study(exam, series="22")
    assert "is the dual-sequence AIF series of series #20" in str(e.value) and "--series 20" in str(e.value), str(e.value)
    alone = tmp_path / "alone"
    write_aif_series(alone, perfusion, description="Perfusion_stress_AIF", number=22)
    for k in range(perfusion.n_slices):           # the inline MBF map as Siemens types it
        write_dicom(alone / f"MAP{k}.dcm", series="1.2.826.0.1.3680043.10.96", number=23, desc="Perfusion_stress_MBF",
                    ipp=(0.0, 0.0, 8.0 * k), shape=(96, 96), spacing=(1.8, 1.8), value=250, rescale=(0.01, 0.0))
        ds = pydicom.dcmread(alone / f"MAP{k}.dcm")
        ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "MBF"]
        ds.save_as(alone / f"MAP{k}.dcm", enforce_file_format=True)
    with pytest.raises(CardiacInputError) as e:
        load_study(alone)
    assert "described as an AIF series ('Perfusion_stress_AIF')" in str(e.value) and "48 x 48" in str(e.value), str(e.value)
    with pytest.raises(CardiacInputError) as e:
        load_study(alone, series="23")
    assert "is a map the scanner computed" in str(e.value), str(e.value)


def test_the_rest_moco_copy_is_credited_to_the_rest(perfusion, tmp_path):
    """Stress and rest with their motion-corrected copies: the rest's copy, acquired 20 minutes
    later, was said to be "a derived copy of series #40 'Perfusion_stress'" with advice to read it
    instead (probe 86). It is the rest's, by its acquisition times."""
    exam = tmp_path / "exam"
    _stress_with_moco(exam, perfusion)
    for number, description, uid in ((60, "Perfusion_rest", "1.2.826.0.1.3680043.10.7.3"),
                                      (61, "Perf_MOCO_late", "1.2.826.0.1.3680043.10.7.4")):
        write_perfusion_series(exam, perfusion, vendor="siemens", description=description, start_number=number,
                               series=uid, start_s=37200.0, scale=300.0)
    stress = load_study(exam, series="stress")
    assert not any("Perf_MOCO_late" in w for w in stress.provenance["warnings"]), stress.provenance["warnings"]
    rest = load_study(exam, series="rest")
    assert rest.provenance["series_description"] == "Perfusion_rest"
    notes = [w for w in rest.provenance["warnings"] if "Perf_MOCO_late" in w]
    assert notes and all("copy" in w and "#60 'Perfusion_rest'" in w for w in notes), rest.provenance["warnings"]
    # each role's inline map is said to the run that reads that role only (the rest's warnings
    # named the stress's map; probe 86)
    firsts = {}
    for path in sorted(exam.iterdir()):
        ds = pydicom.dcmread(path)
        if ds.SeriesNumber == 40:
            firsts.setdefault(tuple(float(v) for v in ds.ImagePositionPatient), ds)
    for number, role in ((43, "stress"), (63, "rest")):
        for k, ds in enumerate(firsts.values()):   # one image per slice at the stack's positions, as Siemens writes it
            ds.SeriesInstanceUID, ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.96.{number}", f"1.2.826.0.1.3680043.10.96.{number}.{k}"
            ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = number, f"Perfusion_{role}_MBF_map", k + 1
            ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "MBF"]
            ds.save_as(exam / f"MAP{number}_{k}.dcm", enforce_file_format=True)
    for role, other in (("stress", "rest"), ("rest", "stress")):
        warnings = load_study(exam, series=role).provenance["warnings"]
        assert any(f"Perfusion_{role}_MBF_map" in w for w in warnings), warnings
        assert not any(f"Perfusion_{other}_MBF_map" in w for w in warnings), warnings


def test_the_rest_of_an_exam_given_as_its_dicomdir_is_its_rest_series(perfusion, tmp_path):
    """`--rest EXAM/DICOMDIR` asked for --rest-series where `--rest EXAM` found the rest (probe 86):
    the index file stands for its folder, as it does for the stress."""
    from CardiacAISegLib.readers import load_rest_series

    exam = tmp_path / "exam"
    write_perfusion_series(exam, perfusion, vendor="siemens", description="Perfusion_stress", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_perfusion_series(exam, perfusion, vendor="siemens", description="Perfusion_rest", start_number=60,
                           series="1.2.826.0.1.3680043.10.7.3", start_s=37000.0, scale=300.0)
    (exam / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    assert load_rest_series(exam / "DICOMDIR").provenance["series_description"] == "Perfusion_rest"


def test_a_stack_read_from_one_series_per_slice_names_its_series_in_the_results(base, tmp_path):
    """results.json named neither the numbers nor the description of a cine stored one series
    per slice (only its UIDs; probe 86): which series a result came from must be readable."""
    from CardiacAISegLib.results import source_of

    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)
    source = source_of(load_study(exam))
    assert source["merged_from_series"] == N_SLICES
    assert source["series_numbers"] == list(range(20, 20 + N_SLICES))
    assert source["series_description"] == "cine_retro_sax"


def test_a_ge_exam_protocol_naming_t1_mapping_does_not_refuse_its_cine(base, tmp_path):
    """GE writes the exam's protocol as ProtocolName on every series: "CARDIAC FUNCTION T1 MAPPING"
    refused the cine as a T1-mapping series (session 40's review). Only the series' own names
    (SeriesDescription, SequenceName) count."""
    def protocol(ds, k, t):
        ds.ProtocolName, ds.Manufacturer = "CARDIAC FUNCTION T1 MAPPING", "GE MEDICAL SYSTEMS"
    cine_dicom(base, tmp_path / "cine", per_image=protocol)
    assert load_study(tmp_path / "cine").images.shape[:2] == (N_FRAMES, N_SLICES)


def test_a_chosen_stress_beside_a_larger_rest_is_not_taken_for_an_aif_series(perfusion, tmp_path):
    """GE stress at 96 px beside its rest at 192 px, as many frames: chosen, the stress was refused
    as the rest's dual-sequence AIF series (session 40's review). Only a series that looks like one
    (small, or named AIF) is."""
    big = make_perfusion_phantom(seed=3, n_frames=40, noise=0.005, size=192)[0]
    exam = tmp_path / "exam"
    write_perfusion_series(exam, perfusion, vendor="ge", description="Perfusion_stress", start_number=20,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_perfusion_series(exam, big, vendor="ge", description="Perfusion_rest", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.3")
    assert load_study(exam, series="20").provenance["series_description"] == "Perfusion_stress"
    # by its role too: `--series stress` read the rest with the stress as its AIF series
    stress = load_study(exam, series="stress")
    assert stress.provenance["series_description"] == "Perfusion_stress" and not stress.provenance.get("aif_series_uid")
    rest = load_study(exam, series="rest")
    assert rest.provenance["series_description"] == "Perfusion_rest" and not rest.provenance.get("aif_series_uid")
    # the stress named without its role, beside a localiser: the rest was read with the stress as
    # its AIF series (review of session 41); a series that does not look like an AIF series (small,
    # or so named) does not pair with one that names another role
    other = tmp_path / "unnamed"
    write_perfusion_series(other, perfusion, vendor="ge", description="Perfusion", start_number=20,
                           series="1.2.826.0.1.3680043.10.7.1")
    write_perfusion_series(other, big, vendor="ge", description="Perfusion_rest", start_number=40,
                           series="1.2.826.0.1.3680043.10.7.3")
    for k, iop in enumerate(((1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1))):
        write_dicom(other / f"loc{k}.dcm", series="1.2.826.0.1.3680043.10.97", number=1, desc="localizer",
                    shape=(SIZE, SIZE), iop=iop, spacing=(PIXEL_MM, PIXEL_MM), instance=k + 1)
    with pytest.raises(CardiacInputError, match="choose one with --series"):
        load_study(other)


def test_a_first_pass_whose_positions_move_every_dynamic_is_not_taken_for_an_lge(perfusion, tmp_path):
    """A first pass with slice tracking moves ImagePositionPatient a little every dynamic, so each
    image sits at a position of its own, as in an LGE stack; with a saturation delay written as
    InversionTime it would have been refused as late enhancement (session 40's review). An LGE
    stack holds 8-20 images, a first pass hundreds."""
    from CardiacAISegLib.readers.dicom import not_cine_or_first_pass

    folder = tmp_path / "perf"
    _, paths = write_perfusion_series(folder, perfusion, vendor="siemens", description="Perfusion_stress",
                                      series="1.2.826.0.1.3680043.10.7.1")
    items = []
    for i, path in enumerate(sorted(paths)):
        ds = pydicom.dcmread(path)
        ds.InversionTime = 100.0
        ds.ImagePositionPatient = [float(v) + 0.5 * i for v in ds.ImagePositionPatient]   # 0.5 mm a dynamic
        items.append((path, ds))
    assert not_cine_or_first_pass(items) is None
    lge = items[:12]   # as many images as an LGE stack: one inversion time, one image per position
    assert "late gadolinium enhancement" in (not_cine_or_first_pass(lge) or "")


def test_a_stress_export_with_its_localiser_needs_no_flags(perfusion, tmp_path):
    """Stress perfusion with its motion-corrected copy, its dual-sequence AIF series and a 3-plane
    localiser, as PACS exports it: the localiser made the reader ask for --series, while the same
    export without it ran with no flags (probe 86, E10)."""
    exam = tmp_path / "exam"
    _stress_with_moco(exam, perfusion)
    write_aif_series(exam, perfusion, description="Perfusion_stress_AIF", number=42)
    for k, iop in enumerate(((1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1))):
        write_dicom(exam / f"loc{k}.dcm", series="1.2.826.0.1.3680043.10.97", number=1, desc="localizer",
                    shape=(SIZE, SIZE), iop=iop, spacing=(PIXEL_MM, PIXEL_MM), instance=k + 1)
    study = load_study(exam)
    assert study.kind == "perfusion" and study.provenance["series_description"] == "Perfusion_stress"
    assert study.provenance.get("aif_series_uid")
    assert any("localiser" in w for w in study.provenance["warnings"]), study.provenance["warnings"]


def test_stress_and_rest_under_one_name_are_said_to_be_two_acquisitions(perfusion, tmp_path):
    """Stress and rest under one protocol name ('tfi_perf'), each with its AIF series: the reader
    listed 4 series with no word that two of them are acquisitions 20 minutes apart, nor the flags
    that read stress with rest (probe 86, E26)."""
    exam = tmp_path / "exam"
    for number, start in ((20, 36000.0), (30, 37200.0)):
        write_perfusion_series(exam, perfusion, vendor="siemens", description="tfi_perf", start_number=number,
                               series=f"1.2.826.0.1.3680043.10.7.{number}", start_s=start)
        write_aif_series(exam, perfusion, description="tfi_perf_AIF", number=number + 2, start_s=start,
                         series=f"1.2.826.0.1.3680043.10.8.{number}")
    with pytest.raises(CardiacInputError) as e:
        load_study(exam)
    message = str(e.value)
    assert "#20 'tfi_perf' (started 10:00:00) and #30 'tfi_perf' (started 10:20:00)" in message, message
    assert "20 min apart" in message and f"--rest {exam} --rest-series REST_NUMBER" in message, message
    # without SeriesNumber the hint gives the UIDs ("--series 0" twice matched nothing; review)
    bare = tmp_path / "bare"
    for number, start in ((20, 36000.0), (30, 37200.0)):
        write_perfusion_series(bare, perfusion, vendor="siemens", description="tfi_perf", start_number=number,
                               series=f"1.2.826.0.1.3680043.10.7.{number}", start_s=start)
    for path in bare.iterdir():
        ds = pydicom.dcmread(path)
        del ds.SeriesNumber
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CardiacInputError) as e:
        load_study(bare)
    assert "--series 1.2.826.0.1.3680043.10.7.20 reads the first, --series 1.2.826.0.1.3680043.10.7.30 the last" \
        in str(e.value), str(e.value)
    # the hint's flags read them: stress #20 with rest #30, each with its own AIF series
    from CardiacAISegLib.readers import load_rest_series
    stress, rest = load_study(exam, series="20"), load_rest_series(exam, series="30")
    assert stress.provenance["aif_series_uid"].endswith("10.8.20") and rest.provenance["aif_series_uid"].endswith("10.8.30")


def test_the_gui_is_told_which_file_to_open_in_its_own_terms(perfusion, tmp_path):
    """A Slicer user was told "choose one with --series" and "--series 20 --rest EXAM --rest-series
    30" (the module has no such box), and the page "a file of series 1" for a copy named by its
    UID (the localiser's number; probe 87). Each series listed names one of its files, and both
    GUIs word the same hint in their own boxes; the file named reads that series."""
    import re

    from CardiacAISegLib.logic import inModuleTerms
    from CardiacAISegLib.webgui.session import in_page_terms

    exam = tmp_path / "exam"
    write_perfusion_series(exam, perfusion, vendor="siemens", description="tfi_perf", start_number=20,
                           series="1.2.826.0.1.3680043.10.7.20")
    write_perfusion_series(exam, perfusion, vendor="siemens", description="tfi_perf", start_number=30,
                           series="1.2.826.0.1.3680043.10.7.30", start_s=37200.0)
    with pytest.raises(CardiacInputError) as e:
        load_study(exam)
    message = e.value.problem
    rest_file = re.search(r"#30 'tfi_perf' \(\d+ images, UID [\d.]+, file exam/([^)]+)\)", message)
    assert rest_file, message
    assert load_study(exam / rest_file[1]).provenance["series_number"] == 30
    for worded in (inModuleTerms(message), in_page_terms(message)):
        assert "--" not in worded, worded
    assert "a file of series 20 in the 'Or read a file or folder' box (then Load)" in inModuleTerms(message)
    assert "(series= in Python" in inModuleTerms(message) and "(series= in Python" not in in_page_terms(message)
    # read as the rest, its series go in the rest's box (the study's was named; review of session 41)
    assert "a file of series 20 in the 'Rest series (MPR)' box (load it first)" in inModuleTerms(message, rest=True)
    assert "a file of series 20 in the 'Rest series' field" in in_page_terms(message, rest=True)
    # an exam folder whose name holds a ")" stays whole; the module's rest box takes a loaded file
    mpr = "(MPR): --series stress --rest /data/Exam (2) (left out as derived copies or maps: #21)"
    assert "and /data/Exam (2) in the 'Rest series' field (left out" in in_page_terms(mpr)
    assert "a file of the rest series (in /data/Exam (2)) in the 'Rest series (MPR)' box (load it first) (left out" \
        in inModuleTerms(mpr)
    copy = in_page_terms("give --series 1.2.826.0.1.3680043.10.7.21 to read the copy instead")
    assert copy == "give a file of the series with UID 1.2.826.0.1.3680043.10.7.21 in the 'Study' field to read the copy instead"
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic

    logic = CardiacAISegLogic(sc.new_scene())
    with pytest.raises(CardiacInputError) as e:
        logic.loadStudy(exam)
    assert "--" not in str(e.value) and "'Rest series (MPR)' box" in str(e.value), str(e.value)
    import traceback   # reworded, the error keeps the reader's frames (for a bug report)
    assert any("readers" in frame.filename for frame in traceback.extract_tb(e.value.__traceback__))
    assert logic.study is None and logic.scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == 0
    # each series' nodes say which series they hold (stress and rest were both 'exam sequence')
    stress, rest = (logic.loadStudy(exam, series=n) for n in ("20", "30"))
    assert stress.sequence.GetName() == "exam #20 tfi_perf sequence" and rest.volume.GetName() == "exam #30 tfi_perf"


def test_kind_cine_is_honoured_against_clocks_the_images_do_not_back(base, tmp_path, capsys):
    """Probe 88 F1: a cine without TriggerTime whose AcquisitionTime advances a second per phase
    was read as perfusion, and the error said "if it is a cine, give --kind cine"; --kind cine
    was then refused ("contradicts the data ... drop --kind"): no way to read it. The clocks
    alone no longer overrule the user: the cine is measured, said and flagged for review."""
    import json

    from dicom_factory import _tm

    from CardiacAISegLib import cli

    def clock(ds, k, t):
        del ds.TriggerTime
        ds.AcquisitionTime, ds.SeriesDescription = _tm(36000 + 15 * k + 1.0 * t), "SA"
    folder, labels = cine_dicom(base, tmp_path / "cine", per_image=clock)
    assert cli.main(["analyze", str(folder), "--labels", str(labels), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "give --kind cine" in capsys.readouterr().err
    assert cli.main(["analyze", str(folder), "--labels", str(labels), "--kind", "cine", "--out", str(tmp_path / "b"),
                     "--quiet"]) == 0
    doc = json.loads((tmp_path / "b" / "results.json").read_text())
    plain, _ = cine_dicom(base, tmp_path / "plain")
    assert cli.main(["analyze", str(plain), "--labels", str(labels), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    truth = json.loads((tmp_path / "c" / "results.json").read_text())
    assert doc["kind"] == "cine"
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_mass_g", "rv_edv_ml"):
        assert doc["cine"][key] == pytest.approx(truth["cine"][key], rel=1e-6), key
    flags = {f["code"]: f["message"] for f in doc["qc"]["flags"]}
    assert doc["qc"]["status"] == "review" and "5 s at one slice position" in flags["KIND_AGAINST_DATA"]
    assert any("against the data" in w for w in doc["warnings"])


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_flow_series_are_named_and_a_chosen_long_axis_view_is_said(base, tmp_path, vendor):
    """Probe 88: a phase-contrast flow series (Siemens SequenceName '*fl2d1_v150in', Philips
    ImageType 'PCA', GE named 'FLOW' with magnitude and phase in one series of one ImageType)
    beside the short-axis cine was left out as "a long-axis view" or, chosen with --series,
    measured as a one-slice cine (EDV 11 mL) or called "2 acquisitions of the cardiac cycle". A
    4-chamber cine chosen with --series was measured with nothing said of its view."""
    exam = tmp_path / "exam"
    cine_dicom(base, exam, series=CINE_UID, desc="cine_retro_sax", number=20)

    def flow(ds, k, t, phase=False):
        # neutral descriptions: each vendor's own mark must tell the flow series
        number = 41 if phase else 40
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.{number}", number
        ds.ImageOrientationPatient = [0.94, 0.0, -0.342, 0.0, 1.0, 0.0]   # the ascending aorta's plane
        ds.SOPInstanceUID = f"{CINE_UID}.{number}.{t + 1}"
        if vendor == "siemens":
            # the velocity encoding is in the phase series' SequenceName only
            ds.SeriesDescription = "AorticPlane_P" if phase else "AorticPlane"
            ds.SequenceName = "*fl2d1_v150in" if phase else "*fl2d1r3"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "P" if phase else "M", "RETRO", "DIS2D"]
        elif vendor == "philips":
            ds.SeriesDescription, ds.ImageType = "AO plane", ["ORIGINAL", "PRIMARY", "M_PCA", "M", "PCA"]
        else:
            ds.SeriesDescription, ds.ImageType = "FLOW AO", ["ORIGINAL", "PRIMARY", "OTHER"]

    def four_chamber(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"{CINE_UID}.30", 30, "cine_4ch"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = f"{CINE_UID}.30.{t + 1}"
    hooks = [("flow", flow), ("lax", four_chamber)]
    if vendor == "siemens":
        hooks.append(("phase", lambda ds, k, t: flow(ds, k, t, phase=True)))
    for name, hook in hooks:
        cine_dicom(base, tmp_path / name, slices=[N_SLICES // 2], per_image=hook)
        for f in (tmp_path / name).iterdir():
            f.rename(exam / f"{name}{f.name}")
    study = load_study(exam)
    assert study.provenance["series_number"] == 20
    said = " ".join(study.provenance["warnings"])
    assert "#40" in said and "a phase-contrast flow series" in said and "#30 'cine_4ch'" in said, said
    with pytest.raises(CardiacInputError, match="is no cine or first-pass perfusion series: .*a phase-contrast flow series"):
        load_study(exam, series="40")
    if vendor == "siemens":
        assert "#41 'AorticPlane_P'" in said
        # the whole SequenceName is the mark: named once (it was repeated in brackets; probe 92)
        assert "'*fl2d1_v150in' carries a velocity encoding:" in said, said
        with pytest.raises(CardiacInputError, match="its partner #41 'AorticPlane_P' .* these are its magnitude images"):
            load_study(exam, series="40")
    chosen = load_study(exam, series="30")
    assert chosen.n_slices == 1
    assert any("the series chosen, is a long-axis view (90 degrees to the short-axis stack #20 'cine_retro_sax')" in w
               for w in chosen.provenance["warnings"]), chosen.provenance["warnings"]


def test_a_long_axis_view_chosen_beside_a_stack_stored_one_series_per_slice_is_said(base, tmp_path):
    """The long-axis note judged the view against a stack of one series; a short axis stored one
    series per slice (as Siemens exports it) had none, and the note was not given (review of
    session 42)."""
    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)

    def four_chamber(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"{CINE_UID}.30", 30, "cine_4ch"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = f"{CINE_UID}.30.{t + 1}"
    cine_dicom(base, tmp_path / "lax", slices=[N_SLICES // 2], per_image=four_chamber)
    for f in (tmp_path / "lax").iterdir():
        f.rename(exam / f"lax{f.name}")
    chosen = load_study(exam, series="30")
    assert any("the series chosen, is a long-axis view (90 degrees to the short-axis stack #20" in w
               for w in chosen.provenance["warnings"]), chosen.provenance["warnings"]


def test_an_aif_series_a_few_frames_apart_says_why(perfusion, tmp_path):
    """The AIF series' first frame some frames from the images' on the clock: proton-density
    frames left out of one series only were reported as "frames were lost from one series or
    both" (session 45's leftover); a file truly lost from the export still says so."""
    pd_only = tmp_path / "pd"
    write_perfusion_series(pd_only, perfusion, vendor="siemens", description="Perfusion_stress", pd_frames=2)
    write_aif_series(pd_only, perfusion, description="AIF_stress", number=42)
    study = load_study(pd_only)
    said = [w for w in study.provenance["warnings"] if "on the common clock" in w]
    assert study.provenance.get("aif_series_uid") and len(said) == 1, study.provenance["warnings"]
    assert "proton-density reference frames left out before the dynamics differ (2 of the images, 0 of the AIF" in said[0]
    assert "lost" not in said[0]
    # the AIF series lost its first 4 files and the images their last 4: its first frame is 2
    # intervals later, which the images' PD frames (that make it earlier) cannot explain (review)
    both = tmp_path / "both"
    _, paths = write_perfusion_series(both, perfusion, vendor="siemens", description="Perfusion_stress", pd_frames=2)
    _, aif_paths, _ = write_aif_series(both, perfusion, description="AIF_stress", number=42)
    per_slice = len(paths) // perfusion.n_slices
    for p in aif_paths[:4] + [p for n, p in enumerate(paths) if n % per_slice >= per_slice - 4]:
        Path(p).unlink()
    said = [w for w in load_study(both).provenance["warnings"] if "on the common clock" in w]
    assert len(said) == 1 and "frames were lost from one series or both" in said[0], said

    lost = tmp_path / "lost"
    _, paths = write_perfusion_series(lost, perfusion, vendor="siemens", description="Perfusion_stress")
    _, aif_paths, _ = write_aif_series(lost, perfusion, description="AIF_stress", number=42)
    for p in aif_paths[-2:]:   # as many frames in both: the images lost their first two, the AIF series its last two
        Path(p).unlink()
    first_two = [p for n, p in enumerate(paths) if n % perfusion.n_frames < 2]   # written slice by slice
    assert len({tuple(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient) for p in first_two}) == perfusion.n_slices
    for p in first_two:
        Path(p).unlink()
    study = load_study(lost)
    said = [w for w in study.provenance["warnings"] if "on the common clock" in w]
    assert study.n_frames == perfusion.n_frames - 2 and len(said) == 1, study.provenance["warnings"]
    assert "frames were lost from one series or both" in said[0]


def test_an_aif_series_read_out_every_beat_beside_images_every_other_pairs(tmp_path):
    """At a fast heart rate the images' slices are read every other beat while the dual-sequence
    AIF is read every beat: twice the frames. The folder was refused as "2 series, choose one",
    and with --series the AIF came from the LV (probe 102). Paired, the AIF is taken at the
    images' heartbeats on the common clock, and MBF equals that with an AIF series at the
    images' own rate."""
    import dataclasses

    from CardiacAISegLib.analysis import Analysis

    fine, _ = make_perfusion_phantom(seed=3, n_frames=100, noise=0.005, dt=0.6)
    every_other = dataclasses.replace(fine, images=fine.images[::2], frame_times_s=fine.frame_times_s[::2])
    segments = {}
    for name, aif_study in (("every_beat", fine), ("same_rate", every_other)):
        folder = tmp_path / name
        write_perfusion_series(folder, every_other, vendor="siemens", description="Perfusion_stress")
        write_aif_series(folder, aif_study, description="AIF_stress", number=42)
        study = load_study(folder)
        assert study.provenance.get("aif_series_uid") and study.n_frames == every_other.n_frames, name
        said = [w for w in study.provenance["warnings"] if "every heartbeat" in w]
        assert len(said) == (name == "every_beat"), study.provenance["warnings"]
        segments[name] = [s["mbf_ml_min_g"] for s in Analysis(study, every_other.labels).run().perfusion["segments"]]
    np.testing.assert_allclose(segments["every_beat"], segments["same_rate"], rtol=0.02)


# a double-oblique short-axis orientation as a scanner writes it (6 decimals): its cosines are not
# the 3-decimal key the reader groups orientations by, so a geometry taken from that key shows
_SAX_ROW = np.array([0.719884, 0.495051, 0.48651])
_SAX_COL = np.array([-0.562435, 0.826792, -0.009078])
# a matrix and pixel that are not square: Rows and Columns, or the two PixelSpacing values, taken
# for each other show
_CROPPED_COLUMNS = slice(6, SIZE - 6)            # 64 rows x 52 columns
_PIXEL_SPACING = (PIXEL_MM, 1.25)                # between rows (along the column direction), between columns


def _oblique_non_square(ds, base, k, t):
    """``ds`` the phantom's image (slice k, frame t) on a double-oblique stack of 64 x 52 pixels
    of 1.6 x 1.25 mm, slice k at SLICE_MM * k along the normal."""
    row, col = _SAX_ROW / np.linalg.norm(_SAX_ROW), _SAX_COL / np.linalg.norm(_SAX_COL)
    ds.ImageOrientationPatient = [float(v) for v in np.r_[_SAX_ROW, _SAX_COL]]
    ds.ImagePositionPatient = [round(float(v), 8) for v in SLICE_MM * k * np.cross(row, col)]
    pixels = np.rint(base.cine_images[t, k][:, _CROPPED_COLUMNS] * 1000).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = list(_PIXEL_SPACING)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _cropped_edv_truth(base):
    """The phantom's ED LV voxels within the cropped columns (all of them) x the voxel volume."""
    ed = base.cine_labels[base_ed(base)]
    assert (ed[..., _CROPPED_COLUMNS] == 1).sum() == (ed == 1).sum(), "the crop cuts the LV"
    return float((ed == 1).sum()) * _PIXEL_SPACING[0] * _PIXEL_SPACING[1] * SLICE_MM / 1000.0


def _assert_same_grid(study, plain):
    """The voxel axes of ``study`` are the untouched stack's, and its origin within 0.1 µm (the
    turned image's corner is written with its 6-decimal cosines, which the reader normalises)."""
    np.testing.assert_allclose(study.ijk_to_ras[:3, :3], plain.ijk_to_ras[:3, :3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(study.ijk_to_ras[:3, 3], plain.ijk_to_ras[:3, 3], rtol=0, atol=1e-4)


def _stored_turned(ds, how, tilt_deg=0.0):
    """``ds`` stored with its image axes turned in its own plane, its pixels and position with
    them: the same images, at the same place in the patient. ``how``: "rotated_180" (both
    directions reversed, the position at the opposite corner), "mirrored" (the row direction
    reversed: the normal flips), "mirrored_columns" (the column direction reversed),
    "rotated_90" (row and column directions exchanged, one reversed). ``tilt_deg``: the plane
    first tilted about its row direction through its first pixel (a re-planned slice), the
    pixels as they were."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    if tilt_deg:
        angle = np.radians(tilt_deg)
        col = np.round(col * np.cos(angle) + np.cross(row, col) * np.sin(angle), 8)
        iop = np.r_[row, col]
    ps = [float(v) for v in ds.PixelSpacing]
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    across, down = row * ps[1] * (ds.Columns - 1), col * ps[0] * (ds.Rows - 1)
    pixels = ds.pixel_array
    ipp, iop, pixels = {"rotated_180": (ipp + across + down, -iop, pixels[::-1, ::-1]),
                        "mirrored": (ipp + across, np.r_[-row, col], pixels[:, ::-1]),
                        "mirrored_columns": (ipp + down, np.r_[row, -col], pixels[::-1, :]),
                        "rotated_90": (ipp + across, np.r_[col, -row], np.rot90(pixels))}[how]
    ds.Rows, ds.Columns = pixels.shape
    ds.ImagePositionPatient = [round(float(v), 8) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


_SAID_TURNED = {"rotated_180": "stored rotated 180° within the stack's plane",
                "mirrored": "stored mirrored within the stack's plane (its row direction reversed)",
                "mirrored_columns": "stored mirrored within the stack's plane (its column direction reversed)"}


@pytest.mark.parametrize("how, series_per_slice", [("rotated_180", False), ("mirrored", False), ("mirrored_columns", False),
                                                   ("rotated_90", False), ("rotated_180", True)])
def test_a_slice_stored_turned_in_its_own_plane(base, tmp_path, how, series_per_slice):
    """Probe 101: one cine slice stored rotated 180 degrees in its own plane (both orientation
    vectors negated, its position at the opposite corner, its pixels turned with them: the same
    plane, the same normal) was left out as "in other orientations than its stack (localisers or
    long-axis views)", and a slice gap reported. It is the stack's own pixel grid read backwards,
    as is a mirrored one: put back onto the grid exactly, kept, and said. A slice turned by 90
    degrees is not on the grid (rows for columns): still left out, but said as what it is. In a
    stack stored one series per slice, the turned slice's series was left out of the stack
    without a word (a slice gap only).

    The slice turned is the first (IM0001, at the stack's origin): the stack's orientation and
    origin come from it. The stack is double-oblique, its matrix (64 x 52) and pixels (1.6 x
    1.25 mm) not square. A square phantom turned in its middle slice passed with Rows/Columns and
    the PixelSpacing values exchanged in moving its position to the stack's corner, and the
    orientation taken from the reader's 3-decimal key put such a stack's spacing 0.03 % off
    (1.4995 for 1.5 mm on Sunnybrook; review of session 47)."""
    from CardiacAISegLib.analysis import Analysis

    turned = 0

    def stored(ds, k, t, turn):
        _oblique_non_square(ds, base, k, t)
        if series_per_slice:
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = f"{CINE_UID}.{k + 1}", 20 + k, t + 1
        if turn and k == turned:
            _stored_turned(ds, how)
    plain = load_study(cine_dicom(base, tmp_path / "plain", per_image=lambda ds, k, t: stored(ds, k, t, False))[0])
    folder, _ = cine_dicom(base, tmp_path / how, per_image=lambda ds, k, t: stored(ds, k, t, True))
    study = load_study(folder)
    warnings = study.provenance["warnings"]
    assert not any("localisers" in w for w in warnings), warnings
    if how == "rotated_90":
        assert study.n_slices == N_SLICES - 1
        assert any(f"{N_FRAMES} image(s) of series" in w and "in the stack's plane, rotated in-plane by 90°" in w
                   and "left out" in w for w in warnings), warnings
        return
    assert any(f"{N_FRAMES} image(s) of {'the stack' if series_per_slice else 'series'}" in w and _SAID_TURNED[how] in w
               and "put back onto it" in w for w in warnings), warnings
    assert not any("slice gap" in w or "tilted" in w for w in warnings), warnings
    np.testing.assert_array_equal(study.images, plain.images)
    _assert_same_grid(study, plain)
    # the volumes are the phantom's: its ED mask's voxels x the voxel volume, every slice counted
    cine = Analysis(study, {t: base.cine_labels[t][..., _CROPPED_COLUMNS] for t in range(N_FRAMES)}).run().cine
    assert cine["lv_edv_ml"] == pytest.approx(_cropped_edv_truth(base), rel=1e-6)
    # contours drawn on a turned image as stored are turned with its pixels (numbers restarting
    # in every slice series place none anyway)
    if not series_per_slice:
        flips = {"rotated_180": (True, True), "mirrored": (False, True), "mirrored_columns": (True, False)}[how]
        assert study.provenance["reversed_instances"] == {n: flips for n in range(1, N_FRAMES + 1)}
        assert all(study.provenance["instance_map"][n][1] == turned for n in range(1, N_FRAMES + 1))


@pytest.mark.parametrize("how, series_per_slice", [("rotated_180", False), ("mirrored", False), ("rotated_180", True)])
def test_a_slice_stored_turned_and_tilted_a_degree_is_read_with_the_stack(base, tmp_path, how, series_per_slice):
    """Review of session 47: a re-planned slice comes out reversed and tilted a degree. Reversal
    was accepted only to float noise (0.1°), a tilt to 10°: the slice was left out, said as
    "rotated in-plane by 180° against it (not the stack's pixel grid)" three lines after that
    turn had been called the stack's own grid; stored one series per slice, its series was not
    joined to the stack, and the slice went with only a slice gap said. Put back onto the grid
    and read as parallel, as a slice only tilted is, its tilt said as that one's."""
    from CardiacAISegLib.analysis import Analysis

    turned = N_SLICES // 2

    def stored(ds, k, t, turn):
        _oblique_non_square(ds, base, k, t)
        if series_per_slice:
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = f"{CINE_UID}.{k + 1}", 20 + k, t + 1
        if turn and k == turned:
            _stored_turned(ds, how, tilt_deg=1.0)
    plain = load_study(cine_dicom(base, tmp_path / "plain", per_image=lambda ds, k, t: stored(ds, k, t, False))[0])
    folder, _ = cine_dicom(base, tmp_path / how, per_image=lambda ds, k, t: stored(ds, k, t, True))
    study = load_study(folder)
    warnings = study.provenance["warnings"]
    of = "the stack" if series_per_slice else "series"
    assert any(f"{N_FRAMES} image(s) of {of}" in w and _SAID_TURNED[how] in w and "put back onto it" in w
               for w in warnings), warnings
    assert any(f"{N_FRAMES} image(s) of {of}" in w and "tilted up to 1.0° against the rest of the stack" in w
               and "read as parallel to it" in w for w in warnings), warnings
    assert not any("left out" in w or "slice gap" in w or "localisers" in w for w in warnings), warnings
    assert study.n_slices == N_SLICES
    # tilted about its first pixel on the stack's grid, the slice lies where the untouched one does
    np.testing.assert_array_equal(study.images, plain.images)
    _assert_same_grid(study, plain)
    cine = Analysis(study, {t: base.cine_labels[t][..., _CROPPED_COLUMNS] for t in range(N_FRAMES)}).run().cine
    assert cine["lv_edv_ml"] == pytest.approx(_cropped_edv_truth(base), rel=1e-6)


@pytest.mark.parametrize("how", ["rotated_180", "mirrored"])
def test_contours_drawn_on_a_slice_stored_turned_are_turned_with_it(shared_data, tmp_path, how):
    """Review of session 47: a Sunnybrook contour drawn on an image stored rotated 180° or
    mirrored was refused, "refers to InstanceNumber 128, which is not in the DICOM series",
    though the image is read (put back onto the stack's grid), and the whole contour analysis
    with it. Drawn on the images as stored (their x / y turned with the pixels), the contours
    give the labels and the numbers of the study stored untouched."""
    import shutil

    from CardiacAISegLib.analysis import Analysis

    source, contours = shared_data / "sunnybrook" / "SC-HF-I-1_dicom", shared_data / "sunnybrook" / "SC-HF-I-1_contours"
    plain = load_study(source, labels=contours)
    expected = Analysis(plain, plain.labels).run().cine
    one_slice = range(121, 141)   # the InstanceNumbers of the mid slice: contours 128 and 139 are drawn on it
    folder, drawn = tmp_path / "dicom", tmp_path / "contours"
    folder.mkdir()
    for f in source.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        if int(ds.InstanceNumber) in one_slice:
            _stored_turned(ds, how)
        ds.save_as(folder / f.name)
    shutil.copytree(contours, drawn)
    on_the_slice = [c for c in drawn.rglob("*contour-manual.txt") if int(c.name.split("-")[2]) in one_slice]
    assert len(on_the_slice) == 3   # 128 (endocardium), 139 (endo- and epicardium)
    for c in on_the_slice:
        points = np.loadtxt(c, ndmin=2)
        points[:, 0] = (int(ds.Columns) - 1) - points[:, 0]          # x: the row direction is reversed either way
        if how == "rotated_180":
            points[:, 1] = (int(ds.Rows) - 1) - points[:, 1]
        np.savetxt(c, points, fmt="%.2f")
    study = load_study(folder, labels=drawn)
    assert sorted(study.labels) == sorted(plain.labels)
    for t in plain.labels:
        np.testing.assert_array_equal(study.labels[t], plain.labels[t])
    cine = Analysis(study, study.labels).run().cine
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "lv_mass_g"):
        assert cine[key] == pytest.approx(expected[key], rel=1e-9), key


def _screen_save(path, series, number, desc):
    """A grey Secondary Capture object of the cine's matrix with no geometry (a scanner's or
    workstation's report or screen save), filed in ``series``."""
    from dicom_factory import new_dataset
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = new_dataset(SecondaryCaptureImageStorage, series, number, desc)
    ds.Modality, ds.InstanceNumber = "MR", 998
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.full((SIZE, SIZE), 300, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_a_screen_save_filed_in_the_cines_own_series_is_left_out(base, tmp_path):
    """Probe 104: a Secondary Capture object (no position, orientation or pixel size) carrying the
    cine's own SeriesInstanceUID refused the whole study for its "missing DICOM tag PixelSpacing";
    in a series of its own it was left out as a screen save. It is left out here too, and said.
    Named to sort first, it is no longer the image the series is judged by (a screen save first
    made the whole cine one, left out beside the LGE). An MR image of the series without its
    PixelSpacing or position is a damaged image of the stack: still refused, naming file and tag."""
    exam = tmp_path / "exam"
    cine_dicom(base, exam, series=CINE_UID, desc="cine_retro_sax", number=20)
    plain = load_study(exam)
    _per_slice_lge(exam)
    _screen_save(exam / "IM0000.dcm", CINE_UID, 20, "cine_retro_sax")
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES) and study.provenance["series_description"] == "cine_retro_sax"
    np.testing.assert_array_equal(study.images, plain.images)
    np.testing.assert_allclose(study.ijk_to_ras, plain.ijk_to_ras, atol=1e-6)
    assert any(w.startswith(f"1 screen save(s) filed in series {CINE_UID} (Secondary Capture Image Storage, no position "
                            "in the patient") and "left out: IM0000.dcm" in w for w in study.provenance["warnings"]), \
        study.provenance["warnings"]
    (exam / "IM0000.dcm").unlink()
    for tag in ("PixelSpacing", "ImagePositionPatient"):
        damaged = exam / "IM0000.dcm"
        write_dicom(damaged, series=CINE_UID, number=20, desc="cine_retro_sax", ipp=(0.0, 0.0, 0.0), trigger=0.0, instance=999,
                    shape=(SIZE, SIZE), spacing=(PIXEL_MM, PIXEL_MM), drop=(tag,))
        with pytest.raises(CardiacInputError, match=f"missing DICOM tag {tag}, needed for the image geometry") as error:
            load_study(exam)
        assert error.value.path == str(damaged)


@pytest.mark.parametrize("copy", ["same_images", "beside_per_slice_lge", "other_pixels", "other_pixels_but_the_first",
                                  "last_slice_elsewhere"])
def test_a_composed_copy_of_a_stack_stored_per_slice_is_left_out(base, tmp_path, copy):
    """Probe 104: a cine stored one series per slice (#20-#27) beside a workstation's "composed"
    copy of the whole stack (#99, DERIVED\\SECONDARY, the same images under new UIDs) was refused
    as "9 image series ... choose one", whose first suggestion read one slice: a derived series
    was compared with one original series at a time. The per-slice series are read as the stack
    (the phantom's volume), and the copy said to be left out; so too beside an LGE stored per
    slice at the cine's positions (review 2: the LGE was taken for part of the copy, and the
    folder refused again). A derived series that is no copy (other pixels: filtered, or
    registered keeping its first frame, review 2: called "the same images and pixels" and left
    out; or a slice at another position) is refused as before."""
    from bad_corpus import base_ed

    from CardiacAISegLib.analysis import Analysis

    exam = tmp_path / "exam"
    _per_slice_cine(base, exam)
    if copy == "beside_per_slice_lge":
        _per_slice_lge(exam)

    def composed(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.99", 99
        ds.SeriesDescription, ds.InstanceNumber = "cine_retro_sax_COMPOSED", k * N_FRAMES + t + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "M", "NORM"]
        if copy == "other_pixels" or (copy == "other_pixels_but_the_first" and t > 0):
            ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) // 2).tobytes()
        elif copy == "last_slice_elsewhere" and k == N_SLICES - 1:
            ds.ImagePositionPatient = [0.0, 0.0, SLICE_MM * N_SLICES]
    cine_dicom(base, tmp_path / "composed", per_image=composed)
    for f in (tmp_path / "composed").iterdir():
        f.rename(exam / f"C{f.name}")
    numbers = "/".join(f"#{20 + k}" for k in range(N_SLICES))
    if copy.startswith("other_pixels"):
        with pytest.raises(CardiacInputError, match=f"{N_SLICES + 1} image series in this folder, choose one with --series"):
            load_study(exam)
        return
    if copy == "last_slice_elsewhere":
        with pytest.raises(CardiacInputError, match=f"most slice positions of {numbers}/#99 were acquired in two or more"):
            load_study(exam)
        return
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES)
    assert len(study.provenance["series_uid"].split("+")) == N_SLICES and f"{CINE_UID}.99" not in study.provenance["series_uid"]
    assert any(w.startswith("series #99 'cine_retro_sax_COMPOSED'") and f"derived copy of the stack stored one series per "
               f"slice as {numbers} ({N_SLICES} series" in w and f"give --series {CINE_UID}.99 to read the copy" in w
               for w in study.provenance["warnings"]), study.provenance["warnings"]
    # the volume is the phantom's: its ED mask's voxels x the voxel volume, every slice counted
    cine = Analysis(study, {t: base.cine_labels[t] for t in range(N_FRAMES)}).run().cine
    truth = float((base.cine_labels[base_ed(base)] == 1).sum()) * PIXEL_MM * PIXEL_MM * SLICE_MM / 1000.0
    assert cine["lv_edv_ml"] == pytest.approx(truth, rel=1e-6)
    # the copy is still read when asked for
    assert load_study(exam, series="99").images.shape[:2] == (N_FRAMES, N_SLICES)


def test_a_cine_slice_reacquired_off_its_position_is_named_not_called_a_perfusion_pair(base, tmp_path):
    """Probe 104: a cine stack (#300) with one slice acquired again 2 mm further along the normal in
    a series of its own (#301): both are read, as slices of one stack, but the note said "#300/#301,
    one slice each and acquired in the same heartbeats, are read as one stack of 2 slices ... a
    perfusion exam usually has 3-4" (it is added whenever two series are merged). The note now
    names the retake and the series it lies beside; the slices are the stack's and the retake's."""
    from dicom_factory import _tm

    exam = tmp_path / "exam"
    retaken = N_SLICES // 2

    def stack(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = CINE_UID, 300, "SAX CINE"
        ds.AcquisitionTime = _tm(36000.0 + 15.0 * k)
    cine_dicom(base, exam, per_image=stack)
    plain = load_study(exam)

    def again(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = f"{CINE_UID}.2", 301, "SAX CINE"
        ds.ImagePositionPatient = [0.0, 0.0, SLICE_MM * k + 2.0]
        ds.AcquisitionTime, ds.InstanceNumber = _tm(36900.0), 500 + t
    cine_dicom(base, tmp_path / "again", slices=[retaken], per_image=again)
    for f in (tmp_path / "again").iterdir():
        f.rename(exam / f"R{f.name}")
    study = load_study(exam)
    warnings = study.provenance["warnings"]
    assert study.images.shape[:2] == (N_FRAMES, N_SLICES + 1)
    assert study.provenance["slice_positions_mm"][retaken + 1] - study.provenance["slice_positions_mm"][retaken] \
        == pytest.approx(2.0)
    np.testing.assert_array_equal(np.delete(study.images, retaken + 1, axis=1), plain.images)
    assert not any("AHA levels" in w or "perfusion" in w for w in warnings), warnings
    assert "#301 lies 2.0 mm from a slice of #300: a re-acquired slice? Both are read as slices of the stack" in warnings


@pytest.mark.parametrize("positions", [(0.0, 8.0, 40.0), (0.0, 10.0, 32.0, 54.0)])
def test_slices_planned_unevenly_one_series_per_slice_are_not_called_retakes(base, tmp_path, positions):
    """Review 2: a slice nearer than half the stack's median spacing to another series' slice was
    called "a re-acquired slice?", so a perfusion or cine stack stored one series per slice and
    planned unevenly (3 slices at 0, 8 and 40 mm; 4 at 0, 10, 32 and 54 mm, thickness 8 mm) was
    said to hold a retake. A retake overlaps its original (nearer than the thickness) and lies
    well within the other slices' spacing; these slices are read, at their positions, unnamed."""
    exam = tmp_path / "exam"

    def per_slice(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{CINE_UID}.{k + 1}", 20 + k
        ds.SeriesDescription, ds.InstanceNumber = "SA_PERF", t + 1
        ds.ImagePositionPatient = [0.0, 0.0, positions[k]]
    cine_dicom(base, exam, per_image=per_slice, slices=list(range(len(positions))))
    study = load_study(exam)
    assert study.images.shape[:2] == (N_FRAMES, len(positions))
    np.testing.assert_allclose(np.asarray(study.provenance["slice_positions_mm"]) - study.provenance["slice_positions_mm"][0],
                               positions)
    assert not any("re-acquired slice?" in w for w in study.provenance["warnings"]), study.provenance["warnings"]
