"""report.png: contours and RV insertion points on three short-axis slices per frame, the AHA
16-segment bullseye and the LV volume curve.

matplotlib is imported inside functions and used through ``Figure`` + the Agg canvas, not
pyplot: no global figure state, no display, safe from the web GUI's threads.

Slices are drawn as Slicer shows a slice view rotated to the volume plane, with its
radiological convention: screen right points to patient Left and screen up to Anterior
(patient Right on the left of the screen). The in-plane array axes (j rows, i columns) are
transposed and/or flipped, whichever of the 8 choices brings screen-right closest to L and
screen-up closest to A; for a short-axis stack that is the usual cardiac view (RV and septum
on the left, anterior wall up), the same view the bullseye uses.
"""
import math
from dataclasses import dataclass

import numpy as np

from .aha import AHA_SEGMENTS, TERRITORIES
from .labels import LV, MYO, RV, SEGMENTS
from .scene import atomic_output

FIG_WIDTH_IN = 12.0
TITLE_IN = 1.0   # title, up to two lines of key measures, the QC line
FRAME_ROW_IN = 4.0
BOTTOM_ROW_IN = 4.6
DPI = 100
# zlib level of report.png: 1 encodes a 1200x1320 report in half the time of PIL's default 6
# (45 vs 90 ms CPU, issue 14) for a file about 7 % larger
PNG_COMPRESS_LEVEL = 1

# (inner, outer) radius of each ring: basal outside, apical inside, as looked at from the apex.
RINGS = {"basal": (2 / 3, 1.0), "mid": (1 / 3, 2 / 3), "apical": (0.0, 1 / 3)}


def report_size_px(n_frame_rows, bottom_row, dpi=DPI):
    """(width, height) in pixels of a report with ``n_frame_rows`` rows of slices."""
    h = TITLE_IN + FRAME_ROW_IN * n_frame_rows + (BOTTOM_ROW_IN if bottom_row else 0.0)
    return int(round(FIG_WIDTH_IN * dpi)), int(round(h * dpi))


# ---------------------------------------------------------------------- slice display
@dataclass
class SliceView:
    """How an (R, C) slice becomes a screen image; see the module docstring."""
    transpose: bool
    flip_x: bool
    flip_y: bool
    n_rows: int
    n_cols: int
    aspect: float   # screen pixel height / width in mm, for imshow

    def image(self, a):
        a = a.T if self.transpose else a
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1, :]
        return a

    def point(self, i, j):
        """Continuous column i, row j -> screen (x, y) in imshow pixel coordinates."""
        x, y = (j, i) if self.transpose else (i, j)
        w, h = (self.n_rows, self.n_cols) if self.transpose else (self.n_cols, self.n_rows)
        if self.flip_x:
            x = w - 1 - x
        if self.flip_y:
            y = h - 1 - y
        return x, y


def slice_view(ijk_to_ras, shape_rc):
    m = np.asarray(ijk_to_ras, float)[:3, :3]
    di, dj = m[:, 0] / np.linalg.norm(m[:, 0]), m[:, 1] / np.linalg.norm(m[:, 1])
    left, anterior = np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    best = None
    for transpose in (False, True):
        # Without transpose screen x runs along i (columns) and screen y down along j.
        x_dir, y_down = (dj, di) if transpose else (di, dj)
        for fx in (False, True):
            for fy in (False, True):
                right = -x_dir if fx else x_dir
                up = y_down if fy else -y_down
                score = right @ left + up @ anterior
                if best is None or score > best[0] + 1e-9:
                    best = (score, transpose, fx, fy)
    _, transpose, fx, fy = best
    si, sj = np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1])
    aspect = (si / sj) if transpose else (sj / si)
    return SliceView(transpose, fx, fy, shape_rc[0], shape_rc[1], aspect)


