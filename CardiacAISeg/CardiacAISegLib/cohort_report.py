"""cohort_report.png: distributions over a cohort of what it measured (cine: EF, EDV, mass;
perfusion: stress and rest MBF, MPR; without an AIF the relative upslope and MPRI); Bland-Altman
and correlation against the manifest's reference columns (``ref_<measure key>``) when present."""
import math
import os
from pathlib import Path

import numpy as np

from .measures import MEASURES

REF_PREFIX = "ref_"   # manifest column ref_<measure key>: a reference value (manual, another method)


def _axis_label(key):
    """The table's name and unit of a measure key; the key itself for one the table does not name
    (a per-segment key, a manifest column)."""
    if key not in MEASURES:
        return key
    title, unit, _ = MEASURES[key]
    unit = "" if "{" in unit else unit   # image units differ between studies of one cohort
    return f"{title} ({unit})" if unit else title


CINE_DISTRIBUTIONS = ("lv_ef_pct", "lv_edv_ml", "lv_mass_g")
# the perfusion panels a cohort shows: MBF at stress and rest and their ratio; the relative
# upslope and MPRI are what a series without a separate AIF is read by (its MBF is approximate)
PERFUSION_DISTRIBUTIONS = ("global_mbf_ml_min_g", "rest_global_mbf_ml_min_g", "mpr_global",
                           "relative_upslope_global", "mpri_global")
MAX_DISTRIBUTIONS = 4   # panels in the first row of a mixed cine + perfusion cohort


def distributions(rows):
    """[(measure key, axis label)] the cohort's first row draws: each candidate measure at least one
    study has a value for, cine first; the cine three (drawn "no values") when none has any.

    A perfusion cohort drew three empty cine panels before: the report said nothing of its MBF.
    """
    present = [k for k in CINE_DISTRIBUTIONS + PERFUSION_DISTRIBUTIONS if np.isfinite(_values(rows, k)).any()]
    cine = [k for k in present if k in CINE_DISTRIBUTIONS]
    perfusion = [k for k in present if k in PERFUSION_DISTRIBUTIONS]
    if perfusion and all(_lv_aif_share(rows, k)[0] == _lv_aif_share(rows, k)[1] for k in perfusion if k in LV_AIF_MEASURES):
        # every MBF from an AIF taken from the LV (approximate): the indices that need no AIF first
        perfusion = [k for k in perfusion if k not in LV_AIF_MEASURES] + [k for k in perfusion if k in LV_AIF_MEASURES]
    if cine and perfusion:   # both kinds: EF and mass, then the perfusion measures in the order above
        cine = [k for k in cine if k != "lv_edv_ml"][:2]
        perfusion = perfusion[:MAX_DISTRIBUTIONS - len(cine)]
    else:
        perfusion = perfusion[:3]
    keys = cine + perfusion or list(CINE_DISTRIBUTIONS)
    return [(k, _axis_label(k) + _lv_aif_note(rows, k)) for k in keys]


# measures an AIF from the LV blood pool makes approximate (MBF over-estimated, MPR low: AIF_FROM_LV);
# the cohort figure drew them as any other (probe 71)
LV_AIF_MEASURES = ("global_mbf_ml_min_g", "rest_global_mbf_ml_min_g", "mpr_global")


def _lv_aif_share(rows, key):
    """(studies whose ``key`` rests on an AIF from the LV, studies with a value of ``key``)."""
    codes = {"global_mbf_ml_min_g": ("AIF_FROM_LV",), "rest_global_mbf_ml_min_g": ("REST_AIF_FROM_LV",),
             "mpr_global": ("AIF_FROM_LV", "REST_AIF_FROM_LV")}.get(key, ())
    valued = [r for r, v in zip(rows, _values(rows, key)) if math.isfinite(v)]
    lv = sum(any(c in str(r.get("qc_codes") or "").split(";") for c in codes) for r in valued)
    return lv, len(valued)


def _lv_aif_note(rows, key):
    lv, n = _lv_aif_share(rows, key) if key in LV_AIF_MEASURES else (0, 0)
    return f"\nAIF from the LV in {lv} of {n}: approximate" if lv else ""


