"""The live analysis of one study: labels -> geometry -> measures, with cheap partial updates.

One ``Analysis`` serves the CLI, the Slicer module and the web GUI. Edits go through it:
``set_labels`` (a corrected contour) recomputes what depends on the masks; ``move_insertion_point``
(a dragged handle) re-bins the sectors of one slice and refreshes the segment values only.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from . import geometry
from .aha import AHA_BY_ID
from .cine import cine_measures
from .errors import CardiacInputError
from .labels import LV, MYO, RV
from .study import PERFUSION, Study

Ras = Sequence[float]   # a point in RAS mm

DENSITY_RANGE_G_ML = (0.8, 1.3)   # myocardium is 1.05 g/mL; outside this, a typo or another unit
STRESS_PREFIX = "Stress "   # the bullseye's title where a rest series is measured beside it
REST_WARNING_PREFIX = "rest series: "   # the rest analysis' warnings among the stress analysis' (the MPR needs both)


def pixel_spread(mbf, segment_map, min_pixels=5):
    """{segment id: robust spread of its pixels' MBF relative to their median} (the interquartile
    range / 1.349, as a standard deviation, over the median; rounded to 3 places), for segments of
    at least ``min_pixels`` finite pixels. What a segment's median rests on: noisy fits spread
    widely (QC MBF_SEGMENT_SPREAD)."""
    values = np.asarray(mbf, float)
    seg = np.asarray(segment_map)
    out = {}
    for sid in range(1, 17):
        v = values[(seg == sid) & np.isfinite(values)]
        if v.size < min_pixels:
            continue
        median = float(np.median(v))
        if median > 0:
            q1, q3 = np.percentile(v, (25, 75))
            out[sid] = round(float((q3 - q1) / 1.349 / median), 3)
    return out


def _rest_warnings(rest):
    """The rest analysis' warnings for the stress analysis' list, without its QC lines: its flags
    come back as the stress's REST_ flags (qc.assess) and their QC lines (each was said twice)."""
    return [REST_WARNING_PREFIX + w for w in rest.warnings if not w.startswith("QC ")]


def network_warnings(model_info):
    """The notes of the network run that made the labels, from its model info
    (``pipeline.segment``; saved with a Slicer scene): a heart square or bolus crop that fell back
    to the whole field. They belong to the run and its outputs, so they are kept there and not
    among the study's reading notes (``provenance["warnings"]``), which the Slicer module stamps
    on the input node: a note stamped there outlived its run, said again after a run that found
    the heart."""
    from .models.inference import heart_box_warning
    from .models.perfusion_segmentation import heart_not_found_warning

    info = model_info or {}
    notes = (heart_box_warning(info.get("cine_heart_box")), heart_not_found_warning(info.get("perfusion_segmentation")))
    return [n for n in notes if n]


def is_network_note(text):
    """Whether ``text`` is a note ``network_warnings`` makes (a network run's, not the images')."""
    from .models.inference import WHOLE_FIELD_NOTE_END
    from .models.perfusion_segmentation import BOLUS_CROP_NOTE_START

    return str(text).endswith(WHOLE_FIELD_NOTE_END) or str(text).startswith(BOLUS_CROP_NOTE_START)


def check_density(density, name="density"):
    """Refuse a myocardial density outside DENSITY_RANGE_G_ML, naming the setting (``name``):
    it scales LV mass and MBF per gram, so 10.5 for 1.05 is a factor of ten nobody would see."""
    if density is None or not np.isfinite(density) or not DENSITY_RANGE_G_ML[0] <= density <= DENSITY_RANGE_G_ML[1]:
        raise CardiacInputError(name, f"{density} g/mL is not a myocardial tissue density; accepted: "
                                      f"{DENSITY_RANGE_G_ML[0]:g}-{DENSITY_RANGE_G_ML[1]:g} g/mL (default 1.05)")


def _still_rising_at_the_end(images):
    """Why a series looks cut before its bolus peak, or None: the whole image's mean enhancement
    over its first frames is highest at the end and still climbing steeply there (a fifth of its
    value over the last three frames). The brightest pixels will not do: the RV peaks first and
    brightest, so a series cut on the LV upslope has passed their peak. ``images`` (T, S, R, C)."""
    images = np.asarray(images, float)
    t = images.shape[0]
    if t < 6:
        return None
    flat = images.reshape(t, -1)
    enhancement = (flat - np.median(flat[:3], axis=0)).mean(axis=1)
    last = float(enhancement[-1])
    if int(np.argmax(enhancement)) < t - 1 or not last > 0 or last - float(enhancement[-4]) < 0.2 * last:
        return None
    return (f"the series ends while the images still brighten steeply (their mean enhancement is highest at the last "
            f"frame, {t}): the bolus peak, which the segmentation and the AIF need, was not acquired; a series stopped "
            "early or cut on export? Give the whole first pass")


