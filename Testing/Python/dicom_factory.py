"""Small synthetic MR DICOM files (single-frame as each vendor writes them, and Enhanced MR
multi-frame) for reader and bad-input tests."""
import numpy as np


def new_dataset(sop_class, series, number, desc):
    """An empty little-endian dataset of ``sop_class`` with a fresh SOP instance UID, in ``series``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, number, desc
    return ds


def write_dicom(path, series="1.2.826.0.1.1", number=1, desc="cine", ipp=(0, 0, 0), iop=(1, 0, 0, 0, 1, 0),
                trigger=0.0, instance=1, acq_time=None, drop=(), value=0, shape=(4, 5), spacing=(1.5, 1.25),
                rescale=None):
    """One image filled with ``value``; ``drop`` removes tags to make it broken on purpose."""
    from pydicom.uid import MRImageStorage

    ds = new_dataset(MRImageStorage, series, number, desc)
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing, ds.ImageOrientationPatient, ds.ImagePositionPatient = list(spacing), list(iop), list(ipp)
    ds.TriggerTime, ds.InstanceNumber = trigger, instance
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if acq_time:
        ds.AcquisitionTime = acq_time
    for tag in drop:
        delattr(ds, tag)
    ds.PixelData = np.full(shape, value, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_perfusion_series(folder, study, vendor="ge", series_per_slice=False, scale=400.0, baseline=100.0,
                           heartbeat_jitter_s=0.0, seed=0, description=None, series="1.2.826.0.1.3680043.10.7",
                           start_number=1, pd_frames=0, pd_factor=5.0, start_s=36000.0, patient=None, pd_at_end=False):
    """A perfusion ``study`` (T, S, R, C) written as classic MR DICOM the way each vendor times it.

    - ``ge``: TriggerTime rises with the time since the first dynamic (0.77 s ... 55 s), every
      image has the same AcquisitionTime (the series start);
    - ``siemens``: TriggerTime constant (155 ms after the R wave), AcquisitionTime advances one
      heartbeat per dynamic, SequenceName ``*tfiperf2d1``;
    - ``philips``: no TriggerTime, ContentTime advances per dynamic.
    Signal = baseline + scale * Gd (a linear scanner), stored as uint16 with a rescale of 1.
    ``heartbeat_jitter_s`` makes the intervals irregular (arrhythmia); the times actually
    written are returned, (T,) seconds from the first dynamic, with the written file paths.
    ``pd_frames``: proton-density reference images first, as dual-sequence protocols write them
    (Kellman; Xue et al. 2020): no saturation pulse and a low flip angle, so every tissue is
    ``pd_factor`` times its pre-contrast signal; FlipAngle 5 against the dynamics' own.
    ``pd_at_end``: the PD images written after the dynamics instead (some protocols acquire them last).
    The returned times are those of the dynamics only, from the first dynamic. ``start_s``: the
    first image's time of day (s; rest is acquired some 10-20 minutes after stress). ``patient``:
    patient and study tags every image carries ({"PatientID": ..., "StudyDate": ...}).
    """
    from pathlib import Path

    from pydicom.uid import MRImageStorage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_dyn, n_s, rows, cols = study.images.shape
    n_t = n_dyn + pd_frames
    dt = float(np.median(np.diff(study.frame_times_s)))
    steps = dt + rng.uniform(-heartbeat_jitter_s, heartbeat_jitter_s, n_t - 1) if heartbeat_jitter_s else np.full(n_t - 1, dt)
    times = np.r_[0.0, np.cumsum(steps)]
    flip = {"ge": 20.0, "siemens": 50.0, "philips": 20.0}[vendor]
    m = study.ijk_to_ras
    lps = np.diag([-1.0, -1.0, 1.0])
    row_dir = lps @ m[:3, 0] / np.linalg.norm(m[:3, 0])
    col_dir = lps @ m[:3, 1] / np.linalg.norm(m[:3, 1])
    spacing = (float(np.linalg.norm(m[:3, 1])), float(np.linalg.norm(m[:3, 0])))   # row, column spacing
    desc = description or {"ge": "First Pass", "siemens": "Perfusion_stress", "philips": "PERF SA"}[vendor]
    paths = []
    instance = 0
    for k in range(n_s):
        ipp = lps @ (m[:3, 3] + k * m[:3, 2])
        uid = f"{series}.{k + 1}" if series_per_slice else series
        for t in range(n_t):
            instance += 1
            ds = new_dataset(MRImageStorage, uid, start_number + (k if series_per_slice else 0), desc)
            ds.Modality, ds.Manufacturer = "MR", {"ge": "GE MEDICAL SYSTEMS", "siemens": "SIEMENS", "philips": "Philips"}[vendor]
            ds.Rows, ds.Columns = rows, cols
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelSpacing = [round(spacing[0], 6), round(spacing[1], 6)]
            ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
            ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
            ds.SliceThickness = 8.0
            ds.InstanceNumber = instance
            is_pd = t >= n_dyn if pd_at_end else t < pd_frames
            ds.FlipAngle = 5.0 if is_pd else flip
            for tag, value in (patient or {}).items():
                setattr(ds, tag, value)
            # slices of one dynamic are read out ~100 ms apart within the heartbeat
            clock = start_s + times[t] + 0.1 * k
            if vendor == "ge":
                ds.TriggerTime = round(770.0 + 1000.0 * times[t], 1)
                ds.AcquisitionTime = "100000.000000"
            elif vendor == "siemens":
                ds.TriggerTime = 155.0
                ds.SequenceName = "*tfiperf2d1"
                ds.AcquisitionTime = _tm(clock)
            else:
                ds.ContentTime = _tm(clock)
            if is_pd:
                value = pd_factor * (baseline + scale * np.maximum(study.images[0, k], 0))
            else:
                value = baseline + scale * np.maximum(study.images[t - (0 if pd_at_end else pd_frames), k], 0)
            ds.PixelData = np.clip(np.rint(value), 0, 65535).astype(np.uint16).tobytes()
            # named by the series number too: stress and rest written one series per slice into
            # one folder share the UID tails .1, .2, ... and would overwrite each other
            path = folder / f"{start_number}_{uid.rsplit('.', 1)[-1]}_IM{instance:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    if pd_at_end:
        return times[:n_dyn], paths
    return times[pd_frames:] - times[pd_frames], paths


def _tm(seconds):
    h, rem = divmod(seconds, 3600)
    mi, s = divmod(rem, 60)
    return f"{int(h):02d}{int(mi):02d}{s:09.6f}"


def write_aif_series(folder, study, series="1.2.826.0.1.3680043.10.8", description="AIF_perfusion", number=2,
                     vendor="siemens", pd_frames=0, start_s=36000.0):
    """The dual-sequence AIF series beside a perfusion ``study`` (Kellman; Xue et al. 2020): the
    mid slice read out at half the matrix (twice the pixel size), one slice further along the
    normal, in its own series, with its own signal scale (the AIF read-out saturates less).
    Returns (times, paths, the (T, rows, cols) half-matrix images written)."""
    from CardiacAISegLib.study import Study

    mid = study.images[:, study.n_slices // 2]
    low = mid.reshape(mid.shape[0], mid.shape[1] // 2, 2, mid.shape[2] // 2, 2).mean(axis=(2, 4))
    m = study.ijk_to_ras.copy()
    m[:3, :2] *= 2
    m[:3, 3] += study.ijk_to_ras[:3, 2]
    aif_study = Study(images=low[:, None], ijk_to_ras=m, kind="perfusion", frame_times_s=study.frame_times_s)
    times, paths = write_perfusion_series(folder, aif_study, vendor=vendor, series=series, description=description,
                                          start_number=number, scale=900.0, baseline=40.0, pd_frames=pd_frames,
                                          start_s=start_s)
    return times, paths, low


# What PACS exports and archives store: lossless compression of the same pixels.
COMPRESSED_SYNTAXES = ("JPEGLosslessProcess14_1", "JPEGLSLossless", "JPEG2000Lossless", "RLELossless")


def compress_files(paths, syntax="JPEGLosslessProcess14_1"):
    """Rewrite DICOM files in place with their pixel data losslessly compressed (GDCM transcodes,
    as PACS and export tools do; ``syntax`` names a gdcm.TransferSyntax). Classic images only:
    gdcm's ImageWriter rewrites an enhanced file's per-frame positions onto a 1 mm grid with
    1 mm pixels (probe 88), so an enhanced file is refused here rather than silently changed."""
    import gdcm
    import pydicom

    for path in paths:
        if "PerFrameFunctionalGroupsSequence" in pydicom.dcmread(path, stop_before_pixels=True):
            raise ValueError(f"{path}: compress_files rewrites an enhanced file's geometry; compress it with pydicom")

    for path in paths:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        if not reader.Read():
            raise RuntimeError(f"gdcm cannot read {path}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"gdcm cannot compress {path} as {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"gdcm cannot write {path}")


# --- Enhanced (multi-frame) MR DICOM ------------------------------------------------------
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_FG = ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
       "CardiacSynchronizationSequence", "FrameContentSequence", "PixelValueTransformationSequence",
       "MRTimingAndRelatedParametersSequence", "RealWorldValueMappingSequence",
       "UnassignedPerFrameConvertedAttributesSequence")
LEGACY_CONVERTED_MR = "1.2.840.10008.5.1.4.1.1.4.4"


def write_enhanced_dicom(path, frames, shared=(), series="1.2.826.0.1.3680043.9.77", number=1, desc="enhanced cine",
                         instance=1, sop_class=ENHANCED_MR, dimensions=()):
    """Write one Enhanced MR Image file. `frames`: dicts with 'pixels' (2D) and any of ipp, iop,
    ps, thickness, trigger_ms, acq_dt, ref_dt, tpi, slope, intercept, flip (degrees, in the MR timing group,
    where Siemens XA writes it), rwv_slope, rwv_intercept (Philips' real-world value mapping),
    drop (groups left out of that frame); div (the frame's DimensionIndexValues, one per tag of
    `dimensions`: the DimensionIndexPointer of each, e.g. 0x00209057 InStackPositionNumber,
    0x00209128 TemporalPositionIndex); legacy_trigger_ms, legacy_acq_time (a Legacy Converted
    file's per-frame copies of the source images' TriggerTime / AcquisitionTime: pass
    sop_class=LEGACY_CONVERTED_MR).
    The functional groups named in `shared` go, from frames[0], into SharedFunctionalGroupsSequence."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def functional_groups(fr, names):
        content = {"PlanePositionSequence": {"ImagePositionPatient": fr.get("ipp")},
                   "PlaneOrientationSequence": {"ImageOrientationPatient": fr.get("iop")},
                   "PixelMeasuresSequence": {"PixelSpacing": fr.get("ps"), "SliceThickness": fr.get("thickness")},
                   "CardiacSynchronizationSequence": {"NominalCardiacTriggerDelayTime": fr.get("trigger_ms")},
                   "FrameContentSequence": {"FrameAcquisitionDateTime": fr.get("acq_dt"),
                                            "FrameReferenceDateTime": fr.get("ref_dt"), "TemporalPositionIndex": fr.get("tpi"),
                                            "DimensionIndexValues": fr.get("div")},
                   "PixelValueTransformationSequence": {"RescaleSlope": fr.get("slope"), "RescaleIntercept": fr.get("intercept")},
                   "MRTimingAndRelatedParametersSequence": {"FlipAngle": fr.get("flip")},
                   "RealWorldValueMappingSequence": {"RealWorldValueSlope": fr.get("rwv_slope"),
                                                     "RealWorldValueIntercept": fr.get("rwv_intercept")},
                   "UnassignedPerFrameConvertedAttributesSequence": {"TriggerTime": fr.get("legacy_trigger_ms"),
                                                                     "AcquisitionTime": fr.get("legacy_acq_time")}}
        g = Dataset()
        for name in names:
            attrs = {k: v for k, v in content[name].items() if v is not None}
            if attrs and name not in fr.get("drop", ()):
                item = Dataset()
                for k, v in attrs.items():
                    setattr(item, k, v)
                setattr(g, name, Sequence([item]))
        return g

    pixels = np.stack([fr["pixels"] for fr in frames])
    ds = new_dataset(sop_class, series, number, desc)
    ds.Manufacturer, ds.InstanceNumber = "Philips", instance
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = len(frames), pixels.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if dimensions:
        ds.DimensionOrganizationSequence = Sequence([Dataset()])
        ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = series + ".1"
        items = []
        for pointer in dimensions:
            item = Dataset()
            item.DimensionOrganizationUID, item.DimensionIndexPointer = series + ".1", pointer
            item.FunctionalGroupPointer = 0x00209111   # FrameContentSequence
            items.append(item)
        ds.DimensionIndexSequence = Sequence(items)
    ds.SharedFunctionalGroupsSequence = Sequence([functional_groups(frames[0], shared)])
    ds.PerFrameFunctionalGroupsSequence = Sequence([functional_groups(fr, [n for n in _FG if n not in shared]) for fr in frames])
    ds.PixelData = pixels.astype(np.int16 if ds.PixelRepresentation else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_perfusion_per_dynamic(folder, study, scale=400.0, baseline=100.0, trigger_ms=150.0,
                                         series="1.2.826.0.1.3680043.10.50", description="Perfusion_stress",
                                         frame_datetime=None, temporal_index=None, names=None):
    """A perfusion ``study`` (T, S, R, C) as Siemens XA exports it: one Enhanced MR file per
    dynamic, its S frames the slices, InstanceNumber numbering the dynamics (1..T). Signal =
    baseline + scale * Gd, as write_perfusion_series. ``frame_datetime(t, k)``: each frame's
    FrameAcquisitionDateTime (default: 10:00:00 plus the study's frame time plus 0.1 s a slice);
    ``temporal_index(t, k)``: its TemporalPositionIndex (default none); ``names``: the T file
    names (default dyn000.dcm ...). Returns the written paths, in dynamic order."""
    from pathlib import Path

    import pydicom

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = study.ijk_to_ras
    lps = np.diag([-1.0, -1.0, 1.0])
    row_dir = lps @ m[:3, 0] / np.linalg.norm(m[:3, 0])
    col_dir = lps @ m[:3, 1] / np.linalg.norm(m[:3, 1])
    spacing = [round(float(np.linalg.norm(m[:3, 1])), 6), round(float(np.linalg.norm(m[:3, 0])), 6)]
    iop = [round(float(v), 6) for v in (*row_dir, *col_dir)]
    if frame_datetime is None:
        def frame_datetime(t, k):
            return "20240101" + _tm(36000.0 + float(study.frame_times_s[t]) + 0.1 * k)
    paths = []
    for t in range(study.n_frames):
        frames = []
        for k in range(study.n_slices):
            value = baseline + scale * np.maximum(study.images[t, k], 0)
            frames.append(dict(pixels=np.clip(np.rint(value), 0, 65535).astype(np.uint16),
                               ipp=[round(float(v), 4) for v in lps @ (m[:3, 3] + k * m[:3, 2])], iop=iop, ps=spacing,
                               thickness=8.0, trigger_ms=trigger_ms, acq_dt=frame_datetime(t, k), flip=20.0,
                               tpi=None if temporal_index is None else temporal_index(t, k)))
        path = folder / (names[t] if names is not None else f"dyn{t:03d}.dcm")
        write_enhanced_dicom(path, frames, shared=("PixelMeasuresSequence", "PlaneOrientationSequence"), series=series,
                             desc=description, instance=t + 1)
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.Modality = "SIEMENS", "MR"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