def _values(rows, key):
    out = []
    for r in rows:
        v = r.get(key)
        out.append(float(v) if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else math.nan)
    return np.array(out, float)


def _reference_columns(rows):
    keys = []
    for r in rows:
        for k in r:
            if k.startswith(REF_PREFIX) and k not in keys:
                keys.append(k)
    return keys


# Fewer pairs than this give no limits of agreement or correlation worth drawing (two pairs drew
# a Bland-Altman plot and "r = nan (n=2)", probe 83)
MIN_PAIRS = 3
# The status of a study whose QC passed; the report's statistics are over these (below)
QC_PASS = "ok"


def _passed(rows):
    """A boolean per row: its QC passed (table status ``ok``). The report's medians, limits of
    agreement and r are over these studies: they had counted a study flagged for review (a wrong
    slice spacing, mass 320 g) and moved the cohort's median mass 13 g and the Bland-Altman bias
    from 14 to 39 g without a word (probe 83). Flagged studies are drawn, told apart, and counted."""
    return np.array([r.get("status") == QC_PASS for r in rows], bool)


def comparisons(rows):
    """[(measure key, label, automatic values, reference values)] for each ref_ column with at least
    MIN_PAIRS complete pairs."""
    out = []
    for ref in _reference_columns(rows):
        key = ref[len(REF_PREFIX):]
        auto, manual = _values(rows, key), _values(rows, ref)
        if (np.isfinite(auto) & np.isfinite(manual)).sum() >= MIN_PAIRS:
            out.append((key, _axis_label(key), auto, manual))
    return out


def _over(passed, n_review, what="n"):
    """'n=6' or 'n=6 QC pass; 1 QC review left out' or 'n=2, all QC review': which studies a
    statistic is over."""
    if not n_review:
        return f"{what}={passed}"
    if passed:
        return f"{what}={passed} QC pass; {n_review} QC review left out"
    return f"{what}={n_review}, all QC review"


def panel_statistic(values, passed):
    """(median, 'n=...' text) of one distribution panel: over the QC-pass studies, or over the
    flagged ones when no study passed (said so); (None, text) without values."""
    ok = np.isfinite(values)
    good, review = values[ok & passed], values[ok & ~passed]
    over = good if good.size else review
    return (float(np.median(over)) if over.size else None), _over(good.size, review.size)


def uncompared_references(rows):
    """[(ref column, why)] for each reference column the report cannot compare: a measure no study
    has (a misspelt key, an MBF reference in a cine cohort) or fewer than MIN_PAIRS studies with both values.
    A researcher's reference column must not vanish from the report without a word."""
    out = []
    for ref in _reference_columns(rows):
        key = ref[len(REF_PREFIX):]
        auto, manual = _values(rows, key), _values(rows, ref)
        if not any(key in r for r in rows):
            out.append((ref, f"{key!r} is no column of the cohort table (e.g. lv_mass_g, global_mbf_ml_min_g)"))
        elif (np.isfinite(auto) & np.isfinite(manual)).sum() < MIN_PAIRS:
            out.append((ref, f"fewer than {MIN_PAIRS} studies have both {key} and {ref}"))
    return out