class Analysis:
    def __init__(self, study: Study, labels: Mapping[int, np.ndarray], model_card: dict | None = None, density: float = 1.05,
                 rest: Analysis | None = None, sector_method: str = "bai"):
        if not labels:
            raise CardiacInputError(study.source or study.name, "no label maps to analyse")
        check_density(density)   # every caller (CLI, Slicer, web GUI) passes here
        self.study = study
        self.labels = {int(t): np.asarray(m, np.uint8) for t, m in labels.items()}
        self.model_card = model_card
        self.density = density
        self.rest = rest                     # another Analysis (perfusion at rest) for MPR
        # "bai": the septum is centred between the two insertion points, so dragging either
        # handle moves the sectors (with "aha" only the anterior point defines them).
        self.sector_method = sector_method
        self.warnings = []
        # notes on how the analysis was made, said by every run (an edit's, which measures again
        # from no warnings): a setting not used, a check the network could not make (add_run_note),
        # and notes on the labels as the run gave them, said while they are so (add_mask_note)
        self.run_notes = []
        self._mask_notes = []                # (note, frame, {slice: its labels when noted})
        self.timing_s = {}
        self.cine = None
        self.perfusion = None
        self.mbf = None                      # (S, R, C) map, NaN outside the myocardium
        self.mbf_fit = None
        self._mbf_reliable = None            # (S, R, C) bool: the pixel fits that are measurements
        self.sectors = None
        self.insertion = []
        self.levels = {}                     # slice -> AHA level, slices the mask lets the analysis measure
        self.acquired_levels = {}            # perfusion: slice -> AHA level of every slice acquired
        self.level_override = None           # perfusion: levels in slice order given by a paired series' positions
        self.levels_by_positions = False     # perfusion: levels read with a paired series' slice positions (confirmed)
        self.kept_ed_es = None               # cine: (ED, ES) an edit kept where they were (the Logic)
        self._user_points = {}               # (slice, which) -> RAS of handles the user moved
        self._placed = None                  # (slice, anterior RAS, inferior RAS) placed by hand (no RV labelled)
        self.edited_frames = set()           # frames whose labels were corrected after the run (set_labels)
        self._motion_cache = {}              # frame-to-frame shifts by slice outline: an edit re-estimates the slices it reshaped
        self._thickness = None               # per-pixel wall thickness at ED (cine), cached for handle moves
        self.segment_values = {}             # AHA id -> bullseye value
        # perfusion bullseye: "mbf" (mL/min/g) or "relative_upslope" (needs no AIF calibration)
        self.bullseye_measure = "mbf"
        self._curves = None
        self.qc = None                       # qc.assess(): {"status", "flags"}
        self.model_info = None               # network name, version, sha256, mask refinement (pipeline)
        self.extra_qc = []                   # flags raised while computing (e.g. insertion fallback)
        self._check_labels()

    # --- state ---------------------------------------------------------------------------
    @property
    def kind(self):
        return self.study.kind

    @property
    def reference_frame(self):
        """The frame whose masks define geometry: ED for cine, the mask's frame for perfusion."""
        if self.kind == PERFUSION:
            return min(self.labels)
        if self.study.ed_frame is not None and self.study.ed_frame in self.labels:
            return self.study.ed_frame
        return self.cine["ed_frame"] if self.cine else min(self.labels)

    @property
    def bullseye_label(self):
        """What the bullseye shows, with its unit (every renderer uses this)."""
        if self.kind != PERFUSION:
            return "Wall thickness at ED (mm)"
        # with a rest series beside it the bullseye is the stress's (its title said "MBF"; probe 73)
        measure = BULLSEYE_TITLES[self.bullseye_measure]
        if self.rest is None:
            return measure
        return STRESS_PREFIX + (measure if measure.startswith("MBF") else measure[0].lower() + measure[1:])

    @property
    def bullseye_format(self):
        """The bullseye's number format: its measure's precision in the tables (wall thickness
        1 decimal, MBF 2, relative upslope 3; the report drew every measure with 2)."""
        from .measures import MEASURES

        key = ("wall_thickness_ed_mm_seg{id}" if self.kind != PERFUSION else
               "relative_upslope_seg{id}" if self.bullseye_measure == "relative_upslope" else "mbf_ml_min_g_seg{id}")
        return f"{{:.{MEASURES[key][2]}f}}"

    def set_bullseye_measure(self, measure: str) -> None:
        """'mbf' or 'relative_upslope' (perfusion): the segment values the bullseye shows."""
        if measure not in BULLSEYE_MEASURES:
            raise CardiacInputError("bullseye", f"unknown bullseye measure {measure!r}; use one of {', '.join(BULLSEYE_MEASURES)}")
        self.bullseye_measure = measure
        if self.kind == PERFUSION and self.perfusion is not None:
            self._perfusion_summary()

    @property
    def segment_map(self):
        return None if self.sectors is None else self.sectors.segment_map

    def _check_labels(self):
        shape = self.study.images.shape[1:]
        for t, m in self.labels.items():
            if m.shape != shape:
                raise CardiacInputError(self.study.source or self.study.name, f"label map of frame {t} has shape {m.shape}, images are {shape}")
            if not 0 <= t < self.study.n_frames:
                raise CardiacInputError(self.study.source or self.study.name, f"label map for frame {t}, but the study has {self.study.n_frames} frames")
            if not (m == MYO).any() and not (m == LV).any():
                self.warnings.append(f"frame {t}: no LV or myocardium in the label map")
        if self.kind == PERFUSION and len(self.labels) > 1:
            # one mask serves every frame (motion is corrected onto it): frames labelled otherwise
            # (an edit made on one frame of a 4D map) were left out without a word
            ref = self.labels[self.reference_frame]
            other = [t for t in sorted(self.labels) if not np.array_equal(self.labels[t], ref)]
            if other:
                shown = ", ".join(map(str, other[:5])) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
                self.warnings.append(f"perfusion is measured with one mask, frame {self.reference_frame}'s; the label map "
                                     f"differs from it on frame(s) {shown}, which are not used (edit frame "
                                     f"{self.reference_frame}, or give one 3D mask)")

    # --- computation ---------------------------------------------------------------------
    def run(self, progress: Callable | None = None) -> Analysis:
        # every reader warning (geometry, timing, AIF) travels with the result to every output, and
        # so do the notes of the network run that made the labels, from its model info
        # notes the pipeline and the CLI made on the run (an edit cleared them; session 49), and the
        # mask's while the slices they speak of are as the run gave them
        standing, redrawn = self._mask_notes_standing()
        said = (list((self.study.provenance or {}).get("warnings") or []) + network_warnings(self.model_info)
                + self.run_notes + standing)
        self.warnings = [w for w in dict.fromkeys(said) if w not in self.warnings] + \
                        [w for w in self.warnings if w not in redrawn]
        self.extra_qc = []
        from .blas import single_blas_thread

        try:
            with single_blas_thread():   # edits in the GUIs re-run this outside the pipeline
                return self._run(progress)
        except CardiacInputError as e:
            named = self._name_file(e)
            if named is e:
                raise
            raise named from e

    def add_run_note(self, note: str) -> None:
        """A note on how this analysis was made (a setting not used, a check the network could not
        make): said now and by every later run, an edit's too."""
        if note not in self.run_notes:
            self.run_notes.append(note)
        if note not in self.warnings:
            self.warnings.append(note)

    def add_mask_note(self, note: str, slices: Sequence[int], frame: int | None = None) -> None:
        """A note on the labels of ``slices`` of ``frame`` (default the reference frame) as they
        are now, e.g. the network's mask the bolus check mended on a slice: said while one of
        those slices still holds them. Redrawn, they are the user's, which the note no longer
        describes ("check the contours" of a slice the user drew); an undo says it again."""
        frame = self.reference_frame if frame is None else int(frame)
        held = {int(k): self.labels[frame][int(k)].copy() for k in slices}
        self._mask_notes.append((note, frame, held))
        if note not in self.warnings:
            self.warnings.append(note)

    def keep_notes_of(self, other: Analysis) -> None:
        """The run notes and mask notes of ``other``, an analysis of the same run these labels come
        from (a revert to the network's labels builds a fresh one: they were dropped)."""
        self.run_notes, self._mask_notes = list(other.run_notes), list(other._mask_notes)

    def _mask_notes_standing(self):
        """(notes whose slices are as they were noted, notes whose slices were all redrawn since)."""
        standing, redrawn = [], []
        for note, frame, held in self._mask_notes:
            labels = self.labels.get(frame)
            kept = labels is not None and any(np.array_equal(labels[k], mask) for k, mask in held.items())
            (standing if kept else redrawn).append(note)
        return standing, [note for note in redrawn if note not in standing]

    def _name_file(self, err):
        """Measuring code names a stage ("volume curve", "AIF", "sectors"); name the user's file."""
        st = self.study
        if err.path in (st.source, st.name) or os.path.exists(err.path):
            return err
        prov = st.provenance or {}
        if err.path in ("density", "--density"):   # a setting, not a file: name the flag
            return CardiacInputError("--density", f"{err.problem}; accepted: a tissue density in g/mL (default 1.05)")
        if err.path == "tissue":
            where = None
        elif err.path == "AIF" or "AIF" in err.problem:
            source = prov.get("aif_source")
            # an AIF file names itself; an AIF taken from the images is the images' problem
            where = source if source and os.path.exists(str(source)) else None
        else:
            files = [f.get("file") for f in prov.get("label_files", []) if f.get("file")]
            where = files[0] if len(files) == 1 else None
        return CardiacInputError(where or st.source or st.name, f"{err.problem} ({err.path})")

    def _run(self, progress=None):
        from .progress import as_progress

        # a cancel point between the measuring stages: measured in one step, a GUI's Cancel waited
        # 1.5 s for labels it was only measuring (probe 94). "measuring" keeps a run's bar where it is
        progress = as_progress(progress)

        def checkpoint(stage):   # not kept on the Analysis: it is pickled to and from a worker
            progress(1, 3, f"measuring: {stage}")
        t0 = time.perf_counter()
        if self.kind == PERFUSION:
            self._compute_mbf_map(checkpoint)
            if self.rest is not None:  # the MPR depends on the rest series: its caveats are ours
                self.warnings += _rest_warnings(self.rest)
            # the AIF and the fit; the motion correction inside is timed on its own
            self.timing_s["mbf_map"] = time.perf_counter() - t0 - self.timing_s.get("motion", 0.0)
            t0 = time.perf_counter()
        else:
            single = self.study.n_frames == 1
            if single:   # one 3D volume: it is its own ED; there is no ES
                self.study.ed_frame = self.study.es_frame = 0
            checkpoint("volumes")
            self.cine = cine_measures(self.study, self.labels, density=self.density,   # --density is the mass's too
                                      kept_ed_es=self.kept_ed_es)
            self.cine["density_g_ml"] = float(self.density)   # stated beside the mass it made, as for perfusion
            self.warnings += self.cine.pop("warnings", [])
            self._judge_given_ed_es_by_the_network()
            self._say_contours_phases()
            if single:
                # no ES: every file, table and view says "none", not frame 0 (the ED frame)
                for key in ("es_frame",) + ES_MEASURES:
                    self.cine[key] = None
                self.warnings.append("one frame only: ED volumes and mass are measured; ESV, SV and EF need a cine series")
        checkpoint("AHA segments")
        self._compute_geometry()
        self.levels_by_positions = False   # a stress measured again alone (its rest unpaired) reads by count again
        if self.kind == PERFUSION and self.rest is not None:
            self._align_rest_levels()
        self._compute_segment_values()
        checkpoint("quality control")
        self._assess()
        self.timing_s["measures"] = time.perf_counter() - t0
        return self

    def _set_rest_levels_read(self, read):
        """The rest's levels read with the stress slices' positions (``read``) or not: its level
        flags, judged when it ran alone, follow, and so do the stress's copies of its warnings."""
        rest = self.rest
        if rest.levels_by_positions == read:
            return
        rest.levels_by_positions = read
        rest._assess()
        self.warnings = [w for w in self.warnings if not w.startswith(REST_WARNING_PREFIX)] + _rest_warnings(rest)

    def _align_rest_levels(self):
        """Stress and rest take the AHA levels of their slice positions read together (both are
        in the scanner's patient coordinates; ``geometry.levels_at_shared_positions``), where
        they can be; else each keeps the levels of its own count and anatomy. By count alone,
        two rest slices at the stress mid and apical positions were called basal and mid (MPR
        2.21 for 2.92, QC pass; probe round 17), and so were two stress slices at the rest's
        (probe 53: MPR 35-84 % off)."""
        rest = self.rest
        shared = geometry.levels_at_shared_positions(
            [self.study, rest.study], [self.labels[self.reference_frame], rest.labels[rest.reference_frame]])
        # a series' levels are read, not guessed from its count, only where the other series adds
        # positions to its own: stress and rest at the same two positions are still two slices
        # named by their count (review: the apex read as mid segments, unflagged)
        confirmed = (False, False)
        if shared is not None:
            distinct = len(set(shared[0]) | set(shared[1]))
            confirmed = tuple(distinct > len(set(levels)) for levels in shared)
        self.levels_by_positions = confirmed[0]
        self._set_rest_levels_read(confirmed[1])
        if shared is None:
            return
        for analysis, levels in ((self, shared[0]), (rest, shared[1])):
            if tuple(levels) == tuple(analysis.acquired_levels.get(k) for k in range(analysis.study.n_slices)):
                continue
            analysis.level_override = tuple(levels)
            if analysis is rest:
                rest.run()
                # measured again: each of its warnings once (those the pipeline added after its first run kept)
                rest.warnings = list(dict.fromkeys(rest.warnings))
                self._set_rest_levels_read(confirmed[1])   # its run read them by count again
            else:
                self._compute_geometry()
        for analysis, others in ((self, "rest"), (rest, "stress")):
            if analysis.level_override is None:
                continue
            # the series' own note, so that it stays through edits of either series
            note = (f"its {analysis.study.n_slices} slice(s) take the levels of their positions among the {others} "
                    f"series' slices ({', '.join(analysis.level_override)}), not the levels their own count and "
                    "anatomy would give")
            if note not in analysis.warnings:
                analysis.warnings.append(note)
        self.warnings = [w for w in self.warnings if not w.startswith(REST_WARNING_PREFIX)]
        self.warnings += _rest_warnings(rest)

    def _assess(self):
        from .qc import REVIEW, assess

        self.qc = assess(self)
        self.warnings = [w for w in self.warnings if not w.startswith("QC ")]
        self.warnings += [f"QC {f['code']}: {f['message']}" for f in self.qc["flags"] if f["severity"] == REVIEW]

    def _judge_given_ed_es_by_the_network(self):
        """ED_ES_DISAGREE from ``ed_es_network_lv_ml`` (the network's LV volumes at the frames the
        images' blood pool points at; ``pipeline.given_ed_es_checked_by_the_network``), judged
        against this run's ED and ES volumes: kept through edits, which measure the cycle again
        (a flag set once was lost at the first edit; review of session 44)."""
        from .cine import ED_ES_EF_POINTS
        from .qc import ed_es_disagree_flag

        extra = getattr(self, "ed_es_network_lv_ml", None) or {}
        c = self.cine or {}
        ed, es = c.get("ed_frame"), c.get("es_frame")
        if not extra or ed is None or es is None or c.get("lv_ef_pct") is None or not c.get("lv_edv_ml"):
            return
        lv = {**{int(t): float(v) for t, v in extra.items() if t not in (ed, es)}, ed: c["lv_edv_ml"], es: c["lv_esv_ml"]}
        largest, smallest = max(lv, key=lv.get), min(lv, key=lv.get)
        if not lv[largest] > 0:
            return
        ef = 100.0 * (lv[largest] - lv[smallest]) / lv[largest]
        if ef - c["lv_ef_pct"] > ED_ES_EF_POINTS:
            self.extra_qc.append(ed_es_disagree_flag(
                ed, es, "the network's LV volume (at the frames given and where the images' blood pool is largest and "
                        "smallest)", largest, smallest, ef, c["lv_ef_pct"]))

    def _say_contours_phases(self):
        """A network's labels measured at the ED/ES the study's contours gave (the experts'
        phases, which the same network without the contours put elsewhere: EF 26.3 against
        27.9 % in the web GUI, unsaid; probe 75). Not for the contours themselves, edited or not."""
        given = (self.study.provenance or {}).get("ed_es_from")
        if not given or not self.model_info or self.kept_ed_es is not None:
            return
        frames = [f"{name} frame {self.cine[key] + 1}" for name, key in (("ED", "ed_frame"), ("ES", "es_frame"))
                  if given.get(name.lower()) and self.cine.get(key) is not None]
        if frames:
            self.warnings.append(f"{' and '.join(frames)} (counted from 1): as {given['by']} give "
                                 f"{'them' if len(frames) > 1 else 'it'}, not this segmentation's volume curve")

    def _compute_mbf_map(self, checkpoint=lambda stage: None):
        from .perfusion.mbf import fit_map, mbf_map

        st = self.study
        # signal read as linear in Gd is QC's SIGNAL_UNITS note (or, for an AIF from the LV, AIF_FROM_LV's)
        times = st.frame_times_s
        if times is None or len(times) < 2:
            raise CardiacInputError(st.source or st.name, "frame times are needed (give --dt)")
        mask = self.labels[self.reference_frame] == MYO
        if not mask.any():
            # from the network, nothing says why unless the reading of the series is named: a
            # series with its frames in reverse time order, or without contrast, stopped here with no reason
            # given (session 29)
            found = (st.provenance or {}).get("aif_detection") or {}
            edited = self.reference_frame in self.edited_frames
            if edited or not self.model_info:
                # an edit that erased it is the user's, not the network's (its causes and the CLI's
                # --labels were given for a mask erased by hand; probe 76)
                why = (f"the {'edited mask' if edited else 'label map'} has no myocardium at frame "
                       f"{self.reference_frame + 1} (counted from 1)")
            elif found.get("confidence") == "high" and found.get("rv_peak_frame") is not None:
                # (an AIF series beside the images is "high" too, with no pools in these images)
                # the bolus showed the RV, then the LV beside it: the heart is there and the network
                # missed its wall; the possible causes below do not apply (probe 61)
                why = ("the network found no myocardium, though the bolus shows a heart (the RV lights up at frame "
                       f"{found.get('rv_peak_frame')}, the LV at frame {found.get('lv_peak_frame')}): the segmentation "
                       "failed on this series, or its frames are not what they seem (in reverse time order?)")
            else:
                why = ("the network found no myocardium in the series: one with no first pass (no contrast, frames in "
                       "reverse time order) or no short-axis heart in it?")
            if not edited and (self.model_info or {}).get("source") == "user":
                # an imported network that labels the LV pool as the RV (or finds nothing) left the
                # user checking the series alone (probe 95)
                why += (f"; the network {self.model_info.get('name')!r} is an imported model: check its card (the order "
                        "of its classes, input.pixel_mm, the normalisation it was trained with)")
            cut = None if edited or not self.model_info else _still_rising_at_the_end(st.images)
            if cut:
                # the network's key image is the bolus peak: a series that ends on the upslope has
                # none, and "give the masks yourself" led nowhere, since MBF needs the peak too (probe 82)
                raise CardiacInputError(st.source or st.name, f"the myocardial mask is empty: nothing to quantify ({cut})")
            way = "; give the masks yourself (--labels)" if self.model_info and not edited else ""
            raise CardiacInputError(st.source or st.name, f"the myocardial mask is empty: nothing to quantify ({why}){way}")
        # --- the series itself, named, before a fit whose errors would blame the AIF (readers/)
        from .readers.geometry_check import check_not_blank
        from .readers.series_kind import check_perfusion_frames

        check_perfusion_frames(st)
        check_not_blank(st.source or st.name, st.images)
        # --- motion correction (issue 9, perfusion/motion.py): each frame moved onto the mask before its curves
        # are read, on the frames as acquired, so the frame-to-frame alignment the network mask's
        # bolus check estimated on them (provenance "frame_alignment") is reused, not redone
        from .perfusion.motion import correct as motion_correct

        checkpoint("motion correction")
        t0 = time.perf_counter()
        images, st.provenance["motion"] = motion_correct(st.images, self.labels[self.reference_frame],
                                                         st.spacing_rc,
                                                         alignments=st.provenance.get("frame_alignment"),
                                                         cache=self._motion_cache)
        self.timing_s["motion"] = time.perf_counter() - t0
        # an AIF from the LV pool is read on the frames moved onto the mask, as the tissue is: on
        # the frames as acquired, breathing put pool-edge pixels in the myocardium at the bolus
        # peak (breathing phantom, seeds 0-3: global MBF +3 to +12 %, segments 7-12 % off)
        aif = self._aif(images)
        times = np.asarray(times, float) - float(times[0])
        # the motion-corrected curves as acquired, on their real times: the semi-quantitative
        # indices, QC's blood-likeness and the perfusion RV insertion points (RV at its peak
        # enhancement) read these. On the fit's grid (half the interval when the heartbeats vary)
        # a 3-frame upslope spanned half the time: one ectopic beat 20 s after the first pass
        # moved MPRI 10-20 % (probe 42)
        self._curves = (images, aif, times)
        grid_images, dt = _regular_frames(images, times)
        if grid_images is not images:
            aif = np.interp(np.arange(grid_images.shape[0]) * dt, times, aif)
        checkpoint("MBF fit")
        self.mbf, self.mbf_fit = mbf_map(grid_images, mask, aif, dt, density=self.density)
        self._mbf_reliable = fit_map(mask, self.mbf_fit, "reliable")   # per-segment fit quality (_perfusion_summary)

    def _aif(self, images):
        """The study's AIF; when it came from the LV blood pool (no separate AIF), the labelled LV
        pool of the slice with the largest one, eroded, read on ``images`` (the motion-corrected
        frames), replaces the bolus-detected one."""
        st = self.study
        source = (st.provenance or {}).get("aif_source")
        lv = self.labels[self.reference_frame] == LV
        if (st.aif is None or source == "lv_blood_pool") and lv.any():
            k = int(np.argmax(lv.sum(axis=(1, 2))))
            st.aif = self._lv_pool_curve(images)
            st.provenance["aif_source"] = "lv_blood_pool"
            st.provenance.setdefault("aif_detection", {})["from_labels_slice"] = k
        if st.aif is None:
            why = ((st.provenance or {}).get("aif_detection") or {}).get("error", "no LV blood pool in the labels")
            raise CardiacInputError(st.source or st.name, f"perfusion study has no arterial input function and none could be "
                                                          f"taken from the LV ({why}): give --aif")
        return st.aif

    def _pool_without_bolus(self, error):
        """The error for a labelled LV blood pool in which no bolus passes (``find_foot`` refused its
        curve): the labels are not on this series' LV. Said as the AIF's fault ("AIF is flat"), it
        sent the user to a file that was fine while the label map was mirrored (s49)."""
        import re

        detail = re.search(r"\(([^()]*)\)", error.problem)
        curve = f" ({detail.group(1)})" if detail else ""
        if self.model_info:
            return CardiacInputError("labels", f"the network's LV blood pool shows no contrast bolus{curve}: it did not find "
                                               "the LV of this series; draw or give the labels")
        return CardiacInputError("labels", f"the labelled LV blood pool shows no contrast bolus{curve}, which the LV of a "
                                           "first pass always does: the label map does not lie on this series' LV "
                                           "(mirrored, shifted, or another series' map?)")

    def _lv_reference_curve(self, images):
        """The LV blood pool curve of ``images`` as an AIF from the LV is read (the largest labelled
        pool's slice, eroded), or None without an LV pool."""
        if (self.study.provenance or {}).get("aif_source") == "lv_blood_pool":
            return self.study.aif
        return self._lv_pool_curve(images)

    def _lv_pool_curve(self, images):
        """The mean curve of the labelled LV blood pool of the slice where it is largest, eroded
        (``bolus.aif_from_lv``), on ``images``; None without an LV pool."""
        from .perfusion.bolus import aif_from_lv

        lv = self.labels[self.reference_frame] == LV
        if not lv.any():
            return None
        k = int(np.argmax(lv.sum(axis=(1, 2))))
        return aif_from_lv(images[:, k], lv[k])

    def _compute_geometry(self):
        ref = self.labels[self.reference_frame]
        st = self.study
        levels_found = True
        if st.kind == PERFUSION:
            acquired = self.level_override or geometry.perfusion_slice_levels(st, ref)
            self.acquired_levels = dict(enumerate(acquired))
            self.levels = geometry.slice_levels(ref, st, perfusion_levels=acquired)
        else:
            try:
                self.levels = geometry.slice_levels(ref, st)
            except CardiacInputError as e:
                # no slice with both LV pool and myocardium: no AHA segments, but volumes, EF and
                # mass are still measured (and QC flags the missing structure)
                self.levels, levels_found = {}, False
                self.warnings.append(f"{e.problem}: AHA segments not assigned; volumes are measured as labelled")
        self.insertion = []
        # perfusion finds the RV from the bolus (blood peaking before the LV) even where the mask has none
        if ((ref == RV).any() or st.kind == PERFUSION) and levels_found:
            try:
                bolus = None if self._curves is None else (self._curves[0], float(np.median(np.diff(self._curves[2]))))
                self.insertion = geometry.study_insertion_points(st, ref, fill_missing=True, bolus_frames=bolus)
                estimated = [p for p in self.insertion if p.get("warning")]
                if estimated:
                    from .qc import REVIEW, _flag

                    self.extra_qc.append(_flag("INSERTION_POINTS_ESTIMATED", REVIEW,
                                               f"RV insertion points estimated on slice(s) {[p['slice'] for p in estimated]}: "
                                               f"{estimated[0]['warning']}"))
            except CardiacInputError as e:
                # Volumes, EF and mass never depend on insertion points: measure on, say why,
                # and leave the points to the user (Slicer / web GUI handles).
                from .qc import REVIEW, _flag

                self.extra_qc.append(_flag("INSERTION_POINTS_MISSING", REVIEW, f"RV insertion points not found ({e.problem}); "
                                           "AHA segments are not assigned: volumes, EF and mass are unaffected"))
        for (k, which), ras in self._user_points.items():
            for p in self.insertion:
                if p["slice"] == k:
                    p[f"{which}_ras"] = list(map(float, ras))
                    p[f"{which}_ijk"] = list(map(float, st.ras_to_ijk_points(ras)[0]))
        if not self.insertion:
            self.sectors = None
            self.warnings.append("no RV insertion points (no RV next to the LV): AHA segments not assigned")
            return
        self.sectors = geometry.SectorState(ref, self.insertion, self.levels, st.spacing,
                                            method=self.sector_method, ijk_to_ras=st.ijk_to_ras)
        for (k, which), ras in self._user_points.items():
            if k in self.sectors.slices:
                self.sectors.move(k, which, new_ras=ras)

    def _compute_segment_values(self):
        if self.kind == PERFUSION:
            self._perfusion_summary()
        else:
            from .wall import segment_means, wall_thickness_map

            if self._thickness is None:
                sp = self.study.spacing
                self._thickness = wall_thickness_map(self.labels[self.reference_frame], (sp[1], sp[0]))
            self.segment_values = segment_means(self._thickness, self.segment_map) if self.sectors else {}

    def _perfusion_summary(self):
        from .perfusion.mbf import segment_mbf

        seg = self.segment_map if self.sectors else np.zeros(self.mbf.shape, np.int16)
        # each segment's share of fits that are no measurement (delay at the range's end, a
        # parameter on its bound, r² under R2_MIN): a segment more than 30 % such is flagged
        # (qc MBF_SEGMENT_UNRELIABLE). Without it a saturated LV-signal AIF read four segments
        # at twice the truth, 33-47 % of their fits unreliable, with QC pass (probe 37)
        reliable = self._mbf_reliable
        summary = segment_mbf(self.mbf, seg, reliable=reliable)
        finite = self.mbf[np.isfinite(self.mbf)]
        glob = float(np.median(finite)) if finite.size else float("nan")
        spread = pixel_spread(self.mbf, seg)
        segments = [{"id": s["id"], "name": s["name"], "territory": s["territory"],
                     "mbf_ml_min_g": s["mbf_ml_min_g"], "n_pixels": s["n_pixels"], "pixel_spread": spread.get(s["id"]),
                     **({"unreliable_fraction": None if not s["n_pixels"] else round(s["unreliable_fraction"], 3),
                         "fit_unreliable": s["flagged"]} if reliable is not None else {})}
                    for s in summary["segments"]]
        self.perfusion = {"global_mbf_ml_min_g": glob, "density_g_ml": self.density, "statistic": "median",
                          "n_pixels": int(finite.size), "segments": segments,
                          "territories": summary["territories"]}
        self.segment_values = {s["id"]: s["mbf_ml_min_g"] for s in segments}
        if self._curves is not None:
            from .perfusion.semiquant import semiquant_indices

            images, aif, times = self._curves
            myo = self.labels[self.reference_frame] == MYO
            # relative upslope is the wall's upslope over the LV blood's in the same images (what
            # cancels coil sensitivity and injection); over a given AIF it followed that file's
            # scale one for one: an AIF 1.3x the LV blood read relative upslope -23 % and stress
            # MPRI -23 % with QC pass (probe 69). Only where no LV pool is labelled the AIF serves.
            reference, reference_name = self._lv_reference_curve(images), "LV blood pool of the images"
            if reference is None:
                reference, reference_name = aif, "the AIF (no LV blood pool labelled)"
            try:
                sq = semiquant_indices(images, myo, self.segment_map if self.sectors else None, reference, times)
            except CardiacInputError as e:
                if reference is aif:
                    raise
                raise self._pool_without_bolus(e) from None
            sq["reference"] = reference_name
            self.perfusion["semiquantitative"] = sq
            if self.bullseye_measure == "relative_upslope":
                self.segment_values = {s["id"]: s["relative_upslope"] for s in self.perfusion["semiquantitative"]["segments"]}
        if self.rest is not None and self.rest.perfusion is not None:
            from .perfusion.mbf import mpr

            # the rest series' own values beside the reserve made from them: an MPR of 3.5 reads
            # differently over a rest MBF of 0.6 and of 1.4 (it was in no output but the ratio)
            self.perfusion["rest"] = {k: v for k, v in self.rest.perfusion.items() if k not in ("mpr", "mpri", "rest")}
            self.perfusion["mpr"] = mpr(_for_mpr(self.perfusion), _for_mpr(self.rest.perfusion))
            sq, rest_sq = self.perfusion.get("semiquantitative"), self.rest.perfusion.get("semiquantitative")
            if sq and rest_sq and sq.get("reference") != rest_sq.get("reference"):
                # one against the LV blood, the other against an AIF: their ratio carries the AIF's
                # scale (the fault the LV reference removes; the review of probe 69's change)
                note = (f"MPRI not given: the stress relative upslope is read against {sq.get('reference')}, the rest's "
                        f"against {rest_sq.get('reference')}; label the LV blood pool on both")
                if note not in self.warnings:
                    self.warnings.append(note)
            elif sq and rest_sq:
                from .perfusion.semiquant import mpri

                self.perfusion["mpri"] = mpri(sq, rest_sq)
            for key in ("mpr", "mpri"):
                note = (self.perfusion.get(key) or {}).get("coverage")
                if note and note not in self.warnings:
                    self.warnings.append(note)

    # --- edits ---------------------------------------------------------------------------
    def move_insertion_point(self, slice_index: int, which: str, ras: Ras):
        """A dragged handle: re-bin that slice's sectors and refresh the segment values only."""
        if self.sectors is None:
            raise CardiacInputError("insertion point", "no AHA sectors to update (no RV insertion points)")
        changed = self.sectors.move(int(slice_index), which, new_ras=ras)
        self._user_points[(int(slice_index), which)] = tuple(map(float, ras))
        for p in self.insertion:
            if p["slice"] == int(slice_index):
                p[f"{which}_ras"] = list(map(float, ras))
        if self.kind == PERFUSION:
            self._perfusion_summary()
        else:
            from .wall import segment_means

            self.segment_values = segment_means(self._thickness, self.segment_map)
        self._assess()
        return changed

    def place_insertion_points(self, slice_index: int, anterior_ras: Ras, inferior_ras: Ras, keep_moved: bool = False) -> list[int]:
        """RV insertion points placed by hand on one slice, for labels with no RV (LV-only
        contours): AHA sectors from them; every other level slice takes their directions about
        its own LV centre. ``keep_moved``: handles dragged since keep their place (the same
        points placed again after an edit re-measured the labels). Returns the slices with sectors."""
        st, k = self.study, int(slice_index)
        if k not in self.levels:
            raise CardiacInputError("insertion point", f"slice {k} has no LV blood pool and myocardium to place them on; "
                                                       f"slices with an AHA level: {sorted(self.levels)}")
        ref = self.labels[self.reference_frame]
        rows, cols = np.nonzero((ref[k] == LV) | (ref[k] == MYO))
        (ai, aj, _), (ii, ij, _) = st.ras_to_ijk_points([list(anterior_ras), list(inferior_ras)])
        placed = {"slice": k, "anterior_ijk": (float(ai), float(aj), float(k)), "inferior_ijk": (float(ii), float(ij), float(k)),
                  "centre_ijk": (float(cols.mean()), float(rows.mean()), float(k))}
        sectors = geometry.SectorState(ref, [placed], self.levels, st.spacing, method=self.sector_method, ijk_to_ras=st.ijk_to_ras)
        self.insertion = []
        for kk in sorted(sectors.slices):
            p = sectors.points(kk)
            self.insertion.append({"slice": kk, "anterior_ijk": p["anterior_ijk"], "inferior_ijk": p["inferior_ijk"],
                                   "anterior_ras": list(p["anterior_ras"]), "inferior_ras": list(p["inferior_ras"]),
                                   "source": "hand" if kk == k else "neighbour", "borrowed_from": None if kk == k else k})
        self.sectors = sectors
        self.warnings = [w for w in self.warnings if not w.startswith("no RV insertion points")]
        self.warnings.append(f"RV insertion points placed by hand on slice {k}; the other slices take their directions")
        # dragged handles are re-applied after a re-measure: a new placement starts without them
        moved = dict(self._user_points) if keep_moved else {}
        self._user_points.clear()
        self._placed = (k, [float(v) for v in anterior_ras], [float(v) for v in inferior_ras])
        self.move_insertion_point(k, "anterior", self.insertion[[p["slice"] for p in self.insertion].index(k)]["anterior_ras"])
        for (kk, side), ras in moved.items():       # (the move above re-measures segment values and QC)
            if kk in sectors.slices:
                self.move_insertion_point(kk, side, list(ras))
        return sorted(sectors.slices)

    def set_labels(self, frame: int, label_map: np.ndarray) -> Analysis:
        """A corrected segmentation of one frame: recompute everything that depends on it."""
        label_map = np.asarray(label_map, np.uint8)
        if label_map.shape != self.study.images.shape[1:]:
            raise CardiacInputError("segmentation", f"edited label map has shape {label_map.shape}, images are {self.study.images.shape[1:]}")
        # A map that cannot be measured (the ED blood pool erased) is refused whole: half taken,
        # the next export wrote the old volumes beside the erased map (EDV 108.7 mL, QC pass)
        # and the next handle drag raised an IndexError (probe 62)
        before = dict(self.__dict__, labels=dict(self.labels), edited_frames=set(self.edited_frames),
                      _user_points=dict(self._user_points))
        # what a run writes onto the study (the LV's AIF, its detection, motion) and the rest's
        # levels, as they were (helper-88's review)
        st = self.study
        study_before = (st.aif, dict(st.provenance or {}), st.ed_frame, st.es_frame)
        rest_before = dict(self.rest.__dict__) if self.rest is not None else None
        try:
            self.labels[int(frame)] = label_map
            self._snr_cache = None               # qc._snr_of: the map may be the same array, edited in place
            self.edited_frames.add(int(frame))
            self._thickness = None
            self.warnings = []
            self.run()
            # labels with no RV find no insertion points of their own: the ones placed by hand (and
            # the handles dragged since) stay, in every front end (the web GUI alone put them back)
            if self.sectors is None and self._placed is not None and self._placed[0] in self.levels:
                self.place_insertion_points(*self._placed, keep_moved=True)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            st.aif, st.provenance, st.ed_frame, st.es_frame = study_before
            if rest_before is not None:
                self.rest.__dict__.clear()
                self.rest.__dict__.update(rest_before)
            raise
        return self

    @property
    def hand_placed_slice(self):
        """The slice insertion points were placed on by hand (labels with no RV), else None."""
        return None if self._placed is None else int(self._placed[0])

    # --- outputs -------------------------------------------------------------------------
    def insertion_summary(self) -> list[dict]:
        return [{"slice": int(p["slice"]), "anterior_ras": _list(p.get("anterior_ras")), "inferior_ras": _list(p.get("inferior_ras"))}
                for p in self.insertion]

    def results(self) -> dict:
        cine = self.cine
        if cine is not None:
            # the per-segment wall thickness the table, the CSV and the bullseye show (it was in
            # every output but results.json)
            cine = dict(cine, segments=[{"id": sid, "name": AHA_BY_ID[sid]["name"], "wall_thickness_ed_mm": value}
                                        for sid, value in sorted(self.segment_values.items())])
        # what the report's and the GUIs' bullseye showed (perfusion: MBF or relative upslope, the
        # user's choice, which no output recorded)
        bullseye = {"measure": self.bullseye_measure if self.kind == PERFUSION else "wall_thickness_ed_mm",
                    "label": self.bullseye_label}
        return {"kind": self.kind, "cine": cine, "perfusion": self.perfusion, "bullseye": bullseye,
                "rv_insertion": self.insertion_summary(), "warnings": list(self.warnings), "qc": self.qc}

    def table_rows(self) -> list[dict]:
        """Rows {key, measure, value, unit, decimals} (``measures.MEASURES``) for results.csv, the
        Slicer table node and the web GUI."""
        from .measures import CINE_KEYS, row

        rows = []
        if self.cine:
            rows += [row(key, self.cine.get(key)) for key in CINE_KEYS]
            rows.append(row("density_g_ml", self.cine.get("density_g_ml")))
            rows += [row("wall_thickness_ed_mm_seg{id}", v, segment=sid) for sid, v in sorted(self.segment_values.items())]
        if self.perfusion:
            p = self.perfusion
            rows.append(row("global_mbf_ml_min_g", p["global_mbf_ml_min_g"]))
            rows.append(row("density_g_ml", p["density_g_ml"]))
            rows += [row("mbf_ml_min_g_seg{id}", s["mbf_ml_min_g"], segment=s["id"]) for s in p["segments"]]
            rows += [row("mbf_ml_min_g_{territory}", t["mbf_ml_min_g"], territory=name) for name, t in p["territories"].items()]
            rest = p.get("rest")
            if rest:
                rows.append(row("rest_global_mbf_ml_min_g", rest["global_mbf_ml_min_g"]))
                rows += [row("rest_mbf_ml_min_g_seg{id}", s["mbf_ml_min_g"], segment=s["id"]) for s in rest["segments"]]
                rows += [row("rest_mbf_ml_min_g_{territory}", t["mbf_ml_min_g"], territory=name)
                         for name, t in rest["territories"].items()]
                rest_sq = (rest.get("semiquantitative") or {}).get("global")
                if rest_sq:   # the rest indices the MPRI is made from (results.json had them, the CSV not)
                    units = "mmol/L" if self.rest.study.units == "gd_mmol_l" else "signal"
                    rows += [row("rest_upslope_global", rest_sq["upslope"], units=units),
                             row("rest_relative_upslope_global", rest_sq["relative_upslope"]),
                             row("rest_peak_enhancement_global", rest_sq["peak_enhancement"], units=units),
                             row("rest_time_to_peak_s_global", rest_sq["time_to_peak_s"])]
                    # and per segment, as the stress's: the CSV held the MPRI per segment but not the
                    # rest values it is made from (results.json did; probe 69)
                    for s in rest["semiquantitative"].get("segments", []):
                        rows += [row("rest_upslope_seg{id}", s["upslope"], segment=s["id"], units=units),
                                 row("rest_relative_upslope_seg{id}", s["relative_upslope"], segment=s["id"]),
                                 row("rest_peak_enhancement_seg{id}", s["peak_enhancement"], segment=s["id"], units=units),
                                 row("rest_time_to_peak_s_seg{id}", s["time_to_peak_s"], segment=s["id"])]
            if "mpr" in p:
                rows.append(row("mpr_global", p["mpr"]["global"]))
                rows += [row("mpr_seg{id}", s["mpr"], segment=s["id"]) for s in p["mpr"]["segments"]]
                rows += [row("mpr_{territory}", v, territory=name) for name, v in (p["mpr"].get("territories") or {}).items()]
            sq = p.get("semiquantitative")
            if sq:
                g, units = sq["global"], "mmol/L" if self.study.units == "gd_mmol_l" else "signal"
                rows += [row("upslope_global", g["upslope"], units=units),
                         row("relative_upslope_global", g["relative_upslope"]),
                         row("peak_enhancement_global", g["peak_enhancement"], units=units),
                         row("time_to_peak_s_global", g["time_to_peak_s"])]
                for s in sq["segments"]:
                    rows += [row("upslope_seg{id}", s["upslope"], segment=s["id"], units=units),
                             row("relative_upslope_seg{id}", s["relative_upslope"], segment=s["id"]),
                             row("peak_enhancement_seg{id}", s["peak_enhancement"], segment=s["id"], units=units),
                             row("time_to_peak_s_seg{id}", s["time_to_peak_s"], segment=s["id"])]
            if p.get("mpri"):
                rows.append(row("mpri_global", p["mpri"]["global"]))
                rows += [row("mpri_seg{id}", v, segment=sid) for sid, v in sorted(p["mpri"]["segments"].items())]
        if self.qc:
            # tables hold numbers: the status row counts the flags to review (0 = pass), each
            # flag row carries its code and message in the measure, its value (if any) in Value
            n_review = sum(f["severity"] == "review" for f in self.qc["flags"])
            rows.append(row("qc_review_flags", n_review, status=self.qc["status"]))
            for f in self.qc["flags"]:
                value = f.get("value")
                rows.append(row("qc_{code}", value if isinstance(value, float) else None, code=f["code"],
                                severity=f["severity"], message=f["message"]))
        return rows