def representative_slices(label_map, levels=None):
    """[(k, "basal"|"mid"|"apical")] among slices showing LV. Named by ``levels`` ({k: level},
    the analysis's AHA levels) when it names every pick, else basal = the end with more blood pool."""
    lm = np.asarray(label_map)
    ks = [k for k in range(lm.shape[0]) if (lm[k] == MYO).any() or (lm[k] == LV).any()]
    if not ks:
        ks = list(range(lm.shape[0]))
    picks = sorted({ks[int(round(f * (len(ks) - 1)))] for f in (0.15, 0.5, 0.85)})
    if len(picks) == 1:
        return [(picks[0], "mid")]
    first_area, last_area = (lm[picks[0]] == LV).sum(), (lm[picks[-1]] == LV).sum()
    names = ["basal", "mid", "apical"] if first_area >= last_area else ["apical", "mid", "basal"]
    if len(picks) == 2:
        names = [names[0], names[2]]
    if levels and all(k in levels for k in picks):
        names = [levels[k] for k in picks]
    out = list(zip(picks, names))
    return sorted(out, key=lambda p: (("basal", "mid", "apical").index(p[1]), p[0]))


def _no_ticks(ax):
    """A framed image without ticks. Locators that place none, rather than set_xticks([]):
    the same pixels, but no tick objects are built and laid out (0.03 s of a 0.15-0.3 s report)."""
    from matplotlib.ticker import NullLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(NullLocator())
        axis.set_minor_locator(NullLocator())


def _draw_slice(ax, image, label_map, view, k, level, points, frame, ras_to_ijk, frame_name=""):
    lo, hi = np.percentile(image, [1, 99.5]) if image.size else (0, 1)
    ax.imshow(view.image(image[k]), cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6),
              aspect=view.aspect, interpolation="nearest")
    if label_map is not None:
        lm = view.image(np.asarray(label_map[k]))
        for mask, colour, name in (((lm == LV), SEGMENTS["LV blood pool"][1], "LV endo"),
                                   (((lm == LV) | (lm == MYO)), SEGMENTS["LV myocardium"][1], "LV epi"),
                                   ((lm == RV), SEGMENTS["RV"][1], "RV")):
            if mask.any() and not mask.all():
                # contoured on the mask's bounding box and one pixel around it, placed by its
                # pixel coordinates: the same lines as on the whole slice, at a fraction of the cost
                rows, cols = np.nonzero(mask)
                r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, mask.shape[0])
                c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, mask.shape[1])
                ax.contour(np.arange(c0, c1), np.arange(r0, r1), mask[r0:r1, c0:c1].astype(float),
                           levels=[0.5], colors=[colour], linewidths=1.5)
    for p in points or ():
        if int(p["slice"]) != k:
            continue
        for side, marker in (("anterior", "o"), ("inferior", "s")):
            ras = p.get(f"{side}_ras")
            if ras is None:
                continue
            ijk = ras_to_ijk[:3, :3] @ np.asarray(ras, float) + ras_to_ijk[:3, 3]
            x, y = view.point(ijk[0], ijk[1])
            ax.plot([x], [y], marker=marker, ms=7, mfc="yellow", mec="black", ls="none")
            ax.annotate(side[0].upper(), (x, y), xytext=(5, 5), textcoords="offset points",
                        color="yellow", fontsize=9, weight="bold")
    # frames counted from 1, as Info.cfg, the scanner, the web GUI and the QC messages count them
    # (the report's "frame 0" was ACDC's frame 1; probe 73)
    ax.set_title(f"{frame_name + ' · ' if frame_name else ''}frame {frame + 1} · slice {k} · {level}", fontsize=10)
    _no_ticks(ax)


