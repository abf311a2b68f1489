"""results.json and results.csv: the machine- and spreadsheet-readable outcome of an analysis."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .analysis import Analysis

SCHEMA_VERSION = 1


def json_safe(v, max_array=None):
    """JSON-safe values: numpy to Python, NaN/inf to null; arrays larger than ``max_array`` to null."""
    if isinstance(v, dict):
        return {str(k): json_safe(x, max_array) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x, max_array) for x in v]
    if isinstance(v, np.ndarray):
        return None if max_array is not None and v.size > max_array else json_safe(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.generic):
        return v.item()
    return v


def results_document(analysis: Analysis, input_path: str | Path, model: dict | None = None, timing_s: dict | None = None) -> dict:
    """The results.json document of ``analysis``. ``model`` and ``timing_s`` default to what the
    Analysis carries from the pipeline (``model_info``, ``timing_s``); a writer passes its own
    only to add to them (e.g. the writing steps)."""
    model = analysis.model_info if model is None else model
    edited = sorted(getattr(analysis, "edited_frames", None) or ())
    rest = getattr(analysis, "rest", None)
    rest_edited = sorted(getattr(rest, "edited_frames", None) or ()) if rest is not None else []
    if model and (edited or rest_edited):
        # the network's output corrected by hand: results.json named the network alone, the same
        # as an unedited save (probe 24)
        model = dict(model, edited_frames=edited, **({"rest_edited_frames": rest_edited} if rest_edited else {}),
                     edited_note="the segmentation was corrected by hand after the network ran")
    timing_s = getattr(analysis, "timing_s", None) if timing_s is None else timing_s
    doc = {"schema_version": SCHEMA_VERSION, "kind": analysis.kind, "input": str(input_path), "model": model}
    # which series of a folder was read (a whole exam holds dozens; results named only the folder)
    doc["source"] = source_of(analysis.study)
    if getattr(analysis, "rest", None) is not None:
        doc["source"]["rest"] = source_of(analysis.rest.study)
        # the network that drew the rest's mask, where it was not given (stress labels given and the
        # rest segmented by the network said "model": null and nothing more; probe 93)
        doc["rest_model"] = getattr(analysis.rest, "model_info", None)
    r = analysis.results()
    doc["cine"] = r["cine"]
    doc["perfusion"] = r["perfusion"]
    doc["bullseye"] = r["bullseye"]
    doc["rv_insertion"] = r["rv_insertion"]
    doc["warnings"] = r["warnings"]
    doc["qc"] = r["qc"]
    doc["timing_s"] = {k: round(float(v), 4) for k, v in (timing_s or {}).items()}
    return json_safe(doc)


def source_of(study) -> dict:
    """What the analysed images were read from: reader, series (UID, number, description; a
    stack merged from one series per slice lists its UIDs), scanner, file count, the AIF's
    origin. No patient identifiers."""
    p = study.provenance or {}
    out = {"name": study.name, "reader": p.get("reader"), "units": study.units}
    if p.get("series_uid"):
        uids = str(p["series_uid"]).split("+")
        out["series_uid"] = uids[0] if len(uids) == 1 else uids
        if len(uids) == 1:
            out["series_number"] = p.get("series_number")
            out["series_description"] = p.get("series_description")
        else:   # a stack merged from one series per slice: the first slice's number and name are not the stack's
            out["merged_from_series"] = len(uids)
            if p.get("series_numbers"):
                out["series_numbers"] = p["series_numbers"]
            names = p.get("series_descriptions") or []
            if names:
                out["series_description"] = names[0] if len(names) == 1 else names
    for key in ("manufacturer", "model", "field_strength_t", "aif_series_uid", "aif_source"):
        if p.get(key):
            out[key] = p[key]
    if p.get("files"):
        out["n_files"] = len(p["files"])
    # the timing MBF scales with, as it was read: a user checking a result must see it (it was
    # in no output: probe 22)
    timing = p.get("timing") or {}
    if timing.get("clock"):
        out["frame_clock"] = timing["clock"] + (f" ({timing['tag']})" if timing.get("tag") and timing["tag"] != timing["clock"] else "")
    if p.get("dt_s") is not None:
        out["frame_interval_s"] = round(float(p["dt_s"]), 4)
        out["frame_interval_source"] = p.get("dt_source")
    if study.frame_times_s is not None and len(study.frame_times_s) > 1:
        out["frame_times_s"] = [round(float(t), 3) for t in study.frame_times_s]
    return out


def series_text(source):
    """Which series of a folder a study read, for the table: '#12 Perfusion_stress', 'merged from
    12 series (one per slice)', the file's name, or "" (results.json ``source``)."""
    if not source:
        return ""
    if source.get("merged_from_series"):
        return f"merged from {source['merged_from_series']} series (one per slice)"
    if source.get("series_uid"):
        number = source.get("series_number")
        return " ".join(p for p in (f"#{number}" if number is not None else "", source.get("series_description") or "") if p) \
            or str(source["series_uid"])
    return str(source.get("name") or "")


def results_json_text(doc: dict) -> str:
    return json.dumps(doc, indent=2, allow_nan=False)


def csv_cell(v):
    """A value as results.csv and cohort.csv write it: empty when missing, floats to 6 digits."""
    v = json_safe(v)
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)


def results_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "measure", "value", "unit"])   # key: stable across versions (measures.MEASURES)
    for r in rows:
        w.writerow([r.get("key", ""), r["measure"], csv_cell(r["value"]), r["unit"]])
    return buf.getvalue()