# what a perfusion bullseye can show, and its title (the report's fixed scales are keyed by it)
BULLSEYE_TITLES = {"mbf": "MBF (mL/min/g)", "relative_upslope": "Relative upslope (myocardium/LV)"}
BULLSEYE_MEASURES = tuple(BULLSEYE_TITLES)
# Measures a single 3D volume cannot give: it has no ES.
ES_MEASURES = ("lv_esv_ml", "lv_sv_ml", "lv_ef_pct", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct")


def _regular_frames(images, times):
    """(images, dt) on the regular time grid of the fit (``mbf.fit_interval``): irregular
    heartbeats give irregular frame times, and the fit's convolution needs one interval, so
    curves are interpolated on the real times (unchanged when they are already regular)."""
    from .perfusion.mbf import fit_interval

    times = np.asarray(times, float)
    dt, resampled = fit_interval(times)
    if not resampled:
        return images, dt
    grid = np.arange(0.0, times[-1] - times[0] + 1e-9, dt) + times[0]
    idx = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 2)
    w = ((grid - times[idx]) / (times[idx + 1] - times[idx]))[:, None, None, None]
    return (images[idx] * (1 - w) + images[idx + 1] * w).astype(np.float32), dt


def _for_mpr(p):
    return {"segments": p["segments"], "territories": p["territories"], "global": {"mbf_ml_min_g": p["global_mbf_ml_min_g"]}}


def _list(v):
    return None if v is None else [float(x) for x in v]