def _draw_value_maps(fig, cell, study, value_map, frame, view, label):
    """Pixel map (e.g. MBF) over the image, one small panel per slice that has values."""
    slices = [k for k in range(study.n_slices) if np.isfinite(value_map[k]).any()][:3]
    if not slices:
        return
    finite = value_map[np.isfinite(value_map)]
    vmin, vmax = np.percentile(finite, [5, 95])  # blood partial-volume pixels would set the scale
    # a column for the colour bar and one for its label: drawn beside the last map, the label ran
    # off the figure's right edge
    sub = cell.subgridspec(1, len(slices) + 2, wspace=0.05, width_ratios=[1.0] * len(slices) + [0.05, 0.15])
    for n, k in enumerate(slices):
        ax = fig.add_subplot(sub[0, n])
        img = study.images[frame, k]
        ax.imshow(view.image(img), cmap="gray", aspect=view.aspect, interpolation="nearest")
        shown = ax.imshow(view.image(np.ma.masked_invalid(value_map[k])), cmap="jet", vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                          aspect=view.aspect, interpolation="nearest", alpha=0.85)
        ax.set_title(f"slice {k}", fontsize=9)
        _no_ticks(ax)
    fig.colorbar(shown, cax=fig.add_subplot(sub[0, len(slices)]), label=label)


# --------------------------------------------------------------------------- bullseye
def _layout():
    """{id: (r_in, r_out, theta1, theta2)} in degrees, counter-clockwise from screen right.

    Anterior at the top, septum on the left (looking from the apex, as the slices are shown).
    Basal/mid: 60 degree sectors centred at 90 + 60 n; apical: 90 degree sectors at 90 + 90 n.
    """
    out = {}
    for level in ("basal", "mid", "apical"):
        ids = [s["id"] for s in AHA_SEGMENTS if s["level"] == level]
        width = 360.0 / len(ids)
        for n, sid in enumerate(sorted(ids)):
            centre = 90.0 + width * n
            out[sid] = (*RINGS[level], centre - width / 2, centre + width / 2)
    return out


def _segment_at(layout, level, angle):
    r_in = RINGS[level][0]
    for sid, (a, _, t1, t2) in layout.items():
        if a == r_in and (angle - t1) % 360.0 < (t2 - t1):
            return sid
    raise ValueError(angle)


# Fixed clinical colour scales per bullseye measure (keyed by Analysis.bullseye_label): a scale
# fitted to the data makes a uniform 11 mm wall look purple at 10.7 and yellow at 11.2 mm, and
# stress MBF 3.3-3.6 span the whole colour map. Values beyond a scale take its end colour; the
# number in the segment stays exact.
BULLSEYE_SCALES = {
    "Wall thickness at ED (mm)": (0.0, 20.0),
    "MBF (mL/min/g)": (0.0, 5.0),
    "Relative upslope (myocardium/LV)": (0.0, 0.3),
}


def bullseye_scale(value_label):
    """(vmin, vmax) of the fixed scale for a bullseye label, or (None, None) when it has none
    ("Stress MBF ..." takes the scale of "MBF ...")."""
    label = str(value_label or "").lower()
    return next((scale for measure, scale in BULLSEYE_SCALES.items() if label.endswith(measure.lower())), (None, None))


