"""First-pass perfusion series: Analyze 7.5 / NIfTI / DICOM / QPerf folders, plus the AIF.

Analyze and 3D NIfTI perfusion files are one slice over time, ``[RO, E1, frames]``; 4D NIfTI is
``(x, y, slices, frames)``. The frame interval comes from the caller, DICOM times, the NIfTI
header or a QPerf ``params.json`` - never guessed.
"""
import json
import re
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..study import PERFUSION, Study
from .nifti import load_nifti, nifti_to_kji
from .geometry_check import refuse_swapped_axes
from .pd_frames import (MIN_DYNAMICS, drop_blank_frames, drop_leading_pd_frames, drop_trailing_pd_frames, remove_frames,
                        undo_rescaled_frames)
from .volume import (MAX_FRAME_INTERVAL_S, MIN_FRAME_INTERVAL_S, PLACEHOLDER_TIME_REASON, frame_files, load_frame_folder,
                     load_volume, read_nifti, volume_suffix)

QPERF_PARAMS = "params.json"
MAX_STEP_FACTOR = 4.0   # a frame interval this many times the median is no heartbeat: a wrong time
MAX_BASELINE_PAUSE_S = 30.0   # a pause before the bolus longer than this is no pause within one breath-hold
# A frame interval this many times the typical one is a beat the acquisition skipped (or a
# dynamic that was lost): said when --dt evens it out, flagged by QC on the AIF's first pass.
FRAME_GAP_FACTOR = 1.5
# Frame times whose intervals stray this far from their median are irregular heartbeats: said,
# and the fit resamples on them (perfusion.mbf.fit_interval)
UNEVEN_FRAME_TIMES = 0.1


def steps_uneven(steps, typical=None):
    """True where a series' steps between frames stray over UNEVEN_FRAME_TIMES of the typical
    step (its median unless given): irregular heartbeats, which an even grid misreads."""
    steps = np.asarray(steps, float)
    typical = float(np.median(steps)) if typical is None else float(typical)
    return typical > 0 and bool(np.max(np.abs(steps - typical)) > UNEVEN_FRAME_TIMES * typical)
_TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".dat")


def _read_image_array(path):
    """Array and affine of an Analyze/NIfTI file, with errors that name the format."""
    data, affine, _ = load_nifti(path)
    return data, affine


_DECIMAL_COMMA = re.compile(r"^([-+]?\d+),(\d+(?:[eE][-+]?\d+)?)$")


def _read_aif_text(path):
    raw = Path(path).read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        # UTF-16 with its byte-order mark: Excel's "Unicode Text" export; its zero bytes made it
        # "not a text file (binary data)" (probe 57)
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise CardiacInputError(path, "starts as UTF-16 text but does not decode as it; save the AIF as UTF-8 or "
                                          "ASCII text") from None
    if b"\x00" in raw:
        raise CardiacInputError(path, "not a text file (binary data); accepted: a text/CSV column of AIF values, one per "
                                      "frame, or an Analyze/NIfTI column image")
    try:   # utf-8-sig: a spreadsheet's byte-order mark would hide the 'aif' header
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:   # a Windows spreadsheet's header ("µmol/L"): the numbers are ASCII either way
        text = raw.decode("latin-1")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise CardiacInputError(path, "empty AIF file")
    header = None
    delim = next((d for d in (";", "\t", ",") if d in lines[0]), None)
    rows = [[c.strip().strip('"') for c in (ln.split(delim) if delim else ln.split())] for ln in lines]
    if delim != ",":
        # European spreadsheets write "0,25" with ';' or tabs between columns: with ',' not
        # the column separator, "digits,digits" can only be a decimal comma
        rows = [[_DECIMAL_COMMA.sub(r"\1.\2", c) for c in r] for r in rows]
    column = 0
    try:
        float(rows[0][0]) if len(rows[0]) == 1 else [float(c) for c in rows[0]]
    except ValueError:  # a header row
        names = [c.lower() for c in rows[0]]
        if "aif" in names:
            column = names.index("aif")
        elif delim is None and len(rows) > 1 and all(len(r) == 1 for r in rows[1:]):
            pass   # one column under a header of several words ("Gd (mmol/L)")
        elif len(names) != 1:
            raise CardiacInputError(path, f"several columns {rows[0]} and none named 'aif'")
        header, rows = rows[0], rows[1:]
        if not rows:
            raise CardiacInputError(path, f"the AIF file has a header line {header} and no values; accepted: one value "
                                          "per frame under it")
    else:
        if len(rows[0]) != 1:
            hint = (" (or are these decimal commas? then separate columns with ';' or write '.' for decimals)"
                    if delim == "," and all(len(r) == 2 for r in rows) else "")
            raise CardiacInputError(path, f"{len(rows[0])} columns and no header; give one column or name the AIF column "
                                          f"'aif'{hint}")
    try:
        values = np.array([float(r[column]) for r in rows])
    except (ValueError, IndexError) as e:
        raise CardiacInputError(path, f"AIF values are not numbers ({e})")
    return values, (_aif_time_column(path, header, rows) if header is not None else None)


_TIME_HEADER = re.compile(r"^(t|time|times|time_s|time_ms|t_s|t_ms|seconds|secs?|ms|time \((s|ms)\)|time\[(s|ms)\])$")