def _hist_range(values, decimals):
    """The histogram's range: the values' own, widened to the table's precision either side
    when they span less (one study, or studies equal to the last bits: matplotlib could not
    cut 5 bins of 1e-14 and the batch ended without its summary, probe 64)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    step = 10.0 ** -decimals
    if hi - lo < step:
        mid = (lo + hi) / 2
        return mid - step, mid + step
    return lo, hi


def write_cohort_report(rows, path):
    """Write the PNG (matplotlib Agg); rows are the cohort table's flat rows. Returns the path.

    A bare ``Figure`` (its savefig draws with Agg) rather than pyplot, whose import and backend
    set-up cost the batch's client about as much CPU time as the plot; and ``agreement`` (with
    scipy.ndimage) only when there is a comparison to draw.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    measured = [r for r in rows if r.get("status") != "error"]
    comps = comparisons(measured)
    panels = distributions(measured)
    if comps:
        from .agreement import bland_altman
    n_rows = 1 + (2 if comps else 0)
    n_cols = max(len(panels), len(comps))
    fig = Figure(figsize=(4.2 * n_cols, 3.6 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "qc-review", "error")}
    fig.suptitle(f"Cohort: {len(rows)} stud{'y' if len(rows) == 1 else 'ies'} — {counts['ok']} ok, {counts['qc-review']} QC review, {counts['error']} error")
    passed = _passed(measured)
    for ax, (key, label) in zip(axes[0], panels):
        values = _values(measured, key)
        finite = np.isfinite(values)
        v = values[finite]
        if v.size:
            decimals = MEASURES[key][2] if key in MEASURES else 2   # MBF 2 decimals, as the table
            median, over = panel_statistic(values, passed)
            groups = [values[finite & passed], values[finite & ~passed]]
            ax.hist(groups, bins=min(30, max(5, v.size // 2)), range=_hist_range(v, decimals), color=["#4477aa", "#ee7733"],
                    edgecolor="white", stacked=True, label=["QC pass", "QC review"])
            if groups[1].size:
                ax.legend(fontsize=7)
            # the statistic's basis on a line of its own: on one line the titles of a mixed cine and
            # perfusion cohort ran into each other (probe 91)
            ax.set_title(f"{label}: median {median:.{decimals}f}\n({over})", fontsize=10)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylabel("studies")
    for ax in axes[0][len(panels):]:
        ax.axis("off")
    for i, (key, label, auto, manual) in enumerate(comps):
        ok = np.isfinite(auto) & np.isfinite(manual)
        # over the QC-pass pairs when there are enough of them, else over all (said)
        n_pass, n_review = int((ok & passed).sum()), int((ok & ~passed).sum())
        if n_pass >= MIN_PAIRS:
            use, over = ok & passed, _over(n_pass, n_review)
        else:
            use, over = ok, f"n={n_pass + n_review}" + (f", {n_review} of them QC review" if n_review else "")
        a, m = auto[use], manual[use]
        ba = bland_altman(a, m)
        ax = axes[1][i]
        for sel, color, name in ((ok & passed, "#4477aa", "QC pass"), (ok & ~passed, "#ee7733", "QC review")):
            if sel.any():
                ax.scatter((auto[sel] + manual[sel]) / 2, auto[sel] - manual[sel], s=14, color=color, label=name)
        if n_review:
            ax.legend(fontsize=7)
        for y, style in ((ba["bias"], "-"), (ba["lower"], "--"), (ba["upper"], "--")):
            ax.axhline(y, color="#aa3377", linestyle=style, linewidth=1)
        ax.set_title(f"{label}: bias {ba['bias']:.2f}, LoA {ba['lower']:.2f} to {ba['upper']:.2f}\n({over})", fontsize=9)
        ax.set_xlabel("mean of batch and reference")
        ax.set_ylabel("batch − reference")
        ax = axes[2][i]
        r = float(np.corrcoef(a, m)[0, 1]) if np.std(a) > 0 and np.std(m) > 0 else math.nan
        for sel, color in ((ok & passed, "#228833"), (ok & ~passed, "#ee7733")):
            if sel.any():
                ax.scatter(manual[sel], auto[sel], s=14, color=color)
        lo, hi = float(min(auto[ok].min(), manual[ok].min())), float(max(auto[ok].max(), manual[ok].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
        ax.set_title(f"{label}: r = {r:.3f} ({over})", fontsize=9)
        ax.set_xlabel(f"reference ({REF_PREFIX}{key})")
        ax.set_ylabel("batch")
    for row in axes[1:]:
        for ax in row[len(comps):]:
            ax.axis("off")
    skipped = uncompared_references(measured)
    if skipped:
        fig.text(0.01, 0.005, "Not compared: " + "; ".join(f"{ref}: {why}" for ref, why in skipped),
                 fontsize=8, color="#aa3377", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)   # a full disk left an empty temporary file (probe 54)
    return path