def bullseye(ax, values, value_label=None, cmap="viridis", vmin=None, vmax=None, fmt="{:.2f}",
             show_ids=True, colorbar=True, title=None, fit=False):
    """Draw the AHA 16-segment bullseye of ``values`` ({segment id: value}) on ``ax``.

    The colour scale is ``vmin``-``vmax`` when given, else the fixed clinical scale of
    ``value_label`` (``BULLSEYE_SCALES``), else - or with ``fit=True`` - the data's range.
    Missing or NaN segments are grey. Coronary territory (LAD/RCA/LCx) borders are drawn
    thick. Returns the ScalarMappable (for a shared colour bar).
    """
    import matplotlib
    from matplotlib.patches import Arc, Wedge

    top_is_fixed = False
    if not fit:
        fixed_min, fixed_max = bullseye_scale(value_label)
        top_is_fixed = vmax is None and fixed_max is not None
        vmin = fixed_min if vmin is None else vmin
        vmax = fixed_max if vmax is None else vmax
    values = {int(k): (float(v) if v is not None else math.nan) for k, v in (values or {}).items()}
    finite = [v for v in values.values() if np.isfinite(v)]
    if top_is_fixed and finite and max(finite) > vmax:
        # a fixed scale that values run past paints them all its top colour (stress MBF 4.9-6.9 on
        # the 0-5 scale was one yellow beside a map that showed their spread; probe 39): its top
        # stretches to the largest value, the bottom stays; at most to twice the fixed top, so
        # one outlier (a segment at 40) does not wash the others into one colour (probe 40)
        vmax = min(max(finite), 2.0 * vmax)
    vmin = min(finite) if vmin is None and finite else (0.0 if vmin is None else vmin)
    vmax = max(finite) if vmax is None and finite else (1.0 if vmax is None else vmax)
    if vmax <= vmin:
        vmax = vmin + 1.0
    norm = matplotlib.colors.Normalize(vmin, vmax)
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    layout = _layout()
    territory = {s["id"]: s["territory"] for s in AHA_SEGMENTS}

    for sid, (r0, r1, t1, t2) in layout.items():
        v = values.get(sid, math.nan)
        colour = colormap(norm(v)) if np.isfinite(v) else (0.85, 0.85, 0.85, 1.0)
        ax.add_patch(Wedge((0, 0), r1, t1, t2, width=r1 - r0, facecolor=colour,
                           edgecolor="white", linewidth=1.0))
        rc = (r0 + r1) / 2 if r0 > 0 else r1 * 0.55
        tc = math.radians((t1 + t2) / 2)
        x, y = rc * math.cos(tc), rc * math.sin(tc)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        text_colour = "black" if luminance > 0.5 else "white"
        label = fmt.format(v) if np.isfinite(v) else "n/a"
        if show_ids:
            ax.text(x, y + 0.055, str(sid), ha="center", va="center", fontsize=7, color=text_colour)
            y -= 0.035
        ax.text(x, y, label, ha="center", va="center", fontsize=8.5, color=text_colour, weight="bold")

    # Territory borders: radial edges inside a ring, and pieces of the ring-to-ring arcs,
    # wherever the segments on the two sides belong to different arteries.
    thick = dict(color="black", linewidth=2.8, solid_capstyle="round")
    for level in RINGS:
        r0, r1 = RINGS[level]
        for sid, (a, _, t1, _t2) in layout.items():
            if a != r0:
                continue
            before = _segment_at(layout, level, t1 - 1e-6)
            if territory[before] != territory[sid]:
                t = math.radians(t1)
                ax.plot([r0 * math.cos(t), r1 * math.cos(t)], [r0 * math.sin(t), r1 * math.sin(t)], **thick)
    for inner, outer in (("apical", "mid"), ("mid", "basal")):
        r = RINGS[outer][0]
        cuts = sorted({layout[s][2] % 360.0 for s in layout if layout[s][0] in (RINGS[inner][0], r)})
        for a, b in zip(cuts, cuts[1:] + [cuts[0] + 360.0]):
            mid = (a + b) / 2
            if territory[_segment_at(layout, inner, mid)] != territory[_segment_at(layout, outer, mid)]:
                ax.add_patch(Arc((0, 0), 2 * r, 2 * r, theta1=a, theta2=b, color="black", linewidth=2.8))
    ax.add_patch(Arc((0, 0), 2.0, 2.0, theta1=0, theta2=360, color="black", linewidth=2.8))

    for name in TERRITORIES:
        angles = [math.radians((layout[s["id"]][2] + layout[s["id"]][3]) / 2)
                  for s in AHA_SEGMENTS if s["territory"] == name and s["level"] == "basal"]
        t = math.atan2(np.mean(np.sin(angles)), np.mean(np.cos(angles)))
        ax.text(1.17 * math.cos(t), 1.17 * math.sin(t), name, ha="center", va="center",
                fontsize=10, weight="bold")

    ax.set_xlim(-1.32, 1.32)
    ax.set_ylim(-1.32, 1.32)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap)
    if colorbar:
        # An inset beside the (square) bullseye: colorbar(ax=...) would steal width from the
        # neighbouring panel of the report grid.
        cb = ax.figure.colorbar(mappable, cax=ax.inset_axes([1.02, 0.1, 0.045, 0.8]))
        if value_label:
            cb.set_label(value_label)
    return mappable