def _aif_time_column(path, header, rows):
    """(T,) seconds from a time column beside the AIF's ('time', 'time_ms', 't (s)'), or None. It
    was read past: a column in ms, or one that disagrees with the series, went unsaid (probe 21)."""
    names = [c.lower().strip() for c in header]
    k = next((i for i, c in enumerate(names) if _TIME_HEADER.match(c)), None)
    if k is None:
        return None
    try:
        t = np.array([float(r[k]) for r in rows])
    except (ValueError, IndexError) as e:
        raise CardiacInputError(path, f"the AIF's time column {header[k]!r} holds values that are not numbers ({e})")
    if re.search(r"(^|_|\(|\[)ms(\)|\])?$", names[k]):   # ms, time_ms, time (ms) - not "times"
        t = t / 1000.0
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise CardiacInputError(path, f"the AIF's time column {header[k]!r} does not rise from value to value: it cannot "
                                      "be the AIF's sampling times")
    return t


def load_aif(source):
    """AIF as a 1D float array from a text/CSV file, an Analyze/NIfTI column image or an array."""
    return load_aif_with_times(source)[0]


def load_aif_with_times(source):
    """(AIF, its sampling times in s from a text file's time column, or None)."""
    times = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CardiacInputError(path, "AIF file not found: give an existing file (a text/CSV column, .hdr/.img or "
                                          ".nii) or the folder of the dual-sequence AIF series (--aif)")
        suffix = volume_suffix(path)
        if suffix in (".hdr", ".img", ".nii", ".nii.gz"):
            data, _ = _read_image_array(path)
            aif = np.squeeze(data)
        elif suffix in _TEXT_SUFFIXES or suffix == "":
            aif, times = _read_aif_text(path)
        else:
            raise CardiacInputError(path, f"unknown AIF format {suffix!r}; use a text/CSV column, .hdr/.img or .nii, or "
                                          "give the folder of the dual-sequence AIF series")
    else:
        path, aif = "<aif>", np.asarray(source, dtype=float).squeeze()
    aif = np.asarray(aif, dtype=float)
    if aif.ndim != 1:
        raise CardiacInputError(path, f"the AIF must be one curve, got shape {aif.shape}" + (
            ": an image (the dual-sequence AIF series converted to NIfTI?); give the AIF as a curve (a CSV column, one "
            "value per frame) or the DICOM folder of the AIF series" if aif.ndim >= 3 else ""))
    if not np.all(np.isfinite(aif)):
        raise CardiacInputError(path, "the AIF contains NaN or infinite values")
    _refuse_inverted_aif(path, aif)
    return aif, times


def _check_aif_times(path, aif_times, frame_times, dt):
    """The AIF's own time column must step as the series' frames do: an AIF sampled on other
    times (another series, ms read as s) would be fitted frame for frame and scale MBF."""
    if len(aif_times) < 2:
        return
    step = float(np.median(np.diff(aif_times)))
    frames = float(np.median(np.diff(frame_times))) if frame_times is not None and len(frame_times) > 1 else float(dt)
    if abs(step - frames) > 0.1 * frames:
        raise CardiacInputError(path, f"the AIF's time column steps {step:.3g} s per value, the image series {frames:.3g} s per "
                                      "frame: the AIF was not sampled on the series' frames (another series? a column in ms "
                                      "not named time_ms?); give the AIF of these frames, one value per frame")


def _frame_times_from_aif(path, aif_times, measured, dt, dt_source, prov):
    """(frame times, interval, its source) once the AIF file's own time column is heard: uneven AIF times
    are the heartbeats the frames were taken at. Beside images whose header gives one interval
    (a NIfTI time step, no sidecar) they become the frame times: ignored, a beat skipped on the
    upslope read MBF 32 % low and AF-like beats 39 % high with QC "pass", nothing said (probe 42).
    Beside uneven frame times of their own they must be the same heartbeats; under --dt they are
    kept for QC, as the file's own are."""
    aif_times = np.asarray(aif_times, float)
    steps = np.diff(aif_times)
    typical = float(np.median(steps))
    if not steps_uneven(steps, typical):
        return measured, dt, dt_source   # even: the AIF's times say nothing the interval does not
    warnings = prov.setdefault("warnings", [])
    where = Path(path).name if isinstance(path, (str, Path)) else "the AIF"
    spread = f"{steps.min():.2f}-{steps.max():.2f} s between values"
    if dt_source == "argument":
        warnings.append(f"--dt replaces the times in {where}'s time column, which are uneven ({spread}): the frames are "
                        "taken as evenly spaced; leave out --dt to fit on the AIF's times")
        prov.setdefault("file_frame_times_s", [float(v) for v in aif_times])   # QC still sees a gap on the first pass
        return measured, dt, dt_source
    own = None if measured is None else np.asarray(measured, float)
    one_interval = own is None or ("timing" not in prov and not prov.get("frame_times_from")
                                   and np.allclose(np.diff(own), np.median(np.diff(own)), rtol=1e-6, atol=0))
    if one_interval:
        warnings.append(f"frame times taken from the time column of {where} ({spread}, irregular heartbeats): the "
                        f"images' header gives one interval ({dt:.3g} s) for all frames")
        prov["frame_times_from"] = f"the time column of {where}"
        return aif_times - aif_times[0] + (own[0] if own is not None else 0.0), typical, prov["frame_times_from"]
    apart = (aif_times - aif_times[0]) - (own - own[0])
    k = int(np.argmax(np.abs(apart)))
    if abs(apart[k]) > 0.25 * typical:
        raise CardiacInputError(path, f"the AIF's time column and the images' frame times are different heartbeats: frame "
                                      f"{k + 1} is {aif_times[k] - aif_times[0]:.2f} s after the first in the AIF and "
                                      f"{own[k] - own[0]:.2f} s in the images; give the AIF sampled on these frames")
    return measured, dt, dt_source


