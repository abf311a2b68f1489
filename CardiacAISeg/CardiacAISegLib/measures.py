"""The table of measures: a stable key, a title, a unit and a display precision for each.

As Slicer's SegmentStatistics does, every front end formats a value from this table instead of
guessing from its title: results.csv carries the key (scripts and cohort tables join on it), the
Slicer table and the web GUI show the title and round to the precision. Per-segment measures
have one entry with ``{id}``/``{name}``/``{territory}`` in key and title.
"""
from .aha import AHA_SEGMENTS

# key: (title, unit, decimals)
MEASURES = {
    "ed_frame": ("ED frame (0-based)", "", 0),
    "es_frame": ("ES frame (0-based)", "", 0),
    "lv_edv_ml": ("LV EDV", "mL", 1),
    "lv_esv_ml": ("LV ESV", "mL", 1),
    "lv_sv_ml": ("LV SV", "mL", 1),
    "lv_ef_pct": ("LV EF", "%", 1),
    "lv_mass_g": ("LV mass", "g", 1),
    "rv_edv_ml": ("RV EDV", "mL", 1),
    "rv_esv_ml": ("RV ESV", "mL", 1),
    "rv_sv_ml": ("RV SV", "mL", 1),
    "rv_ef_pct": ("RV EF", "%", 1),
    "wall_thickness_ed_mm_seg{id}": ("Wall thickness ED, segment {id} ({name})", "mm", 1),
    "global_mbf_ml_min_g": ("Global MBF", "mL/min/g", 2),
    "density_g_ml": ("Tissue density", "g/mL", 2),
    "mbf_ml_min_g_seg{id}": ("MBF segment {id} ({name}, {territory})", "mL/min/g", 2),
    "mbf_ml_min_g_{territory}": ("MBF {territory} territory", "mL/min/g", 2),
    "rest_global_mbf_ml_min_g": ("Rest global MBF", "mL/min/g", 2),
    "rest_mbf_ml_min_g_seg{id}": ("Rest MBF segment {id} ({name}, {territory})", "mL/min/g", 2),
    "rest_mbf_ml_min_g_{territory}": ("Rest MBF {territory} territory", "mL/min/g", 2),
    "rest_upslope_global": ("Rest global upslope", "{units}/s", 3),
    "rest_relative_upslope_global": ("Rest global relative upslope (myocardium/LV)", "", 3),
    "rest_peak_enhancement_global": ("Rest global peak enhancement", "{units}", 3),
    "rest_time_to_peak_s_global": ("Rest global time to peak (from the bolus foot)", "s", 1),
    "rest_upslope_seg{id}": ("Rest upslope segment {id} ({name}, {territory})", "{units}/s", 3),
    "rest_relative_upslope_seg{id}": ("Rest relative upslope segment {id} ({name}, {territory})", "", 3),
    "rest_peak_enhancement_seg{id}": ("Rest peak enhancement segment {id} ({name}, {territory})", "{units}", 3),
    "rest_time_to_peak_s_seg{id}": ("Rest time to peak segment {id} ({name}, {territory})", "s", 1),
    "mpr_global": ("Global MPR", "", 2),
    "mpr_seg{id}": ("MPR segment {id} ({name}, {territory})", "", 2),
    "mpr_{territory}": ("MPR {territory} territory", "", 2),
    "upslope_global": ("Global upslope", "{units}/s", 3),
    "relative_upslope_global": ("Global relative upslope (myocardium/LV)", "", 3),
    "peak_enhancement_global": ("Global peak enhancement", "{units}", 3),
    "time_to_peak_s_global": ("Global time to peak (from the bolus foot)", "s", 1),
    "upslope_seg{id}": ("Upslope segment {id} ({name}, {territory})", "{units}/s", 3),
    "relative_upslope_seg{id}": ("Relative upslope segment {id} ({name}, {territory})", "", 3),
    "peak_enhancement_seg{id}": ("Peak enhancement segment {id} ({name}, {territory})", "{units}", 3),
    "time_to_peak_s_seg{id}": ("Time to peak segment {id} ({name}, {territory})", "s", 1),
    "mpri_global": ("Global MPRI (stress/rest relative upslope)", "", 2),
    "mpri_seg{id}": ("MPRI segment {id} ({name}, {territory})", "", 2),
    "qc_review_flags": ("QC status: {status}", "flags to review", 0),
    "qc_{code}": ("QC {code} ({severity}): {message}", "", 3),
}
CINE_KEYS = ("ed_frame", "es_frame", "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct", "lv_mass_g",
             "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct")
_SEGMENTS = {s["id"]: s for s in AHA_SEGMENTS}


def row(template, value, segment=None, **fields):
    """{key, measure, value, unit, decimals} for the measure ``template`` of ``MEASURES``; an AHA
    ``segment`` id fills {id}, {name}, {territory}, other ``fields`` the rest."""
    if segment is not None:
        s = _SEGMENTS[int(segment)]
        fields.update(id=s["id"], name=s["name"], territory=s["territory"])
    title, unit, decimals = MEASURES[template]
    return {"key": template.format(**fields), "measure": title.format(**fields), "value": value,
            "unit": unit.format(**fields), "decimals": decimals}


def format_value(r):
    """A row's value as people read it: its precision from the table, 'n/a' when it is missing."""
    import math

    v = r.get("value")
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if not r.get("key", "").startswith("qc_") or r.get("key") == "qc_review_flags" else ""
    return f"{float(v):.{int(r.get('decimals', 2))}f}"