# ------------------------------------------------------------------------ volume curve
def _curve_parts(study, volume_curve):
    if isinstance(volume_curve, dict):
        vols = np.asarray(volume_curve["volumes_ml"], float)
        times = volume_curve.get("times_s")
        ed, es = volume_curve.get("ed_frame"), volume_curve.get("es_frame")
    else:
        vols, times, ed, es = np.asarray(volume_curve, float), None, None, None
    if times is None and study.frame_times_s is not None and len(study.frame_times_s) == len(vols):
        times = study.frame_times_s
    ed = study.ed_frame if ed is None else ed
    es = study.es_frame if es is None else es
    ed = int(np.nanargmax(vols)) if ed is None else int(ed)
    es = int(np.nanargmin(vols)) if es is None else int(es)
    return vols, (None if times is None else np.asarray(times, float)), ed, es


def draw_volume_curve(ax, study, volume_curve):
    """LV volume against time (ms) or frame, with ED and ES marked."""
    vols, times, ed, es = _curve_parts(study, volume_curve)
    x = times * 1000.0 if times is not None else np.arange(len(vols)) + 1.0   # frames counted from 1
    ax.plot(x, vols, "-o", color=SEGMENTS["LV blood pool"][1], ms=3, lw=1.5)
    for frame, name, colour in ((ed, "ED", "tab:blue"), (es, "ES", "tab:orange")):
        if name == "ES" and frame == ed:
            continue   # one frame: its own ED, and no ES (the tables say n/a; "ES 296 mL" contradicted them)
        if 0 <= frame < len(vols):
            ax.axvline(x[frame], color=colour, ls="--", lw=1)
            ax.plot([x[frame]], [vols[frame]], "o", color=colour, ms=8)
            # written towards the middle: a point at the right end had its text cut off
            right_half = len(x) > 1 and x[frame] > (x.min() + x.max()) / 2
            ax.annotate(f"{name} {vols[frame]:.0f} mL (frame {frame + 1})", (x[frame], vols[frame]),
                        xytext=(-8 if right_half else 8, 6 if name == "ES" else -14), textcoords="offset points",
                        ha="right" if right_half else "left", color=colour, fontsize=9)
    ax.set_xlabel("time (ms)" if times is not None else "frame (from 1)")
    ax.set_ylabel("LV volume (mL)")
    ax.set_title("LV volume curve", fontsize=11)
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------------ report
def _label_for(label_map_by_frame, frame):
    if not label_map_by_frame:
        return None
    if frame in label_map_by_frame:
        return label_map_by_frame[frame]
    # Perfusion: one motion-corrected mask for every frame, stored under the frame drawn on.
    if len(label_map_by_frame) == 1:
        return next(iter(label_map_by_frame.values()))
    return None


def peak_enhancement_frame(study):
    """Frame of peak myocardial enhancement (the AIF peak + a few frames), shown for perfusion."""
    if study.aif is None:
        return study.n_frames // 2
    return int(min(study.n_frames - 1, int(np.argmax(study.aif)) + 4))


class ShownFrames:
    """The images of the frames a report shows, indexed like the study's (frame, slice, row,
    column) array: ``[frame]``, ``[frame, slice]`` and ``.shape`` (of the whole series)."""

    def __init__(self, images, frames):
        self.shape = tuple(images.shape)
        self._frames = {int(f): np.asarray(images[f]) for f in frames}   # views: pickling copies them for the process

    def __getitem__(self, index):
        if isinstance(index, tuple):
            return self._frames[int(index[0])][index[1:]]
        return self._frames[int(index)]