def _refuse_inverted_aif(path, aif):
    """A bolus raises the AIF above its baseline; a curve that mostly falls below it (a sign
    flip, or a baseline subtracted at the peak) fits as a flow at the bound of the fit."""
    if aif.size < 3:
        return
    n_base = max(3, aif.size // 10)
    base = float(np.median(aif[:n_base]))
    rise, dip = float(aif.max()) - base, base - float(aif.min())
    if dip > 0 and dip > 2 * rise:
        k = int(np.argmin(aif))
        if int(np.argmax(aif)) < n_base and float(aif[-1]) - float(aif.min()) < 0.3 * (float(aif.max()) - float(aif.min())):
            # its peak among the frames taken as its baseline, and never coming back up: not a
            # bolus upside down (which dips and recovers) but a series that started as the bolus
            # passed; QC flags that (AIF_NO_BASELINE), as when the AIF comes from the series itself
            return
        noise = 1.4826 * float(np.median(np.abs(np.diff(aif)))) / np.sqrt(2)
        # a bolus upside down stays down for frames on end; noise dips for a frame or two (a short
        # clean bolus, all of whose steps are large, read as noise; review of probe 72's change)
        low = (aif < base - 0.5 * dip).astype(int)
        sustained = low.size >= 4 and np.convolve(low, np.ones(4, int), mode="valid").max(initial=0) >= 4
        if dip < 6 * noise and not sustained:
            # flat noise dips below its baseline as often as above: no bolus upside down but none
            # at all (8 frames before the contrast were told "is the sign flipped?", probe 72)
            raise CardiacInputError(path, f"the AIF shows no bolus: its {aif.size} values stay within noise of their "
                                          f"baseline ({base:.3g}, varying by about {noise:.2g}); a first-pass series holds "
                                          "the contrast's arrival and washout: were the frames cut before it?")
        raise CardiacInputError(path, f"the AIF falls instead of rising: {dip:.3g} below its baseline at frame {k} "
                                      f"(lowest value {aif.min():.3g}{', negative' if aif.min() < 0 else ''}), at most "
                                      f"{rise:.3g} above it; accepted: a contrast bolus that rises above the baseline "
                                      "(is the sign flipped?)")


def _qperf_entry(path, stress_or_rest):
    """(folder, entry) of a QPerf params.json for a folder / params.json / one of its images."""
    path = Path(path)
    params_file = path / QPERF_PARAMS if path.is_dir() else path.parent / QPERF_PARAMS
    if not params_file.is_file():
        return None, None
    try:
        params = json.loads(params_file.read_text())
    except (OSError, ValueError) as e:
        raise CardiacInputError(params_file, f"not readable JSON ({e})")
    if path.is_dir() or path.name == QPERF_PARAMS:
        if stress_or_rest not in params:
            raise CardiacInputError(params_file, f"no {stress_or_rest!r} entry (has {sorted(k for k in params if isinstance(params[k], dict))})")
        return params_file, params[stress_or_rest]
    stem = path.name.rsplit(".", 1)[0]
    for entry in params.values():
        if isinstance(entry, dict) and str(entry.get("images", "")).rsplit(".", 1)[0] == stem:
            return params_file, entry
    return None, None


def _image_study(path):
    """(Study without timing, frame times from the file or None) for a perfusion image file."""
    suffix = volume_suffix(path)
    if suffix in (".hdr", ".img"):
        data, affine = _read_image_array(path)
        if data.ndim not in (3, 4):
            raise CardiacInputError(path, f"expected [RO, E1, frames] or (x, y, slices, frames), got shape {data.shape}")
        images, ndim = nifti_to_kji(data), data.ndim
        meta = {"format": "analyze", "orientation_known": False, "frame_times_s": None,
                "format_kind": (PERFUSION, "an Analyze 7.5 perfusion image [RO, E1, frames]")}
    elif suffix in (".nii", ".nii.gz"):
        images, affine, meta = read_nifti(path)
        ndim = meta["ndim"]
        if ndim not in (3, 4):
            raise CardiacInputError(path, f"expected (x, y, frames) or (x, y, slices, frames), got {ndim} dimensions")
    else:
        study = load_volume(path, kind=PERFUSION)
        return study, study.frame_times_s
    if ndim == 3:  # [RO, E1, frames]: the third axis is time, one slice
        images = images.transpose(1, 0, 2, 3)
    refuse_swapped_axes(path, images, affine)
    study = Study(images=images, ijk_to_ras=affine, kind=PERFUSION, name=Path(path).name.split(".")[0],
                  source=str(path), orientation_known=meta["orientation_known"],
                  provenance={"reader": meta["format"], "files": [str(path)],
                              # voxel_size_check: QC's VOXEL_SIZE_DISAGREES (the network's mask reads the pixel size)
                              **{k: meta[k] for k in ("format_kind", "frame_times_ignored", "frame_times_from", "unitless_time_step",
                                                      "warnings", "voxel_size_check")
                                 if meta.get(k)}})
    return study, meta.get("frame_times_s")


def read_perfusion_image(path):
    """A perfusion image file as a Study (frame times from the file when it has them), not yet finished."""
    study, measured = _image_study(path)
    study.frame_times_s = measured
    return study


def qperf_default_series_note(path):
    """'the stress series was read ...' for a QPerf folder that also holds a rest series, else
    None: read without --series it gives its stress series, where a DICOM folder of both asks
    which (it read the stress with no word; probe 60). Said by the CLI when no --rest is given
    (with --rest the folder's rest is read as well)."""
    params_file = Path(path) / QPERF_PARAMS
    if not Path(path).is_dir() or not params_file.is_file():
        return None
    try:
        entries = json.loads(params_file.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(entries, dict) and isinstance(entries.get("stress"), dict) and isinstance(entries.get("rest"), dict)):
        return None
    return (f"{path} holds a stress and a rest series ({QPERF_PARAMS}): the stress series was read; --series rest reads the "
            f"rest, and --series stress --rest {path} gives both (MPR)")


def load_perfusion(path, aif=None, dt=None, series=None, stress_or_rest="stress", hematocrit=None,
                   units=None, progress=None):
    """Read a perfusion series into a Study with kind='perfusion', AIF, frame times and units."""
    path = Path(path)
    if not path.exists():
        raise CardiacInputError(path, "file or folder not found")
    params_file, entry = _qperf_entry(path, stress_or_rest)
    qperf = entry is not None and (path.is_dir() or path.name == QPERF_PARAMS)
    if qperf:
        if not entry.get("images"):
            raise CardiacInputError(params_file, f"the {stress_or_rest!r} entry names no 'images' file")
        study, _ = _image_study(params_file.parent / entry["images"])
    elif path.is_dir() and len(frame_files(path)) > 1:
        study = load_frame_folder(path, kind=PERFUSION, progress=progress)
    elif path.is_dir():
        from .dicom import load_dicom_series

        study = load_dicom_series(path, series=series, kind=PERFUSION, progress=progress)
    else:
        study = read_perfusion_image(path)
    return finish_perfusion(study, path, aif=aif, dt=dt, stress_or_rest=stress_or_rest, hematocrit=hematocrit,
                            units=units, qperf=(params_file, entry), progress=progress)




def frame_interval_source(dt_source):
    """How a message names where the frame interval came from (``provenance["dt_source"]``)."""
    return {"argument": "--dt", "file": "the file's time step", None: "the file"}.get(dt_source, dt_source)


def _before_the_bolus(aif, frame):
    """True when the AIF has not yet started to rise at ``frame`` + 1 (the frame after a gap that
    follows ``frame``): the gap lies in the pre-contrast baseline."""
    if aif is None or len(aif) < 5:
        return False
    from ..perfusion.mbf import find_foot

    try:
        return frame + 1 <= find_foot(np.asarray(aif, float))
    except CardiacInputError:   # no bolus found: nothing to say the gap is before it
        return False


def _first_pass_over(aif, fraction=0.4):
    """The first frame after the AIF's peak at which it has come down below ``fraction`` of its
    rise over baseline (the first pass is over), or None (no AIF, or it never comes down)."""
    if aif is None or len(aif) < 5:
        return None
    curve = np.asarray(aif, float)
    peak = int(np.argmax(curve))
    base = float(np.median(curve[:max(1, min(peak, 3))]))
    rise = curve[peak] - base
    if not rise > 0:
        return None
    below = np.flatnonzero(curve[peak:] < base + fraction * rise)
    return peak + int(below[0]) if below.size else None


# A bolus reaches every slice of one acquisition in the same heartbeat (all slices are read out
# in each beat): arrivals apart by this many frames, in two groups, are two injections.
TWO_BOLUSES_MIN_FRAMES = 3
# ... and the later group must still be at baseline (under this share of its peak) when the
# earlier group's bolus arrives
LATE_GROUP_QUIET = 0.1


def slice_rise_curves(images):
    """(S, T) each slice's brightest enhancement per frame: the largest rise over its first three
    frames of the 3x3-pixel mean (the blood pool the bolus reaches first). A high percentile
    instead spread one full-field acquisition's slices over 3-4 frames: with the chest in view,
    1 % of the pixels is more than the pools."""
    from scipy.ndimage import uniform_filter

    t = images.shape[0]
    curves = []
    for k in range(images.shape[1]):
        x = uniform_filter(images[:, k].astype(np.float32), size=(1, 3, 3))
        curves.append((x - np.median(x[:3], axis=0)).reshape(t, -1).max(axis=1))
    return np.asarray(curves)


def bolus_arrival_frames(rises):
    """(S,) the first frame at which each slice's rise (``slice_rise_curves``) reaches a quarter
    of its peak; -1 for a slice that never rises."""
    return np.asarray([int(np.argmax(r >= 0.25 * r.max())) if r.max() > 0 else -1 for r in rises])


# What both refusals of a stack merged from two acquisitions' slice series say
TWO_ACQUISITIONS_ADVICE = ("two acquisitions (stress and rest?) planned a few millimetres apart, whose series nothing "
                           "in the headers parts (no clock to tell them apart, series numbers in one run); put each "
                           "acquisition's series in a folder of its own")


def _merged_slice_positions(study):
    """(S,) the slice positions (mm) of a stack merged from several slice series (the DICOM
    reader joins their UIDs with '+'), or None for any other stack: the only stacks that can
    hold two acquisitions the headers did not part."""
    prov = study.provenance
    positions = prov.get("slice_positions_mm")
    if "+" not in str(prov.get("series_uid", "")) or positions is None or len(positions) != study.n_slices:
        return None
    return np.asarray(positions, float)


# Slices of one perfusion acquisition are planned apart (their saturation and readout would
# overlap otherwise): two slices read as one stack closer than this share of their thickness
# come from two acquisitions
OVERLAPPING_SLICE_SHARE = 0.5


def refuse_overlapping_slices(study, where):
    """Refuse a stack merged from slice series in which two slices lie closer than
    ``OVERLAPPING_SLICE_SHARE`` of their thickness (the header's SliceThickness): stress and rest
    stored one series per slice, described alike, no clock and series numbers in one run, the
    rest planned a few millimetres off the stress. When both boluses arrive in the same frame of
    their series, ``refuse_two_boluses`` cannot see them, and the two were read as one 6-slice
    stack (segment MBF from a mix of stress and rest slices; session 32's note)."""
    positions, thickness = _merged_slice_positions(study), study.provenance.get("slice_thickness_mm")
    if positions is None or study.n_slices < 2 or not thickness:
        return
    pos = np.sort(positions)
    gaps = np.diff(pos)
    close = [k for k, gap in enumerate(gaps) if gap < OVERLAPPING_SLICE_SHARE * thickness]
    if not close:
        return
    pairs = ", ".join(f"{pos[k]:.1f} and {pos[k + 1]:.1f} mm" for k in close)
    raise CardiacInputError(where, f"the {study.n_slices} slice series read as one stack overlap: slices at {pairs} lie "
                                   f"{'under' if len(close) > 1 else f'{gaps[close[0]]:.1f} mm apart, under'} half their "
                                   f"{thickness:g} mm thickness, which one perfusion acquisition never plans: "
                                   f"{TWO_ACQUISITIONS_ADVICE}")


def refuse_two_boluses(study, where):
    """Refuse a stack merged from slice series of two acquisitions: stress and rest stored one
    series per slice, described alike, with no clock to part them and series numbers in one
    run, the rest planned a few millimetres off (read as one 6-slice stack of both, review only
    for the LV's AIF; probe 56, the case the headers cannot tell). Two groups of
    two or more slices whose bolus arrivals lie ``TWO_BOLUSES_MIN_FRAMES`` or more apart, each
    group arriving within a frame, and whose positions lie among each other: one acquisition's
    slices never do that (a late apical slice without RV is one slice, at the stack's end)."""
    positions = _merged_slice_positions(study)
    if positions is None or study.n_slices < 4:
        return
    rises = slice_rise_curves(study.images)
    arrival = bolus_arrival_frames(rises)
    if np.any(arrival < 0):
        return
    order = np.argsort(arrival, kind="stable")
    steps = np.diff(arrival[order])
    cut = int(np.argmax(steps)) + 1
    early, late = order[:cut], order[cut:]
    if min(len(early), len(late)) < 2 or steps[cut - 1] < TWO_BOLUSES_MIN_FRAMES:
        return
    if np.ptp(arrival[early]) > 1 or np.ptp(arrival[late]) > 1:
        return
    pos = positions
    if pos[early].max() < pos[late].min() or pos[late].max() < pos[early].min():
        return   # side by side along the normal, not among each other
    first = int(arrival[early].max())
    if any(rises[k, first] >= LATE_GROUP_QUIET * rises[k].max() for k in late):
        # the late slices rise already when the early ones do: one bolus seen at two strengths
        # (a dual-bolus protocol's diluted pre-bolus near a quarter of the main peak in some
        # slices; helper-88's review), not a second injection
        return

    def at(group):
        return ", ".join(f"{pos[k]:.1f}" for k in sorted(group, key=lambda k: pos[k]))

    raise CardiacInputError(where, f"the {study.n_slices} slices read as one stack show two boluses: the slices at "
                                   f"{at(early)} mm reach it at frame {int(np.median(arrival[early])) + 1}, those at "
                                   f"{at(late)} mm at frame {int(np.median(arrival[late])) + 1}: {TWO_ACQUISITIONS_ADVICE}")


DYNAMIC_NUMBER_TIMES = "dynamic numbers x --dt"   # provenance frame_times_from of _times_from_dynamic_numbers


def _times_from_dynamic_numbers(prov, n, dt, warnings):
    """Frame times (number - first number) x dt where a series without a clock numbers its
    dynamics (``dicom._frame_numbers``) and the numbers skip some: the frames after a lost
    dynamic stay at their own beat, not one earlier. None where the numbers run without a gap."""
    numbers = prov.get("temporal_positions")
    if not isinstance(numbers, list) or len(numbers) != n or n < 2:
        return None
    steps = np.diff(numbers)
    # the numbers' own step is one dynamic (1, 3, 5, ... numbers every dynamic with a step of 2:
    # read as every other one missing, every frame was put 2 dt apart; review of session 44)
    unit = int(np.median(steps))
    if unit < 1 or np.any(steps % unit) or not np.any(steps > unit):
        return None
    lost = [int(v) for a, b in zip(numbers[:-1], numbers[1:]) for v in range(a + unit, b, unit)]
    shown = ", ".join(str(v) for v in lost[:6]) + (", ..." if len(lost) > 6 else "")
    warnings.append(f"{len(lost)} dynamic{'s are' if len(lost) > 1 else ' is'} missing by the dynamics' numbers "
                    f"(TemporalPositionIdentifier {shown} of {numbers[0]}-{numbers[-1]}): each frame is placed at its "
                    f"number x --dt, so the frames after a gap keep their own time; the curves are resampled over it")
    prov["frame_times_from"] = DYNAMIC_NUMBER_TIMES
    return (np.asarray(numbers, float) - numbers[0]) / unit * dt


def _params_number(entry, key, params_file):
    """``entry[key]`` of a QPerf params.json as a number; text ("0.5 s", "42%") named with its file
    and key, not a bare ValueError in the crash wording (probe 101)."""
    value = entry[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        example = {"dt_s": "0.5 (seconds per frame)", "hematocrit": "0.42 (a fraction)"}.get(key, "a number")
        raise CardiacInputError(params_file, f'"{key}": {json.dumps(value)} is not a number; give e.g. {example}') from None


def _params_frame(entry, key, params_file):
    """``entry[key]`` of a QPerf params.json as a 1-based frame number (MATLAB's indices); text or
    a fraction named with its file and key, not a bare ValueError or a frame silently truncated."""
    value = _params_number(entry, key, params_file)
    if not np.isfinite(value) or value != int(value) or value < 1:
        raise CardiacInputError(params_file, f'"{key}": {json.dumps(entry[key])} is not a frame number; give a whole '
                                             "number from 1 (the first frame, as MATLAB counts)")
    return int(value)


def finish_perfusion(study, path, aif=None, dt=None, stress_or_rest="stress", hematocrit=None, units=None,
                     qperf=None, progress=None):
    """Make a read series a perfusion Study: frame interval, AIF, units, hematocrit.

    The frame interval comes from ``dt`` (the user), the file's measured frame times, or a
    QPerf params.json - never guessed. The AIF comes from ``aif`` (file or array), a QPerf
    entry, a dual-sequence AIF series found beside a DICOM series, or - when none exists - the
    LV blood pool of the series itself, found from the bolus passage (``perfusion/bolus.py``); that last
    AIF is in the images' units and saturates at peak, so MBF from it is approximate.
    """
    path = Path(path)
    params_file, entry = qperf if qperf is not None else _qperf_entry(path, stress_or_rest)
    # QPerf's examples are stored in Gd concentration; any other series is read as signal unless told
    units = units or ("gd_mmol_l" if entry is not None else "signal")
    dropped, blank, dropped_at_end = 0, [], 0
    if entry is None and units == "signal":
        # before anything reads a baseline, a bolus or a frame interval from the series; blank
        # dynamics first, as a frame of no signal would hide the PD frames' brightness
        # a DICOM folder may hold stress and rest: name the series, not only the folder
        number, description = study.provenance.get("series_number"), study.provenance.get("series_description")
        where = (f"series #{number if number is not None else '?'} {description!r} in {path.name or path}"
                 if "series_uid" in study.provenance else path.name or str(path))
        blank = drop_blank_frames(study, where)
        dropped = drop_leading_pd_frames(study, where)
        dropped_at_end = drop_trailing_pd_frames(study, where)   # before a gain change is looked for
        undo_rescaled_frames(study, where)
        refuse_two_boluses(study, where)
        refuse_overlapping_slices(study, where)   # the same case when both boluses arrive in one frame
    measured = study.frame_times_s
    n = study.n_frames
    prov = study.provenance
    warnings = prov.setdefault("warnings", [])
    if entry is not None:   # before any error below, which says how the series was taken
        prov["qperf"] = {"params": str(params_file), "stress_or_rest": stress_or_rest if path.is_dir() or path.name == QPERF_PARAMS else None}
        prov["format_kind"] = (PERFUSION, "a QPerf perfusion folder (params.json)")

    if dt is not None:
        dt, dt_source = float(dt), "argument"
        where = path
        # the reader's "give --dt" about a placeholder time step is answered
        warnings[:] = [w for w in warnings if not w.startswith(PLACEHOLDER_TIME_REASON)]
        if measured is not None and len(measured) > 1 and np.median(np.diff(measured)) > 0:
            file_dt = float(np.median(np.diff(measured)))
            if abs(file_dt - dt) > 0.1 * file_dt:
                warnings.append(f"--dt {dt:g} s differs from the frame interval in the file ({file_dt:.3g} s); using --dt")
            steps = np.diff(measured)
            source = prov.get("frame_times_from")
            if source:   # the reader's "frame times from <sidecar>" no longer holds
                warnings[:] = [w for w in warnings if not (w.startswith(f"frame times from {source}")
                                                           or w.startswith(f"{source} steps "))]
            theirs = f"the file's frame times ({source})" if source else "the file's frame times"
            gap = int(np.argmax(steps))
            if steps[gap] > FRAME_GAP_FACTOR * file_dt:
                # an even grid over a skipped beat moves every later frame a beat early
                uneven = (f"{steps[gap]:.2f} s between frames {gap + 1} and {gap + 2}, {file_dt:.2f} s typical: a skipped "
                          "beat or a lost dynamic")
            elif steps_uneven(steps, file_dt):
                # irregular heartbeats without one long gap: an even grid read AF-like beats 20 %
                # low with QC pass and nothing said (probe 72)
                uneven = f"{steps.min():.2f}-{steps.max():.2f} s between frames, irregular heartbeats"
            else:
                uneven = None
            if uneven:
                warnings.append(f"--dt replaces {theirs}, which are uneven ({uneven}): the frames are taken as evenly "
                                "spaced; leave out --dt to fit on the real times")
                prov["file_frame_times_s"] = [float(v) for v in measured]   # QC still sees the gap or the irregular beats
            measured = None   # the user's interval wins
        elif prov.get("unitless_time_step"):
            # the file's step without a unit: --dt that is it neither in seconds nor in
            # milliseconds contradicts the file (0.5 read with --dt 1.0: MBF -50 %, nothing said; probe 72)
            step = float(prov["unitless_time_step"])
            if all(abs(step * scale - dt) > 0.1 * dt for scale in (1.0, 1e-3)):
                warnings.append(f"--dt {dt:g} s is neither the file's time step ({step:g}, no unit) in seconds nor in "
                                f"milliseconds; using --dt (MBF scales with the frame interval: check it)")
    elif measured is not None and len(measured) > 1 and np.median(np.diff(measured)) > 0:
        # the file's own header, or where the reader found its times (a BIDS sidecar)
        dt, dt_source, where = float(np.median(np.diff(measured))), prov.get("frame_times_from") or "file", path
    elif entry is not None and "dt_s" in entry:
        dt, dt_source, where = _params_number(entry, "dt_s", params_file), str(params_file), params_file
    else:
        frames_folder = str((study.provenance or {}).get("reader") or "").endswith("-frames")
        why = (study.provenance or {}).get("frame_times_ignored") or (
            # a folder of one file per frame: sidecars beside each file are not read as times (probe 89)
            "the frame files have no frame times (one per file is not read, sidecars included)" if frames_folder
            else "the file has no frame times")
        from .series_kind import aif_made_perfusion_note, inferred_perfusion_reason, read_as_perfusion_note

        reason = inferred_perfusion_reason(study)
        note = read_as_perfusion_note(reason) if reason else aif_made_perfusion_note(study)
        read_as = f" ({note})" if note else ""
        raise CardiacInputError(path, f"frame interval unknown{read_as}: {why}; give dt (seconds per frame, --dt)")
    if not np.isfinite(dt) or dt <= 0:
        raise CardiacInputError(where, f"frame interval dt (--dt) must be a positive number of seconds, got {dt}")
    if dt_source == "argument" and measured is None:
        measured = _times_from_dynamic_numbers(prov, n, dt, warnings)
    if not MIN_FRAME_INTERVAL_S <= dt <= MAX_FRAME_INTERVAL_S:
        given = dt_source == "argument"
        side = "under" if dt < MIN_FRAME_INTERVAL_S else "over"
        limit = MIN_FRAME_INTERVAL_S if dt < MIN_FRAME_INTERVAL_S else MAX_FRAME_INTERVAL_S
        raise CardiacInputError(where, f"frame interval {dt:g} s ({frame_interval_source(dt_source)}) is {side} {limit:g} s: a "
                                       "first-pass series is ECG-triggered, one frame per heartbeat or two (usually 0.3-2 s; "
                                       "under 0.3 s would be a heart rate over 200/min, and MBF scales with the interval); "
                                       + ("give the real frame interval with --dt in seconds" if given else
                                          "give the frame interval with --dt in seconds"))

    aif_source = aif if aif is not None else (params_file.parent / entry["aif"] if entry and entry.get("aif") else None)
    if isinstance(aif_source, (str, Path)) and Path(aif_source).is_dir():
        # a folder: the dual-sequence AIF series exported on its own, read as if it lay beside
        from .aif_series import aif_from_series_folder

        study.companion_series.clear()
        study.aif = aif_from_series_folder(study, Path(aif_source), progress=progress)   # on the series' own frames
        prov["aif_source"] = f"dual-sequence AIF series in {aif_source} (LV blood pool found from the bolus)"
        prov["aif_path"] = str(aif_source)   # the folder itself (a scene that reopens finds it, or its stamped curve)
    elif aif_source is not None:
        curve, aif_times = load_aif_with_times(aif_source)
        if aif_times is not None:
            _check_aif_times(aif_source, aif_times, measured, dt)
        left_out = dropped + len(blank) + dropped_at_end
        if left_out and len(curve) == n + left_out:
            # an AIF of the series as written: the frames left out of the images go from it too
            curve = np.delete(curve, blank)[dropped:dropped + n]
            if aif_times is not None and len(aif_times) == n + left_out:
                aif_times = np.delete(aif_times, blank)[dropped:dropped + n]
        if aif_times is not None and len(aif_times) == n:
            measured, dt, dt_source = _frame_times_from_aif(aif_source, aif_times, measured, dt, dt_source, prov)
        if len(curve) != n:
            raise CardiacInputError(aif_source if isinstance(aif_source, (str, Path)) else "<aif>",
                                    f"AIF has {len(curve)} values but the image series {Path(study.source).name} has {n} frames")
        study.aif = curve
        prov["aif_source"] = str(aif_source) if isinstance(aif_source, (str, Path)) else "array"
        if isinstance(aif_source, (str, Path)):
            prov["aif_path"] = str(aif_source)
        study.companion_series.clear()   # a given AIF wins: a dual-sequence AIF series read with the images is not kept
    elif prov.get("aif_series_uid"):
        from .aif_series import aif_from_dual_sequence

        uid = prov["aif_series_uid"]
        try:
            study.aif = aif_from_dual_sequence(study, path, uid, progress=progress)
            prov["aif_source"] = f"dual-sequence AIF series {uid} (LV blood pool found from the bolus)"
        except CardiacInputError as e:
            # found beside the images, not given: a low-resolution series that is no AIF series
            # (a scout, a localiser) or one that cannot be matched must not stop the analysis,
            # nor be blamed on the perfusion series; the images' own LV pool gives the AIF
            del prov["aif_series_uid"]
            warnings.append(f"the low-resolution series {uid} beside the images was taken for a dual-sequence AIF "
                            f"series but is not used: {e.problem}")
    if aif_source is None and not prov.get("aif_series_uid"):
        from ..perfusion.bolus import aif_from_lv, locate_blood_pools

        k = study.n_slices // 2
        try:
            pools = locate_blood_pools(study.images[:, k], dt_s=dt, pixel_mm=study.spacing[0])
        except CardiacInputError as e:
            # Not fatal here: given labels or the network's LV can still give the AIF (Analysis).
            prov["aif_detection"] = {"slice": k, "error": e.problem}
            pools = None
        if pools is not None:
            study.aif = aif_from_lv(study.images[:, k], pools["lv"])
            prov["aif_source"] = "lv_blood_pool"
            prov["aif_detection"] = {"slice": k, "confidence": pools["confidence"], "reason": pools["reason"],
                                     "lv_pixels": int(pools["lv"].sum()), "lv_peak_frame": pools["lv_peak_frame"],
                                     "rv_peak_frame": pools["rv_peak_frame"]}
            if pools["confidence"] != "high":
                warnings.append(f"LV blood pool for the AIF found with low confidence ({pools['reason']}): check it")
        if units == "gd_mmol_l":
            # in Gd concentration the blood's saturation is already undone: said as QC's note says
            # it (the signal's caveat stood beside an info flag "already in Gd concentration"; probe 73)
            warnings.append("no separate AIF: the AIF is taken from the LV blood pool of this series, already in Gd "
                            "concentration; semi-quantitative indices need no AIF")
        else:
            warnings.append("no separate AIF: the AIF is taken from the LV blood pool of this series; blood signal "
                            "saturates at the bolus peak, so MBF is approximate (over-estimated, at rest more than at "
                            "stress, so MPR reads low); semi-quantitative indices need no AIF")

    prov.update({"dt_s": dt, "dt_source": dt_source})
    prov.setdefault("aif_source", None)
    if measured is not None and len(measured) > 2:
        steps = np.diff(measured)
        jump = int(np.argmax(steps))
        after = _first_pass_over(study.aif)
        if steps[jump] > MAX_STEP_FACTOR * np.median(steps) and after is not None and jump >= after \
                and jump + 1 >= MIN_DYNAMICS:
            # the ECG trigger lost after the first pass (the breath-hold let go): the frames before
            # the gap hold the whole first pass, those after it add nothing the fit needs
            n_late = n - jump - 1
            warnings.append(f"frame times jump by {steps[jump]:.1f} s between frames {jump + 1} and {jump + 2}, after the "
                            f"AIF's first pass (one frame every {np.median(steps):.2f} s before it): the {n_late} frame"
                            f"{'s' if n_late > 1 else ''} after the gap left out, the fit uses the {jump + 1} before it")
            study.provenance["frames_after_gap_dropped"] = {"gap_s": float(steps[jump]), "dropped": n_late}
            keep = np.arange(n) <= jump
            remove_frames(study, keep)
            study.aif = np.asarray(study.aif)[keep]
            measured = np.asarray(measured, float)[keep]
            n = study.n_frames
            steps = np.diff(measured)
            jump = int(np.argmax(steps))
        big = np.flatnonzero(steps > MAX_STEP_FACTOR * np.median(steps))
        if big.size == 1 and steps[big[0]] <= MAX_BASELINE_PAUSE_S and _before_the_bolus(study.aif, int(big[0])):
            # the scanner paused before the contrast arrived (the breath-hold command, a trigger
            # lost): the baseline is flat on both sides, and the fit's grid over the pause only
            # interpolates it (refused before, with no way round it)
            warnings.append(f"frame times jump by {steps[jump]:.1f} s between frames {jump + 1} and {jump + 2}, before the "
                            f"contrast arrives (one frame every {np.median(steps):.2f} s elsewhere): a pause in the "
                            "pre-contrast baseline, which the fit bridges")
            study.provenance["baseline_pause_s"] = float(steps[jump])
        elif big.size:
            # resampling across it would invent the frames in between (and a grid over an hour of
            # "frames" does not fit in memory): a dynamic's time is wrong or many are missing
            raise CardiacInputError(path, f"frame times jump by {steps[jump]:.1f} s between frames {jump + 1} and {jump + 2} "
                                          f"where the series takes one every {np.median(steps):.2f} s, during or after the "
                                          "bolus: a dynamic with a wrong time, many missing, or a pause in the acquisition "
                                          "that left the first pass unsampled; accepted: gaps up to "
                                          f"{MAX_STEP_FACTOR:g} frame intervals (an irregular heartbeat), a pause before the "
                                          "contrast arrives, or one after the first pass is over (the frames after it are "
                                          "left out). " + (
                                              # placed by their numbers under --dt: the numbers say dynamics are
                                              # missing, and --dt was given (review of session 44)
                                              "The frames are placed by the dynamics' numbers (TemporalPositionIdentifier) "
                                              "at --dt: the numbers say that many dynamics are missing there; re-export "
                                              "the series with all its dynamics"
                                              if prov.get("frame_times_from") == DYNAMIC_NUMBER_TIMES else
                                              "If the times are wrong and the frames evenly spaced, give --dt"))
        if steps_uneven(steps):
            from ..perfusion.mbf import fit_interval

            typical = float(np.median(steps))
            gaps = np.flatnonzero(steps > FRAME_GAP_FACTOR * typical)
            if gaps.size == 1 and np.sum(np.abs(steps - typical) > 0.25 * typical) == 1:
                # one long step among even ones is a skipped beat or a lost dynamic, not "irregular
                # heartbeats" (a 1.5 s gap among 0.5 s frames was called so; probe 97)
                g = int(gaps[0])
                why = (f"{steps[g]:.2f} s between frames {g + 1} and {g + 2}, {typical:.2f} s elsewhere: a skipped beat or "
                       "a lost dynamic")
            else:
                why = f"{steps.min():.2f}-{steps.max():.2f} s between frames, irregular heartbeats"
            warnings.append(f"frame times are uneven ({why}): curves are resampled to {fit_interval(measured)[0]:.3g} s "
                            "on the real times before the MBF fit")
    if entry is not None:
        for key in ("aif_foot", "aif_peak"):
            if aif is None and f"{key}_frame_1based" in entry:
                prov[key] = _params_frame(entry, f"{key}_frame_1based", params_file) - 1  # the authors store MATLAB indices
        if hematocrit is None and "hematocrit" in entry:
            hematocrit = _params_number(entry, "hematocrit", params_file)
    study.kind = PERFUSION
    # Real (possibly irregular) times are kept; the fit resamples onto a regular grid.
    study.frame_times_s = np.asarray(measured, float) if measured is not None and len(measured) == n else np.arange(n) * dt
    study.hematocrit = hematocrit
    study.units = units
    if entry is not None and path.is_dir():
        study.name = f"{path.name}_{stress_or_rest}"
    return study