@dataclass
class ReportStudy:
    """What ``write_report`` reads of a Study, with the images of the shown frames only: a few MB
    to hand to the report process (``report_process``) instead of a whole series."""
    name: str
    kind: str
    n_frames: int
    n_slices: int
    ijk_to_ras: np.ndarray
    images: ShownFrames
    frame_times_s: object = None
    ed_frame: object = None
    es_frame: object = None

    @classmethod
    def of(cls, study, frames):
        return cls(study.name, study.kind, study.n_frames, study.n_slices, np.asarray(study.ijk_to_ras, float),
                   ShownFrames(study.images, frames),
                   None if study.frame_times_s is None else np.asarray(study.frame_times_s, float),
                   study.ed_frame, study.es_frame)


def report_arguments(path, analysis, overwrite=False):
    """``write_report``'s arguments for an Analysis: the frames, labels, values and curve its
    report shows, with a ``ReportStudy`` in place of the study."""
    st = analysis.study
    if analysis.kind == "perfusion":
        frames, curve, value_map = [peak_enhancement_frame(st)], None, analysis.mbf
        names = {frames[0]: "peak enhancement"}
        if analysis.bullseye_measure != "mbf":
            value_map = None
    else:
        names = {f: n for f, n in ((analysis.cine["ed_frame"], "ED"), (analysis.cine["es_frame"], "ES")) if f is not None}
        frames = sorted(names)
        curve, value_map = analysis.cine.get("lv_volume_curve_ml"), None
    labels = analysis.labels
    if labels and len(labels) > 1:   # one map serves every frame; otherwise only the shown ones are drawn
        labels = {f: labels[f] for f in frames if f in labels}
    return dict(path=path, study=ReportStudy.of(st, frames), label_map_by_frame=labels, frames_to_show=frames,
                insertion_points=analysis.insertion_summary(), segment_values=analysis.segment_values or None,
                value_label=analysis.bullseye_label, value_format=analysis.bullseye_format, volume_curve=curve, overwrite=overwrite, value_map=value_map,
                qc=analysis.qc, levels=dict(analysis.levels or {}), summary=summary_lines(analysis), frame_names=names)


def summary_lines(analysis):
    """The measures people read first, as one or two lines under the report's title (the report
    had only images and the bullseye: the EF or the global MBF was in the tables alone). Values
    are the table's rows, at the table's precision."""
    from .measures import format_value

    rows = {r["key"]: r for r in analysis.table_rows()}

    def text(key, name=None, unit=True):
        r = rows.get(key)
        if r is None or r["value"] is None or format_value(r) == "n/a":
            return None
        u = f" {r['unit']}" if unit and r["unit"] else ""
        return f"{name or r['measure']} {format_value(r)}{u}"

    def line(*parts):
        parts = [p for p in parts if p]
        return " · ".join(parts) if parts else None

    if analysis.kind == "perfusion":
        territories = line(*(text(f"mbf_ml_min_g_{t}", t, unit=False) for t in ("LAD", "RCA", "LCx")))
        first = line(text("global_mbf_ml_min_g", "stress MBF" if "rest_global_mbf_ml_min_g" in rows else "Global MBF"))
        first = f"{first} ({territories})" if first and territories else first
        caveat = mbf_caveat(analysis.qc)
        first = f"{first} · {caveat}" if first and caveat else first
        reserve = text("mpr_global", "MPR")
        if reserve and ((analysis.perfusion or {}).get("mpr") or {}).get("coverage"):
            # over the segments both series measure: beside the two global MBFs (all of each
            # series' segments) it read as their ratio and was not (3.17 beside 2.55 / 0.87; probe 108)
            reserve += " (median of the segments both measure)"
        second = line(text("rest_global_mbf_ml_min_g", "rest MBF"), reserve, text("mpri_global", "MPRI"),
                      None if "mpr_global" in rows else text("relative_upslope_global", "relative upslope"),
                      None if "mpr_global" in rows else text("time_to_peak_s_global", "time to peak"))
    else:
        first = line(text("lv_edv_ml", "LV EDV"), text("lv_esv_ml", "ESV"), text("lv_sv_ml", "SV"), text("lv_ef_pct", "EF"),
                     text("lv_mass_g", "mass"))
        second = line(text("rv_edv_ml", "RV EDV"), text("rv_esv_ml", "ESV"), text("rv_sv_ml", "SV"), text("rv_ef_pct", "EF"))
    return [t for t in (first, second) if t]


# QC codes under which the MBF the report leads with is approximate, and what to say of it
_STRESS_CAVEATS = (("AIF_FROM_LV", "AIF from the LV blood pool"),
                   ("AIF_DUAL_SEQUENCE", "AIF from the dual-sequence series, not calibrated"),
                   ("SIGNAL_UNITS", "signal intensity read as linear in Gd"))
# the rest series' own (REST_ flags): its MBF and the MPR rest on them
MBF_CAVEATS = _STRESS_CAVEATS + tuple((f"REST_{code}", f"rest {text}") for code, text in _STRESS_CAVEATS)


def mbf_caveat(qc):
    """'MBF approximate: ...' naming what the QC flags say the MBF rests on, or None: the report
    said "QC: pass (1 note)" over an MBF from the LV's own blood signal (probe 73)."""
    codes = {f["code"]: f["severity"] for f in (qc or {}).get("flags", [])}
    said = [text for code, text in MBF_CAVEATS if code in codes]
    if not said:
        return None
    review = any(codes[c] == "review" for c, _ in MBF_CAVEATS if c in codes)
    return ("MBF approximate: " if review else "MBF assumes: ") + ", ".join(said)


def write_analysis_report(path, analysis, overwrite=False):
    """report.png of an Analysis: the one renderer behind `analyze`, the Slicer Logic and the web GUI."""
    return write_report(**report_arguments(path, analysis, overwrite))


def analysis_bullseye_png(analysis, size_px=300, dpi=80, fit=False):
    """The AHA bullseye of an Analysis alone, as PNG bytes (Slicer Logic and web GUI): on the
    measure's fixed scale, or with ``fit=True`` on the range of the data."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    label = analysis.bullseye_label
    fig = Figure(figsize=(size_px / dpi, size_px / dpi * 0.82), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.01, 0.02, 0.8, 0.9])
    shown = bullseye(ax, analysis.segment_values, value_label=label,
                     fmt=analysis.bullseye_format, title=None, fit=fit)
    lo, hi = bullseye_scale(label)
    if fit:
        scale = ", scale fitted to the data"
    elif lo is None:
        scale = ""
    elif shown.norm.vmax > hi:   # values past the fixed top stretched it
        scale = f", scale {lo:g}-{shown.norm.vmax:.3g} (fixed {lo:g}-{hi:g}, stretched for the values above it)"
    else:
        scale = f", scale {lo:g}-{hi:g} fixed"
    fig.suptitle(label + scale, fontsize=9, y=0.99)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def qc_line(qc, max_codes=6):
    """'QC: REVIEW - CODE, CODE, ...' or 'QC: pass' for the report's title line."""
    review = [f["code"] for f in qc["flags"] if f["severity"] == "review"]
    if not review:
        # the notes by name: "1 note(s) in results.json" hid that MBF rests on the LV's AIF (probe 73)
        notes = [f["code"] for f in qc["flags"]]
        shown = ", ".join(notes[:max_codes]) + (f" +{len(notes) - max_codes} more" if len(notes) > max_codes else "")
        return "QC: pass" + (f" (notes: {shown}; see results.json)" if notes else "")
    more = f" +{len(review) - max_codes} more" if len(review) > max_codes else ""
    return "QC: REVIEW - " + ", ".join(review[:max_codes]) + more + " (see results.json)"


def write_report(path, study, label_map_by_frame, frames_to_show, insertion_points=None,
                 segment_values=None, value_label="MBF (mL/min/g)", volume_curve=None,
                 title=None, overwrite=False, dpi=DPI, value_map=None, value_frame=None, qc=None, levels=None,
                 summary=None, frame_names=None, value_format="{:.2f}"):
    """Write report.png; returns the path.

    ``frames_to_show``: a frame index or a list (one row of three slices each, e.g. [ED, ES]).
    ``label_map_by_frame``: {frame: (S, R, C) labels}; one entry serves every frame.
    ``insertion_points``: as in scene.add_insertion_markups, drawn on their own slice.
    ``segment_values``: {AHA id: value} for the bullseye; ``volume_curve``: LV volumes in mL
    per frame, or {"volumes_ml", "times_s", "ed_frame", "es_frame"} (missing keys come
    from the study). ``value_map``: (S, R, C) pixel values (MBF), NaN outside the myocardium,
    drawn over ``value_frame`` next to the bullseye. ``qc``: ``qc.assess`` output, shown under
    the title (status and the codes to review). ``levels``: {slice: AHA level} of the analysis,
    which names the slices shown. ``summary``: up to two lines of key measures under the title;
    ``frame_names``: {frame: name} ("ED", "ES") put before each row's frame number;
    ``value_format``: the bullseye's numbers (``Analysis.bullseye_format``). Size:
    ``report_size_px``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = [int(frames_to_show)] if np.isscalar(frames_to_show) else [int(f) for f in frames_to_show]
    if not frames:
        raise ValueError("frames_to_show is empty")
    for f in frames:
        if not 0 <= f < study.n_frames:
            raise ValueError(f"frame {f} outside 0..{study.n_frames - 1}")
    bottom = segment_values is not None or volume_curve is not None or value_map is not None
    width, height = report_size_px(len(frames), bottom, dpi)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    heights = [TITLE_IN] + [FRAME_ROW_IN] * len(frames) + ([BOTTOM_ROW_IN] if bottom else [])
    grid = fig.add_gridspec(len(heights), 6, height_ratios=heights, left=0.03, right=0.97,
                            top=0.99, bottom=0.55 / (height / dpi), hspace=0.25, wspace=0.4)
    title_ax = fig.add_subplot(grid[0, :])
    title_ax.axis("off")
    title_ax.text(0.5, 0.82, title or f"CardiacAISeg · {study.name} · {study.kind}",
                  ha="center", va="center", fontsize=15, weight="bold")
    for n, text in enumerate((summary or [])[:2]):
        title_ax.text(0.5, 0.52 - 0.2 * n, text, ha="center", va="center", fontsize=10)
    if qc:
        title_ax.text(0.5, 0.08, qc_line(qc), ha="center", va="center", fontsize=9,
                      color="#b00020" if qc["status"] != "pass" else "#1b5e20", weight="bold")

    ras_to_ijk = np.linalg.inv(study.ijk_to_ras)
    view = slice_view(study.ijk_to_ras, study.images.shape[2:])
    for row, frame in enumerate(frames, start=1):
        label_map = _label_for(label_map_by_frame, frame)
        picks = representative_slices(label_map, levels) if label_map is not None else \
            [(k, "") for k in sorted({int(round(f * (study.n_slices - 1))) for f in (0.15, 0.5, 0.85)})]
        for col, (k, level) in enumerate(picks[:3]):
            ax = fig.add_subplot(grid[row, 2 * col:2 * col + 2])
            _draw_slice(ax, study.images[frame], label_map, view, k, level, insertion_points, frame,
                        ras_to_ijk, (frame_names or {}).get(frame, ""))

    if bottom:
        last = len(heights) - 1
        if segment_values is not None:
            bullseye(fig.add_subplot(grid[last, 0:3]), segment_values, value_label=value_label, fmt=value_format,
                     title=f"AHA 16 segments · {value_label}")
        if value_map is not None:
            _draw_value_maps(fig, grid[last, 3:6], study, value_map, frames[0] if value_frame is None else value_frame,
                             view, value_label)
        if volume_curve is not None:
            # the bullseye's colour bar reaches into column 3: keep the curve's axis label clear of it
            cell = grid[last, 3:6].subgridspec(1, 6)[0, 1:] if segment_values is not None else grid[last, 1:5]
            draw_volume_curve(fig.add_subplot(cell),
                              study, volume_curve)

    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path
