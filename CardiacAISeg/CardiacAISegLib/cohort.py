"""`cardiacaiseg batch`: a cohort of studies as Dask tasks, one cohort table.

Each study is one task that calls the same ``analyze.run`` as ``cardiacaiseg analyze`` and
writes the same outputs into ``OUT/<study>/``. When it ends (well or not) the task writes the
study's table row as ``OUT/<study>/cohort_row.json`` (atomically), so the cohort table
(``cohort.csv``, ``cohort.parquet``) is assembled from files on disk: a worker that dies, or a
client that is stopped, loses only the studies that were still running. ``resume`` skips the
studies whose results.json is present and readable.

Runs on a Dask ``LocalCluster`` (one process per worker, one thread each) or on any scheduler
given by address; the model is loaded once per worker process (``registry.load_model`` caches
it by model folder and weights sha256, and ``ModelPreload`` warms that cache when a worker
starts, so no study pays the load).

Measure columns use the stable keys of results.json: the scalar leaves of its ``cine`` or
``perfusion`` section by their path (``lv_edv_ml``, ``mpr.global``,
``segments.3.mbf_ml_min_g``), and the bullseye rows of results.csv that results.json does not
hold (cine wall thickness) by their results.csv measure name.
"""
import csv
import json
import math
import os
import re
import time
import traceback
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from distributed import WorkerPlugin

from .analyze import SPECIAL_LABELS   # 'study', 'ring': label choices, not files
from .cohort_report import REF_PREFIX
from .errors import CardiacInputError, flags_named
from .readers.sniff import VOLUME_SUFFIXES
from .results import series_text
from .study import CINE, PERFUSION

ROW_FILE = "cohort_row.json"
TABLE_CSV, TABLE_PARQUET, REPORT_PNG = "cohort.csv", "cohort.parquet", "cohort_report.png"
STATUS_OK, STATUS_REVIEW, STATUS_ERROR = "ok", "qc-review", "error"

# manifest columns the pipeline reads; any other column is carried into the table unchanged
PATH_COLUMNS = ("path", "input")
# (density and the rest series' columns were carried into the table as text: a row's "density
# 1.10" stood beside a mass computed at 1.05, a "rest" path beside no MPR)
OPTION_COLUMNS = ("study", "kind", "labels", "aif", "dt", "model", "frames", "series", "units", "label_convention",
                  "density", "rest", "rest_labels", "rest_aif", "rest_dt", "rest_series")
FILE_OPTIONS = ("labels", "aif", "rest", "rest_labels", "rest_aif")   # relative paths: from the manifest's folder
NUMBER_OPTIONS = ("dt", "density", "rest_dt")
# A study given as one file: the volume formats (".nhdr" was missing: a folder of NRRD detached
# headers read "holds no studies") and Analyze by its header; DICOM files are found by their bytes
IMAGE_SUFFIXES = VOLUME_SUFFIXES + (".hdr", ".dcm")

META_COLUMNS = ("study", "folder", "status", "kind", "input", "series", "rest_series", "image_units", "error", "qc_status", "qc_codes",
                "warnings", "segmentation", "model_name", "model_version", "model_sha256", "worker", "time_total_s",
                "time_cpu_s", "time_load_s", "time_segmentation_s", "time_measures_s", "time_writing_s")
FLOAT_META = {c for c in META_COLUMNS if c.startswith("time_")}


@dataclass
class StudySpec:
    """One study of the cohort: its output folder's name, input and analyze options."""
    study: str
    input: str
    options: dict = field(default_factory=dict)   # analyze.run keyword arguments (kind, labels, aif, dt, ...)
    extra: dict = field(default_factory=dict)     # other manifest columns (reference values, site, ...)
    # the study's id as the manifest (or the file or folder name) writes it: the table's study
    # column. The folder name is rewritten where the id is no safe folder name ('UKB 1000123' ->
    # UKB_1000123), and a table that held only the folder name lost rows joined back on the id
    # (probe 64).
    name: str = ""

    @property
    def id(self):
        return self.name or self.study


# --- the cohort: manifest or folder -------------------------------------------------------------
def _safe_name(text):
    """A folder name from a study name: letters (with their combining marks: हिन्दी) and digits
    of any script, '.', '_' and '-'; runs of anything else become one '_' (NFC: macOS writes
    names decomposed). ASCII only had made Müller_1 and Mäller_1 one folder and refused them as
    duplicates (probe 64)."""
    kept = "".join(ch if ch in "._-" or unicodedata.category(ch)[0] in "LMN" else "\0"
                   for ch in unicodedata.normalize("NFC", text))
    name = re.sub("\0+", "_", kept).strip("._")
    return name or "study"


# archives among the studies, by name: a .docx, .xlsx or .npz is a ZIP inside but no study (a
# protocol spreadsheet beside the studies had become a failed one)
ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _stem(path):
    from .readers.sniff import image_stem

    return image_stem(Path(path).name)


def _number(text, column, where):
    try:
        value = float(text)
    except ValueError:
        raise CardiacInputError(where, f"column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):   # 'nan', 'inf' parse as floats: one rule with 'heavy' (probe round 20)
        raise CardiacInputError(where, f"column {column!r}: {text!r} is not a finite number")
    return value


def read_manifest(path, defaults=None):
    """StudySpecs from a CSV manifest.

    Columns: ``path`` (or ``input``; required), optional ``study`` (default: the file or folder
    name), ``kind``, ``labels`` (a label file or 'study'), ``aif``, ``dt``, ``model``, ``frames``,
    ``series``, ``units``, ``label_convention``, ``density``, and a rest series for MPR: ``rest``,
    ``rest_labels``, ``rest_aif``, ``rest_dt``, ``rest_series``; ``ref_<measure key>`` columns are reference values
    (e.g. ``ref_lv_mass_g``) the cohort report compares with; other columns are kept as they are.
    Relative paths are taken from the manifest's folder.
    """
    path = Path(path)
    base = path.resolve().parent   # absolute: workers elsewhere (or in another folder) read the same files
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows, lines = [], []
            for r in reader:
                if None in r:   # more cells than the header names: a decimal comma, an unquoted comma
                    raise CardiacInputError(f"{path} line {reader.line_num}",
                                            f"{len(header) + len(r[None])} cells, the header has {len(header)}: a value "
                                            "with a comma (e.g. a decimal comma, 1,10) must be quoted or written 1.10")
                row = {(k or "").strip(): (v or "").strip() for k, v in r.items()}
                if not any(row.values()):   # ",,,," rows a spreadsheet writes under the table
                    continue
                rows.append(row)
                lines.append(reader.line_num)   # blank lines skipped: the file's own line numbers
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8-sig")
            at = None
        except UnicodeDecodeError as e:   # the offset in the whole file (the reader's was in its chunk)
            at = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, at) + 1 if at is not None else None
        where = f"line {line}: {raw[at:at + 1]!r}" if at is not None else "a byte"
        raise CardiacInputError(path, f"is not UTF-8 text ({where}; a spreadsheet's Latin-1 or Windows-1252?): save the "
                                      "manifest as CSV UTF-8") from None
    _refuse_near_miss_columns(path, header)
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if twice:
        # the CSV reader keeps a repeated column's last cell: the network ran instead of the
        # given labels, a second path or reference value replaced the first, unsaid (probe 64)
        raise CardiacInputError(path, f"column{'s' if len(twice) > 1 else ''} {', '.join(repr(c) for c in twice)} "
                                      "appear more than once in the header; keep one of each")
    if all(c in header for c in PATH_COLUMNS):
        raise CardiacInputError(path, "has both a 'path' and an 'input' column (two names of one column): keep one; "
                                      "the other's paths would be ignored")
    path_column = next((c for c in PATH_COLUMNS if c in header), None)
    if path_column is None and len(header) == 1 and ";" in header[0]:
        # a spreadsheet set to a decimal comma writes ';' between cells: one column named "study;path"
        raise CardiacInputError(path, f"its cells are separated by ';' ({header[0]!r}), not commas: save it as a "
                                      "comma-separated CSV")
    if path_column is None:
        raise CardiacInputError(path, f"manifest has no 'path' column (columns: {', '.join(header) or 'none'}); "
                                      "accepted: path (or input), study, kind, labels, aif, dt, model, frames, series, units, "
                                      "label_convention, density, rest, rest_labels, rest_aif, rest_dt, rest_series, ref_<measure>")
    if not rows:
        raise CardiacInputError(path, "manifest lists no studies")
    specs = []
    for line, r in zip(lines, rows):
        where = f"{path} line {line}"
        if not r.get(path_column):
            raise CardiacInputError(where, f"empty {path_column!r}")
        study_input = Path(r[path_column])
        # normalised: error rows and the table showed ".../in/../../../data/x.nii.gz" (probe 83)
        study_input = study_input if study_input.is_absolute() else Path(os.path.normpath(base / study_input))
        options = dict(defaults or {})
        for column in OPTION_COLUMNS[1:]:
            value = r.get(column, "")
            if not value:
                continue
            if column in NUMBER_OPTIONS:
                value = _number(value, column, where)
                if value <= 0:
                    # found here, as 'nan' is, not as one study's error row after the cluster has
                    # started (a dt of -1; probe 74)
                    raise CardiacInputError(where, f"column {column!r}: {value:g} must be above 0")
            elif column in FILE_OPTIONS and not (column in ("labels", "rest_labels") and value in SPECIAL_LABELS):
                value = str(Path(value) if Path(value).is_absolute() else os.path.normpath(base / value))
            options[column] = value
        if options.get("kind") not in (None, "cine", "perfusion"):
            raise CardiacInputError(where, f"kind {options['kind']!r}: accepted kinds are cine and perfusion")
        if options.get("frames") not in (None, "ed_es", "all"):
            raise CardiacInputError(where, f"frames {options['frames']!r}: accepted are ed_es and all")
        # as analyze's --units and --label-convention choices (units 'Gd' was taken as signal intensity,
        # status ok, and skipped the checks signal images get; probe 71)
        if options.get("units") not in (None, "signal", "gd_mmol_l"):
            raise CardiacInputError(where, f"units {options['units']!r}: accepted are signal and gd_mmol_l")
        if options.get("label_convention") not in (None, "acdc", "ukbb", "internal"):
            raise CardiacInputError(where, f"label_convention {options['label_convention']!r}: accepted are acdc, ukbb "
                                           "and internal")
        extra = {}
        for column, value in r.items():
            if column in PATH_COLUMNS or column in OPTION_COLUMNS or not column:
                continue
            if column in META_COLUMNS or is_measure_key(column):
                # a manifest column must not hide the table's own (status, error, ...) nor a measured
                # value (an 'mpr_global' column of earlier values replaced the measured MPR; probe 71)
                extra[f"manifest_{column}"] = value
            elif column.startswith(REF_PREFIX):
                extra[column] = _number(value, column, where) if value else None
            else:
                extra[column] = value
        given = r.get("study") or _stem(study_input)
        specs.append(StudySpec(_safe_name(given), str(study_input), options, extra, name=given))
    _check_unique(specs, path)
    return specs


_UNIT_SUFFIX = re.compile(r"^(dt|rest_dt|density)[ _-]*\(?(s|sec|secs|seconds|ms|g_?/?_?ml|g_per_ml)\)?$")


def _refuse_near_miss_columns(path, header):
    """A column that reads as a misspelt option ('lables', 'Labels', 'dt_s') was kept as a column
    of the user's own: the option was silently not applied (the network run instead of the given
    labels; the file's frame interval instead of the manifest's, MBF 2.47 for 1.23)."""
    known = PATH_COLUMNS + OPTION_COLUMNS
    for column in header:
        if not column or column in known or column in META_COLUMNS or column.startswith(REF_PREFIX):
            continue
        lower = column.lower().strip()
        if lower in known:
            raise CardiacInputError(path, f"column {column!r}: manifest columns are lower case; name it {lower!r}")
        unit = _UNIT_SUFFIX.match(lower)
        if unit:
            what = "seconds" if unit.group(1) != "density" else "g/mL"
            raise CardiacInputError(path, f"column {column!r} reads as the {unit.group(1)!r} option with a unit in its name; "
                                          f"name the column {unit.group(1)!r} and give the number in {what}")
        close = next((c for c in known if _one_typo_apart(lower, c)), None)
        if close:
            raise CardiacInputError(path, f"column {column!r} looks like a misspelt {close!r}, an option that would not "
                                          f"be applied under this name; rename it {close!r} (or, for a column of your "
                                          "own, a name further from the options: "
                                          f"{', '.join(c for c in OPTION_COLUMNS if c != 'study')})")


def _one_typo_apart(a, b):
    """Two names of 5 or more letters, of one length, that differ by one letter or by two
    neighbours swapped ('lables', 'denisty'): a typo. A plural, a suffix or another word
    ('label', 'rest_ef', 'studyid') is a column of the user's own (probe 25: a similarity cutoff
    refused rest_date, label, unit, series_no)."""
    if len(a) != len(b) or len(a) < 5 or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])


def discover_folder(folder, defaults=None, exclude=(), notes=None):
    """One study per subfolder or image file of ``folder`` (hidden entries and ``exclude`` skipped).

    An archive (by its name) is a study too, its row saying how to unpack it (dropped, it left the
    table a study short, unsaid), unless its unpacked folder lies beside it. DICOM files in the
    folder itself are a study each only when each holds a series of its own (enhanced
    multi-frame); files of one series are refused: each read as a study gave the same series 24
    times, 24 rows "ok" (probe 64). A subfolder holding a cohort table is an earlier batch's
    output, not a study: skipped, and said in ``notes`` (it was an error row 'no readable images'
    and the batch's exit 1; probe 74).
    """
    from .readers.dicom import series_uid_of
    from .readers.sniff import looks_like_dicom

    folder = Path(folder).resolve()
    skip = {os.path.realpath(p) for p in exclude}
    if os.path.realpath(folder) in skip:
        raise CardiacInputError(folder, "is both the folder of studies and --out: the outputs would be read as studies "
                                        "the next time (a study 'a/' beside 'a.nii.gz'); give another --out")
    specs, series = [], {}
    entries = sorted(folder.iterdir())
    folders = {e.name for e in entries if e.is_dir()}
    for entry in entries:
        if entry.name.startswith(".") or os.path.realpath(entry) in skip:
            continue
        if entry.is_dir() and (entry / TABLE_CSV).is_file():
            if notes is not None:
                notes.append(f"{entry} is skipped: it holds {TABLE_CSV}, the output of an earlier batch, not a study")
            continue
        lower = entry.name.lower()
        archive = next((a for a in ARCHIVE_SUFFIXES if lower.endswith(a)), None)
        if entry.is_file() and entry.name.upper() != "DICOMDIR" and looks_like_dicom(entry):
            try:
                series.setdefault(series_uid_of(entry), []).append(entry)
            except CardiacInputError:
                series.setdefault(f"<unreadable {entry.name}>", []).append(entry)   # its row says why
        elif archive and entry.is_file():
            if entry.name[: -len(archive)] not in folders:   # not unpacked beside it yet
                specs.append(StudySpec(_safe_name(entry.name), str(entry), dict(defaults or {}), name=entry.name))
        elif entry.is_dir() or lower.endswith(IMAGE_SUFFIXES):
            specs.append(StudySpec(_safe_name(_stem(entry)), str(entry), dict(defaults or {}), name=_stem(entry)))
    shared = next((files for files in series.values() if len(files) > 1), None)
    if shared:
        names = [f.name for f in shared]
        raise CardiacInputError(folder, f"holds {len(names)} DICOM files of one series itself ({', '.join(names[:3])}"
                                        f"{', ...' if len(names) > 3 else ''}): a DICOM series is one study, not one per "
                                        "file. Give a folder with one subfolder per study, a CSV manifest, or `cardiacaiseg "
                                        f"analyze {folder}` for this series")
    for files in series.values():   # a series in one file (enhanced multi-frame): a study
        specs.append(StudySpec(_safe_name(_stem(files[0])), str(files[0]), dict(defaults or {}), name=_stem(files[0])))
    specs.sort(key=lambda s: s.input)
    if not specs:
        raise CardiacInputError(folder, "holds no studies: give a folder with one study per subfolder or image file "
                                        f"({', '.join(IMAGE_SUFFIXES)}), or a CSV manifest")
    _check_unique(specs, folder, rename="rename one of the two in the folder, or list the studies in a CSV manifest "
                                        "with a 'study' column")
    return specs


def _check_unique(specs, where, rename="manifest column 'study'"):
    """Every study writes into a folder of its own name under the output folder: two of one name,
    or one named like a file the cohort writes there (its table, its report), would overwrite
    each other once every study has run (a study named 'cohort.csv' ended the cohort with a
    traceback when the table was written)."""
    reserved = {TABLE_CSV, TABLE_PARQUET, REPORT_PNG}
    seen = {}
    for s in specs:
        if s.study.lower() in reserved:
            raise CardiacInputError(where, f"study {s.study!r} ({s.input}) is named like the cohort's own "
                                           f"{s.study.lower()} in the output folder; give it another name ({rename})")
        # by the lower-case name: on macOS, Windows and most network shares P001 and p001 are
        # one folder
        if s.study.lower() in seen:
            other = seen[s.study.lower()]
            same_case = other.study == s.study
            ids = "" if other.id == other.study and s.id == s.study else \
                f" (ids {other.id!r} and {s.id!r} as folder names: letters, digits, '.', '_' and '-')"
            raise CardiacInputError(where, f"two studies would write into the same folder {s.study!r}"
                                           f"{'' if same_case else f' (and {other.study!r}: one folder where case does not count)'}"
                                           f"{ids}: {other.input} and {s.input}; give them distinct names ({rename})")
        seen[s.study.lower()] = s


def load_cohort(source, defaults=None, exclude=(), notes=None):
    """StudySpecs from a CSV manifest or a folder of studies (``notes``: a list that gets what the
    user should hear of the folder's entries left out)."""
    source = Path(source)
    if not source.exists():
        raise CardiacInputError(source, "not found: give a CSV manifest or a folder of studies")
    if source.is_dir():
        return discover_folder(source, defaults, exclude, notes)
    if source.suffix.lower() != ".csv":
        raise CardiacInputError(source, "is neither a folder of studies nor a CSV manifest (.csv)")
    specs = read_manifest(source, defaults)
    _refuse_paths_all_missing(source, specs)
    if notes is not None:
        notes += _read_twice(specs)
    return specs


def _refuse_paths_all_missing(manifest, specs):
    """Paths written from another folder than the manifest's made one error row per study, an
    empty figure and exit 1 after the cluster had started (probe 91): where none exists, the
    manifest's fault is said as one, before the batch."""
    if not specs or any(Path(s.input).exists() for s in specs):
        return
    raise CardiacInputError(manifest, f"none of its {len(specs)} study path{'s' if len(specs) > 1 else ''} exists (e.g. "
                                      f"{specs[0].input}): relative paths are read from the manifest's own folder "
                                      f"({Path(manifest).resolve().parent}), not from where the command runs")


def _read_twice(specs):
    """Notes on manifest rows that read one input (and series) under two study ids: run twice, they
    count twice in the cohort's statistics (unsaid before; probe 74). A note, not a refusal: two
    readings of one study (labels and a network) may be what the manifest asks for."""
    first, notes = {}, []
    for spec in specs:
        key = (os.path.realpath(spec.input), spec.options.get("series"))
        if key in first:
            notes.append(f"studies {first[key].id!r} and {spec.id!r} read the same input {spec.input}"
                         + (f" (series {key[1]})" if key[1] else "") + ": the cohort's statistics count it twice")
        else:
            first[key] = spec
    return notes


# --- one study (runs on a worker) ----------------------------------------------------------------
def _write_json_atomic(path, doc):
    from .results import json_safe
    from .scene import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(json_safe(doc), indent=1, allow_nan=False))


def read_results(study_dir):
    """results.json of a finished study, or None when it is missing or unreadable."""
    try:
        doc = json.loads((Path(study_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "schema_version" in doc else None


def is_measure_key(column):
    """``column`` is a key of the cohort table's measures (``measures.MEASURES``, per segment and
    territory keys included)."""
    from .measures import MEASURES

    for template in MEASURES:
        pattern = re.escape(template).replace(r"\{id\}", r"\d+").replace(r"\{territory\}", r"(LAD|RCA|LCx)")
        if re.fullmatch(pattern, column):
            return True
    return False


def study_complete(study_dir, spec, model=None, frames="ed_es"):
    """Outputs of a study are complete and this manifest row's: results.json present and
    readable (analyze moves all outputs in at once), made with the weights installed now
    (``weights_since_changed``), its row on disk not an error and made from the same input and
    options (a row edited to point at another input was kept from the old one on --resume, and
    a study that had failed was never run again)."""
    return incomplete_reason(study_dir, spec, model, frames) is None


def incomplete_reason(study_dir, spec, model=None, frames="ed_es"):
    """Why --resume runs a study again (a few words), or None where its outputs are complete
    (``study_complete``). Said for the studies that had outputs: a batch resumed without the
    --scene of the first ran every study again with nothing said (probe 91)."""
    results = read_results(study_dir)
    if results is None:
        return "no results yet"
    if weights_since_changed(results):
        return "made with other network weights"
    try:
        row = json.loads((Path(study_dir) / ROW_FILE).read_text())
    except (OSError, ValueError):
        # outputs without a row (a worker that died after moving them in): what they were made
        # from is unknown, and kept as complete they passed another input's or model's results
        # off as this row's (probe 64); the study runs again
        return "outputs without their row (what they were made from is unknown)"
    if row.get("status") == STATUS_ERROR:
        return "failed before"
    if row.get("superseded"):
        return "superseded by a --force batch"
    # a row without the options it was made from (written before rows carried them) runs again:
    # its input alone matched while its rest or AIF had changed (probe 71)
    changed = spec_changes(row.get("spec"), spec_signature(spec, model, frames))
    return f"made from other {changed}" if changed else None


def same_spec(stored, now):
    """A row's recorded spec is this manifest row's now: input, options and, where the row has
    them, its files' stamps. A row written before stamps were recorded is judged on input and
    options (review: the first --resume after the upgrade ran every study again, unsaid)."""
    return not spec_changes(stored, now)


# Options that only add outputs: a study made with them is complete for a batch without them
# (its numbers are the same); one made without them is not complete for a batch that asks
ADDED_OUTPUT_OPTIONS = ("scene",)


def spec_changes(stored, now):
    """What differs between a row's recorded spec and this manifest row's now ("input", "options
    model, frames", "input files (replaced since)"), or "" where none."""
    if not isinstance(stored, dict):
        return "options (the row records none)"
    if "files" not in stored:
        now = {k: v for k, v in now.items() if k != "files"}
    before, after = dict(stored.get("options") or {}), dict(now.get("options") or {})
    for key in ADDED_OUTPUT_OPTIONS:
        if before.get(key) and not after.get(key):
            before.pop(key)
    changed = ["input"] if stored.get("input") != now.get("input") else []
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if keys:
        changed.append(f"options {', '.join(keys)}")
    if "files" in now and stored.get("files") != now.get("files"):
        changed.append("input files (replaced since)")
    return "; ".join(changed)


def _supersede_rows(specs, out_root):
    """Mark the rows on disk of the studies a --force batch runs again as superseded: stopped
    before it got to them, the batch's table lists them as not run, and a later --resume must run
    them (it kept their earlier outputs as complete, and one table mixed the two runs)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    for spec in specs:
        path = Path(out_root) / spec.study / ROW_FILE
        if not path.parent.is_dir():
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            row = {"study": spec.study}   # outputs without a row would pass for complete too
        row["superseded"] = f"a --force batch started {when} runs this study again"
        _write_json_atomic(path, row)


def weights_since_changed(results):
    """'NAME vX -> vY' for each network a study's results.json was made with whose installed
    weights are other ones now (the main network by sha256, a perfusion ensemble's cine members
    by version), else []. A cohort resumed after an update of the extension kept the studies
    made with the old weights beside those of the new in one table, unsaid. A network no longer
    installed is not judged here: running the study again would only fail on it."""
    from .models.registry import list_models

    installed = {c["name"]: c for c in list_models()}
    used = results.get("model") or {}
    changed = []
    card = installed.get(used.get("name"))
    if card and used.get("sha256") and card["weights"].get("sha256") != used["sha256"]:
        changed.append(f"{card['name']} v{used.get('version', '?')} -> v{card.get('version', '?')}")
    members = used.get("perfusion_segmentation") or {}

    def listed(key):   # one member is recorded as a value, several as a list (one name was read letter by letter)
        value = members.get(key)
        return [] if value is None else value if isinstance(value, list) else [value]
    names, versions, digests = listed("cine_model"), listed("cine_model_version"), listed("cine_model_sha256")
    for n, name in enumerate(names):
        card = installed.get(name)
        version = versions[n] if n < len(versions) else "?"
        digest = digests[n] if n < len(digests) else ""
        # by sha256 where recorded: re-imported with --force under the same version, a member's
        # new weights kept the old studies complete (MBF 3.40 for 3.44; probe 95)
        if card and (str(card.get("version")) != str(version) or (digest and card["weights"].get("sha256") != digest)):
            changed.append(f"{name} v{version} -> v{card.get('version', '?')}"
                           + (" (other weights, same version)" if str(card.get("version")) == str(version) else ""))
    return changed


def spec_signature(spec, model=None, frames="ed_es"):
    """What a study's outputs were made from: its input and analyze options, as text, with the
    batch's --model and --frames where its row gives none (a `--resume --model gammanet` kept
    rows made with unet-light as complete, unsaid)."""
    options = dict(spec.options)
    options.setdefault("model", model)
    options.setdefault("frames", frames)
    return {"input": str(spec.input), "options": {k: str(v) for k, v in sorted(options.items())},
            "files": {str(p): file_stamp(p) for p in [spec.input, *options.values()]
                      if isinstance(p, (str, os.PathLike)) and os.path.isabs(p) and os.path.exists(p)}}


BROWSER_FILES = ("thumbs.db", "desktop.ini")


def file_stamp(path):
    """[size, mtime in ns] of a file, [files, total size, latest mtime] of a folder (a DICOM
    series, an ACDC patient): what --resume compares to tell an input replaced in place. Only the
    paths were compared: an image and its labels replaced by another heart's kept the old heart's
    numbers, unsaid (probe 83). A stamp, not a checksum: a cohort's images are read once."""
    if os.path.isfile(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    count = size = latest = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if name.startswith(".") or name.lower() in BROWSER_FILES:
                continue   # written by looking at the folder (Finder, Explorer), not by the scanner
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            count, size, latest = count + 1, size + st.st_size, max(latest, st.st_mtime_ns)
    return [count, size, latest]


def measures_of(rows):
    """{stable key (measures.MEASURES, results.csv's ``key`` column): number} of a study, from
    ``Analysis.table_rows()`` or from results.csv's rows; QC rows are the qc_* columns' business."""
    out = {}
    for r in rows:
        key = r.get("key") or ""
        if not key or key.startswith("qc_"):
            continue
        v = r.get("value")
        try:
            out[key] = None if v in (None, "") else float(v)
        except (TypeError, ValueError):
            out[key] = None
    return out


def _csv_rows(csv_text):
    return list(csv.DictReader(csv_text.splitlines())) if csv_text else []


def row_from_results(spec, results, measure_rows=(), total_s=None, worker=None, cpu_s=None):
    qc = results.get("qc") or {}
    model = results.get("model") or {}
    timing = results.get("timing_s") or {}
    labels = spec.options.get("labels")
    source = results.get("source") or {}
    row = {"study": spec.id, "folder": spec.study, "status": STATUS_OK if qc.get("status", "pass") == "pass" else STATUS_REVIEW,
           "kind": results.get("kind"), "input": spec.input, "series": series_text(source),
           "rest_series": series_text(source.get("rest") or {}),
           # perfusion upslope and peak enhancement are in these units (mmol/L or the scanner's signal)
           "image_units": source.get("units", ""), "error": "",
           "qc_status": qc.get("status", ""), "qc_codes": ";".join(f["code"] for f in qc.get("flags", [])),
           "warnings": " | ".join(results.get("warnings") or []),
           "segmentation": "model" if model else f"labels: {labels}",
           "model_name": model.get("name", ""), "model_version": str(model.get("version", "")) if model else "",
           "model_sha256": model.get("sha256", ""), "worker": worker or "",
           "time_total_s": total_s, "time_cpu_s": cpu_s, "time_load_s": timing.get("load"), "time_segmentation_s": timing.get("segmentation"),
           "time_measures_s": timing.get("measures"), "time_writing_s": timing.get("writing")}
    row["measures"] = measures_of(measure_rows)
    return row


def _task_failure_message(spec, error, alone=True):
    """An error row's text for a study whose Dask task failed rather than the study: a worker
    that died while running it alone is said in terms of the study's input, not of Dask's task key
    and worker address (probe 83)."""
    if type(error).__name__ == "KilledWorker" and not alone:
        return (f"{spec.input}: a worker process died while it held this study, and no worker is left to run it "
                "again alone; rerun the batch with --resume")
    if type(error).__name__ == "KilledWorker":
        return (f"{spec.input}: the worker process died while analysing this study, again when it ran alone "
                "(a crash in native code reading or segmenting it, or the machine's memory ran out); run "
                f"`cardiacaiseg analyze` on it alone to see the error")
    return f"the Dask task failed: {_error_message(error)}"


def error_row(spec, message, total_s=None, worker=None, tb=None):
    row = {c: "" for c in META_COLUMNS}
    row.update({"study": spec.id, "folder": spec.study, "status": STATUS_ERROR, "kind": spec.options.get("kind", ""), "input": spec.input,
                "error": message, "worker": worker or "", "time_total_s": total_s, "measures": {}})
    for c in FLOAT_META - {"time_total_s"}:
        row[c] = None
    if tb:
        row["traceback"] = tb
    return row


def in_manifest_terms(message):
    """The readers and the analysis speak to `analyze` ("give --dt", "choose one with --series"); a
    batch study is set in its manifest row, so each flag that is a manifest column is named as one:
    "give --dt (in a batch: the manifest's dt column)"."""
    columns = [c for c in (f[2:].replace("-", "_") for f in flags_named(message)) if c in OPTION_COLUMNS]
    if not columns:
        return message
    said = f"in a batch: the manifest's {', '.join(columns)} column{'s' if len(columns) > 1 else ''}"
    # after a message that ends in a parenthesis of its own ("give dt (seconds per frame, --dt)"),
    # a second one in a row read as a stutter (probe 108)
    return f"{message}; {said}" if message.endswith(")") else f"{message} ({said})"


def _error_message(exc):
    from .errors import OutputExistsError

    if isinstance(exc, (CardiacInputError, OutputExistsError, OSError)):
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            return f"{exc.filename}: {exc.strerror}"
        return in_manifest_terms(str(exc))
    return f"{type(exc).__name__}: {exc}"


def _worker_name():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _this_batchs_row(study_dir, spec, model, frames, batch, signature=None):
    """The row this batch (its id ``batch``) already wrote for the study from this manifest row,
    with its outputs, not an error, or the row of its --study-timeout (Dask runs the task again
    when its worker is restarted: the study is not run a second time); else None. By id, not by
    file times: a file server's clock or a 2-second file time would misdate them."""
    try:
        row = json.loads((Path(study_dir) / ROW_FILE).read_text())
    except (OSError, ValueError):
        return None
    if row.get("batch") != batch or row.get("superseded") \
            or not same_spec(row.get("spec"), signature or spec_signature(spec, model, frames)):
        return None
    if row.get("timed_out_s"):
        return row
    if row.get("status") == STATUS_ERROR or read_results(study_dir) is None:
        return None
    return row


# A worker process stopped by --study-timeout exits with this status (its nanny starts another)
STUDY_TIMEOUT_EXIT = 75


def _stop_after(timeout_s, spec, study_dir, signature, batch, force, t0):
    """Arm --study-timeout for one study in this worker process; returns ``finished()``, to call
    before the study writes its row. A study that runs longer (a reader or a fit that never ends
    on some input: the whole cohort waited on it) gets an error row saying so, and the worker
    process exits: a running analysis cannot be stopped from another thread, and its nanny
    starts a fresh worker. Studies the worker held are run again by Dask; this one finds its row
    (``_this_batchs_row``). Under the lock, either the study writes its own row or the timeout
    does, never both."""
    import threading

    lock, state = threading.Lock(), {"finished": False}

    def expire():
        with lock:
            if state["finished"]:
                return
            row = error_row(spec, f"did not finish within {timeout_s:g} s (--study-timeout): stopped, and its worker "
                                  "process restarted; run it alone (`cardiacaiseg analyze`) to see where it spends its "
                                  "time, or give a longer --study-timeout", time.perf_counter() - t0, _worker_name())
            row.update({"spec": signature, "batch": batch, "timed_out_s": float(timeout_s)})
            try:
                if force:   # as a failed run asked to replace the outputs (run_study)
                    from .outputs import REPLACED_FILES

                    for name in REPLACED_FILES:
                        try:
                            (study_dir / name).unlink(missing_ok=True)
                        except OSError:
                            pass   # (a folder of that name) the row below still says why
                study_dir.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(study_dir / ROW_FILE, row)
            finally:
                os._exit(STUDY_TIMEOUT_EXIT)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()

    def finished():
        with lock:
            state["finished"] = True
            timer.cancel()

    return finished


def run_study(spec, out_root, model=None, frames="ed_es", force=False, reports="flagged", batch=None, signature=None,
              timeout_s=None):
    """Analyse one study into ``out_root/<study>/`` and write its row; returns the row.

    ``reports``: which studies get a report.png (``analyze.run``): ``flagged`` (QC review) by
    default, since drawing it is most of a warm worker's CPU time per study.

    ``batch``: the batch's id, written into the row. Dask runs a task again when the worker that
    held its result dies, even after the study finished: the row this batch wrote is then
    returned as it is, and outputs it wrote before the row are replaced. Without that, the second
    run refused to overwrite the first's outputs and a finished study became an error row (probe 64).

    Never raises for a bad study: the failure becomes an error row (with the message and the
    traceback), so one study cannot stop the cohort. ``timeout_s`` (--study-timeout; only in a
    worker process of its own): a study running longer ends as an error row (``_stop_after``).
    """
    from . import analyze

    study_dir = Path(out_root) / spec.study
    if batch is not None:
        done = _this_batchs_row(study_dir, spec, model, frames, batch, signature)
        if done is not None:
            return done
        # without --force or --resume the batch refused to start over any results.json of its
        # studies, and it holds the folder's lock: one there now is this batch's own
        force = force or (study_dir / "results.json").exists()
    t0, cpu0 = time.perf_counter(), time.process_time()
    # the inputs as they are read, not as they are after; a batch's client gives it, as its
    # --resume compares it there (a worker on another host sees other paths or file times)
    signature = signature or spec_signature(spec, model, frames)
    worker = _worker_name()
    options = dict(spec.options)
    options.setdefault("model", model)
    options.setdefault("frames", frames)
    options.setdefault("reports", reports)
    options.pop("study", None)
    finished = _stop_after(timeout_s, spec, study_dir, signature, batch, force, t0) if timeout_s else (lambda: None)
    try:
        try:
            analysis, _ = analyze.run(spec.input, study_dir, force=force, **options)
            results = read_results(study_dir)
            if results is None:
                raise CardiacInputError(study_dir / "results.json", "was not written")
            # the measures at full precision, under the keys results.csv carries
            # CPU seconds of the worker process for the study (one study at a time per process; the
            # network's threads included): on a shared machine steadier than the wall clock
            row = row_from_results(spec, results, analysis.table_rows(), time.perf_counter() - t0, worker,
                                   time.process_time() - cpu0)
        except Exception as e:   # noqa: BLE001 - isolated: recorded as the study's error row
            row = error_row(spec, _error_message(e), time.perf_counter() - t0, worker, traceback.format_exc())
            if force:
                # asked to replace this study's outputs, and this run made none: the old ones no
                # longer belong to the manifest row, and left beside the error row they read as results
                from .outputs import REPLACED_FILES

                for name in REPLACED_FILES:
                    (study_dir / name).unlink(missing_ok=True)
    finally:
        # also when the error path itself raised: a timer left armed stopped the worker seconds
        # later in the middle of the next study (review of session 45)
        finished()
    row["spec"] = signature
    if batch is not None:
        row["batch"] = batch
    study_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(study_dir / ROW_FILE, row)
    return row


# --- the table -----------------------------------------------------------------------------------
def _read_row(spec, out_root):
    """The study's row from disk: its cohort_row.json, else rebuilt from a complete results.json."""
    study_dir = Path(out_root) / spec.study
    results = read_results(study_dir)
    try:
        row = json.loads((study_dir / ROW_FILE).read_text())
    except (OSError, ValueError):
        row = None
    if row is not None and row.get("superseded"):
        return None   # a --force batch was stopped before it ran the study again: not this run's
    if results is not None and row is None:
        # the worker died between moving the outputs in and writing the row: results.csv has the
        # same keys (values to 6 significant digits)
        csv_path = study_dir / "results.csv"
        row = row_from_results(spec, results, _csv_rows(csv_path.read_text() if csv_path.exists() else ""))
    return row


def _column_order(rows, specs):
    # measures in the order analyze writes them (Analysis.table_rows: cine, then bullseye segments;
    # perfusion, then segments, indices), the first study that has a key placing it
    measures = []
    for r in rows:
        for k in r["measures"]:
            if k not in measures:
                measures.append(k)
    extra = []
    for s in specs:
        for k in s.extra:
            if k not in extra:
                extra.append(k)
    return list(META_COLUMNS), measures, extra


def _write_table_of(specs, out_root, interrupted_by=(), since=None):
    """(columns, rows, paths): cohort.csv/parquet of what is on disk now, at the end of a run or
    when it is stopped; the studies of ``interrupted_by`` whose row was written before ``since``
    (time.time() at the run's start) are listed as not run: their outputs are an earlier run's."""
    columns, rows, _missing, groups = assemble_table(specs, out_root, stale=interrupted_by, since=since)
    return columns, rows, write_table(columns, rows, groups, out_root)


def _remove_earlier_report(out_root, since):
    """Remove a cohort_report.png an earlier batch drew: it shows numbers this run's table does not hold."""
    path = Path(out_root) / REPORT_PNG
    if path.is_file() and _written_before(path, since):
        path.unlink()


def _written_before(path, since):
    try:
        return since is not None and path.stat().st_mtime < since
    except OSError:
        return True


def assemble_table(specs, out_root, stale=(), since=None):
    """(columns, rows as flat dicts, number of studies without a row, (meta, measure, manifest) column groups)."""
    rows, missing = [], 0
    stale = {s.study for s in stale}
    for spec in specs:
        row = _read_row(spec, out_root)
        if spec.study in stale and row is not None and _written_before(Path(out_root) / spec.study / ROW_FILE, since):
            row = None   # an earlier run's row: this run did not get to the study
        if row is None:
            missing += 1
            # an earlier run's outputs may still lie in its folder: superseded, not this run's (probe 74)
            results = Path(out_root) / spec.study / "results.json"
            earlier = results.is_file() and (since is None or _written_before(results, since))
            row = error_row(spec, "not run: " + ("its outputs are an earlier run's, superseded by this one"
                                                 if earlier else "no outputs and no row")
                            + " (the run was stopped before this study finished); rerun with --resume")
        row["study"], row["folder"] = spec.id, spec.study   # rows written before the folder column had none
        row["_spec_extra"] = spec.extra
        rows.append(row)
    meta, measures, extra = _column_order(rows, specs)
    flat = []
    for r in rows:
        f = {c: r.get(c) for c in meta}
        f.update({k: r["measures"].get(k) for k in measures})
        f.update({k: r["_spec_extra"].get(k) for k in extra})
        flat.append(f)
    return meta + measures + extra, flat, missing, (meta, measures, extra)


def write_table(columns, rows, groups, out_root):
    """cohort.csv and cohort.parquet in ``out_root`` (each written to a temporary name, then moved in)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_root = Path(out_root)
    meta, measures, extra = groups
    from .results import csv_cell
    from .scene import atomic_output

    with atomic_output(out_root / TABLE_CSV, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_cell(r[c]) for c in columns])

    def arrow_type(c):
        if c in measures:
            return pa.int64() if c.endswith("_frame") else pa.float64()
        if c in FLOAT_META or c.startswith(REF_PREFIX):
            return pa.float64()
        return pa.string()

    def cell(c, v):
        if v is None or v == "":
            return None if arrow_type(c) != pa.string() else ("" if c in meta else None)
        t = arrow_type(c)
        if t == pa.int64():
            return int(v)
        if t == pa.float64():
            return float(v)
        return str(v)

    schema = pa.schema([(c, arrow_type(c)) for c in columns])
    table = pa.Table.from_pylist([{c: cell(c, r[c]) for c in columns} for r in rows], schema=schema)
    with atomic_output(out_root / TABLE_PARQUET, overwrite=True) as tmp:
        pq.write_table(table, tmp)
    return {"csv": out_root / TABLE_CSV, "parquet": out_root / TABLE_PARQUET}


# --- Dask --------------------------------------------------------------------------------------
def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))   # what this process may run on (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _worker_threads(n_workers):
    return max(1, _usable_cores() // max(1, n_workers))


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 1024 ** 2   # the largest value glibc's adaptive threshold reaches (64-bit)


def relax_malloc_trim():
    """Undo a nanny's MALLOC_TRIM_THRESHOLD_ in this worker process (glibc only); True when done.

    ``dask worker`` (with its nanny) starts workers with MALLOC_TRIM_THRESHOLD_=65536, which
    fixes glibc's mmap threshold at 128 kB: every array above that is mapped and unmapped
    again, ~80,000 page faults and 0.2 s of system time per cine study. Set while the process
    runs, the thresholds the adaptive rule would reach keep such arrays in the heap for reuse.
    (A LocalCluster of ``batch`` starts its workers without the variable: QUIET_LOCAL_CLUSTER.)
    """
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, 2 * MALLOC_MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):   # not glibc: its own allocator, nothing to undo
        return False


def ignore_terminal_interrupt():
    """In a worker process, let Ctrl-C go to the batch alone: the terminal sends SIGINT to every
    process of its group, and each worker printed a 35-line KeyboardInterrupt traceback before
    the batch's own "cancelled" (probe 74, 5 of 9 tries). The batch closes the cluster and its
    workers on a stop; a worker thread in the batch's own process is left alone."""
    import multiprocessing
    import signal
    import threading

    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class ModelPreload(WorkerPlugin):
    """Dask worker plugin: network threads for one worker's share of the cores, the models loaded once.

    The models stay in ``registry``'s per-process cache (keyed by model folder and weights
    sha256), where ``pipeline.segment`` finds them for every study this worker runs.
    """
    name = "cardiacaiseg-model-preload"

    def __init__(self, models, threads=None, local=True):
        self.models = list(models)
        self.threads = threads
        self.local = local   # this batch's own workers (a shared cluster's keep their Ctrl-C)

    def setup(self, worker=None):
        relax_malloc_trim()
        if self.local:
            ignore_terminal_interrupt()
        if not self.models:   # labels only: no network, so no torch import either
            return
        if self.threads:
            # before the models load: onnxruntime sessions take their thread count when created
            # (CARDIACAISEG_THREADS, models/inference.cpu_threads); a value the user set wins
            # (a torch model takes it when it is built: registry._build_module)
            os.environ.setdefault("CARDIACAISEG_THREADS", str(self.threads))
        from .models import registry

        for name in self.models:
            try:
                registry.load_model(name)
            except Exception:   # noqa: BLE001 - the studies that need it will record the real error
                pass

    def teardown(self, worker=None):
        pass


def _refuse_what_every_study_would_fail_on(specs, model, scheduler=None, log=None):
    """A --model that is no installed model, or one label file for every study that is not there,
    refused before the cluster starts and before --out is written (each study became an error row,
    exit 1, and the folder then needed --resume or --force to run again; probe 74). A single
    row's own model or labels stay that row's error: the other studies run. ``log`` gets a note
    on a model that only some of the studies need and that cannot run."""
    from .analyze import SPECIAL_LABELS
    from .models import registry

    shared_model = [s for s in specs if not s.options.get("labels") and not s.options.get("model")]
    if model and not scheduler and shared_model:
        # (a remote cluster's workers have models of their own: not checked against this machine's)
        registry.get_card(model)
    if not scheduler:
        _refuse_models_no_study_can_run(shared_model, model, log)
    shared = {s.options.get("labels") for s in specs}
    if len(shared) == 1:
        labels = next(iter(shared))
        if labels and labels not in SPECIAL_LABELS and not Path(labels).expanduser().exists():
            raise CardiacInputError(labels, "label file not found (the labels of every study of the cohort)")


def _kinds_it_may_be(spec):
    """The kinds a study may be read as: its own 'kind', or either when the reader decides it from
    the images (a DICOM folder, a 4D NIfTI: frame times, then the images themselves; no cheap look
    at the files tells)."""
    return (spec.options["kind"],) if spec.options.get("kind") else (CINE, PERFUSION)


def _refuse_models_no_study_can_run(specs, model, log=None):
    """Weights missing or damaged (or an ensemble's cine member gone, or no model of a kind
    installed) made every study of that model an error row, exit 1 (probe 95): refused before the
    batch when not one of ``specs`` (the studies that segment with --model or their kind's
    default) could run. A study without a kind may be either kind, so it fails for certain only
    when neither kind's model can run: counted as cine, a cohort of perfusion folders was refused
    for a missing cine model it would never use. A model that only some studies may need is a
    note in ``log``: the others run, and those that need it become error rows that say why."""
    from .models import registry

    if not specs:
        return

    def cannot_run(kind):
        """(model name or None, why it cannot run), or None when it can."""
        try:
            name = model or registry.default_model(kind)
        except CardiacInputError as e:   # no model of that kind is installed
            return None, e.problem
        why = registry.runnable_problem(registry.get_card(name))
        return (name, why) if why else None

    kinds_of = {s.study: (None,) if model else _kinds_it_may_be(s) for s in specs}
    # kind (None: the batch's --model, whatever the kind) -> why its model cannot run, for every kind a study may be
    cannot = {kind: cannot_run(kind) for kind in dict.fromkeys(kind for kinds in kinds_of.values() for kind in kinds)}
    kindless = sum(len(kinds) > 1 for kinds in kinds_of.values())
    if all(all(cannot[kind] for kind in kinds) for kinds in kinds_of.values()):
        failing = {kind: cannot[kind] for kinds in kinds_of.values() for kind in kinds}
        if len(failing) == 1:
            kind, (name, why) = next(iter(failing.items()))
            raise CardiacInputError(name or kind, f"the model every study without its own would run cannot run: {why}"
                                    if name else f"{why}, and every study without labels or a model of its own is {kind}")
        raise CardiacInputError(", ".join(name or kind for kind, (name, _) in failing.items()),
                                "no study without labels or a model of its own could run: "
                                + "; ".join(f"the {kind} model {name!r} cannot run: {why}" if name else why
                                            for kind, (name, why) in failing.items())
                                + (f" ({kindless} stud{'y has' if kindless == 1 else 'ies have'} no 'kind': the reader "
                                   "decides it from the images, cine or perfusion)" if kindless else ""))
    for kind in (CINE, PERFUSION):
        if log is not None and cannot.get(kind):
            name, why = cannot[kind]
            sure = sum(kinds == (kind,) for kinds in kinds_of.values())
            who = " and ".join(part for part in (
                f"{sure} {kind} stud{'y' if sure == 1 else 'ies'}" if sure else "",
                f"those of the {kindless} without a 'kind' the reader finds {kind}" if kindless else "") if part)
            log(f"note: {f'the {kind} model {name!r} cannot run ({why})' if name else why}: {who} will be error rows")


def models_needed(specs, model=None):
    """Registry model names the studies will segment with (studies with labels need none)."""
    names = set()
    tasks = set()
    for s in specs:
        if s.options.get("labels"):
            continue
        if s.options.get("model") or model:
            names.add(s.options.get("model") or model)
        else:
            # a study without a kind may be read as either (a folder of perfusion DICOM): loading
            # only the cine model left every perfusion study to load its own in the worker
            tasks.update(_kinds_it_may_be(s))
    if tasks:
        from .models import registry

        for task in tasks:
            try:
                names.add(registry.default_model(task))
            except CardiacInputError:
                pass   # each such study records the missing model as its error
    return sorted(names)


def worker_memory_limit(specs, n_workers):
    """Bytes per LocalCluster worker: the largest study's measured need plus the libraries, within this machine."""
    from .memory_check import available_bytes, needed_bytes

    need = 0
    for s in specs:
        try:
            need = max(need, needed_bytes(s.input)[0])
        except (OSError, ValueError):
            continue
    base = int(1.5 * 1024 ** 3)   # torch, slicer-core, VTK writers and a model, measured ~1.2 GB resident
    limit = base + need
    available = available_bytes()
    if available:
        limit = min(limit * 2, max(limit, available // max(1, n_workers)))
    return int(limit)


@dataclass
class CohortRun:
    columns: list
    rows: list
    paths: dict
    counts: dict
    skipped: list
    ran: list
    dashboard: str = ""
    elapsed_s: float = 0.0


# A local cluster's scheduler, nannies and workers poll many times a second (event-loop tick
# 20 ms, memory and system monitors, the task profiler): idle, 2 workers took 0.13 CPU s per
# second here; with these settings 0.016. A study runs for seconds, so this loses nothing.
# The nanny also starts each worker with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
# adaptive mmap threshold: every array over 128 kB is then mapped and unmapped again, and a cine
# study took ~80,000 page faults and 0.2 s of system time in a worker (1,000 and 0.015 s in an
# `analyze` process). None unsets it: glibc's defaults, as in any Python process (the BLAS
# thread variables the nanny sets stay).
QUIET_LOCAL_CLUSTER = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                       "distributed.worker.memory.monitor-interval": "1s", "distributed.admin.system-monitor.interval": "2s",
                       "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


# Worker processes of a LocalCluster are forked from one forkserver process that imported these
# once, instead of each spawned worker importing them again (about 1 CPU s a worker here). No
# module in the list starts a thread or a native runtime (onnxruntime and torch are not in it:
# each worker loads its model after the fork). None: Dask's default (spawn). nibabel is not in it:
# the readers parse common NIfTI/Analyze files themselves (readers.nifti) and import it only for the rest.
FORKSERVER_PRELOAD = ("distributed", "numpy", "scipy.ndimage", "pydicom", "CardiacAISegLib.cohort",
                      "CardiacAISegLib.analyze", "CardiacAISegLib.pipeline", "CardiacAISegLib.readers",
                      "CardiacAISegLib.models.inference")


def _forkserver_config():
    """Dask config for forkserver workers with FORKSERVER_PRELOAD; {} where there is no forkserver."""
    import multiprocessing

    if not FORKSERVER_PRELOAD or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    from distributed import utils as dask_utils

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORKSERVER_PRELOAD))
    # distributed would replace the list with its own (and import pandas here to make it)
    dask_utils._forkserver_preload_set = True
    return {"distributed.worker.multiprocessing-method": "forkserver"}


def _open_client(scheduler, n_workers, specs, processes):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as e:
            raise CardiacInputError("--scheduler", f"cannot reach the Dask scheduler at {scheduler} ({e}); "
                                                   "start one with `dask scheduler` or leave --scheduler out") from None
    import logging

    # one thread per worker process: the pipeline's native libraries (ONNX, torch, VTK) are not
    # meant to share a process between concurrent studies, and processes use every core anyway.
    # silence_logs: Dask's shutdown warnings (a worker slow to exit on a busy machine) and errors
    # (a worker's last heartbeat to a scheduler already closed, printed as a traceback after a
    # run that ended well: probe 64) are noise here; a study's own failure is its error row.
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                           memory_limit=worker_memory_limit(specs, n_workers) if processes else 0,
                           dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
                           **({"host": "127.0.0.1"} if processes else {}))   # threads talk in-process, not over TCP
    try:
        return Client(cluster), cluster
    except BaseException:   # Ctrl-C while the client connects: the caller never sees the cluster to close it
        cluster.close()
        raise


def _dashboard(client):
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:   # noqa: BLE001 - a link is a nicety
        return ""
    return client.dashboard_link if "dashboard" in services else ""


def _refuse_timeout_without_nannies(client, scheduler):
    """--study-timeout stops a study by ending its worker process, which a nanny starts again: a
    worker without one (`dask worker --no-nanny`) was gone for good, and the batch waited for it
    with no table (review of session 45)."""
    bare = [address for address, info in (client.scheduler_info().get("workers") or {}).items() if not info.get("nanny")]
    if bare:
        raise CardiacInputError("--study-timeout", f"{len(bare)} worker(s) of the scheduler at {scheduler} run without a "
                                                   f"nanny ({bare[0]}): a study stopped by the timeout ends its worker "
                                                   "process, and without a nanny none starts again. Start the workers "
                                                   "with `dask worker` (a nanny is its default), or leave out "
                                                   "--study-timeout")


def run_cohort(specs, out_root, scheduler=None, workers=None, model=None, frames="ed_es", resume=False, force=False,
               processes=True, show_progress=True, log=print, report=True, reports="flagged", study_timeout_s=None):
    """Run every study as a Dask task and write the cohort table; returns a CohortRun.

    ``report``: cohort_report.png; ``reports``: which studies get their own report.png (all,
    flagged = QC review, none). ``study_timeout_s``: a study running longer becomes an error row
    and its worker process is restarted (worker processes only: a thread of this process cannot
    be stopped, so with ``processes=False`` it is refused)."""
    import dask
    from distributed import as_completed
    from tqdm import tqdm

    from .analyze import REPORT_CHOICES
    from .outputs import Terminated, deferred_signals, remembered_stop_signals

    if reports not in REPORT_CHOICES:
        raise CardiacInputError("--reports", f"{reports!r}: accepted are {', '.join(REPORT_CHOICES)}")
    if study_timeout_s is not None and not (study_timeout_s > 0 and math.isfinite(study_timeout_s)):
        raise CardiacInputError("--study-timeout", f"{study_timeout_s}: give the seconds a study may take, over 0")
    if study_timeout_s and not processes and not scheduler:
        raise CardiacInputError("--study-timeout", "needs worker processes: a study running in this process cannot be "
                                                   "stopped")
    t_start, started_at = time.perf_counter(), time.time()
    out_root = Path(out_root).resolve()   # the workers may run in another folder
    if out_root.exists() and not out_root.is_dir():
        raise CardiacInputError(out_root, "--out exists and is not a folder; give a folder for the cohort's outputs")
    for name in (TABLE_CSV, TABLE_PARQUET, REPORT_PNG):
        if (out_root / name).exists() and not (out_root / name).is_file():
            # found before any study runs, not after all of them (probe 54)
            raise CardiacInputError(out_root / name, "is in the way of the cohort's own file of that name (not a file); "
                                                     "move it or choose another --out")
    in_the_way = [s.study for s in specs if (out_root / s.study).exists() and not (out_root / s.study).is_dir()]
    if in_the_way:
        # a file where a study's folder goes ended the batch with a worker's traceback and no table
        raise CardiacInputError(out_root / in_the_way[0], f"is in the way of study {in_the_way[0]!r}'s output folder (not a "
                                                          "folder); move it or choose another --out")
    _refuse_what_every_study_would_fail_on(specs, model, scheduler, log)
    inside = next((s for s in specs if Path(s.input).is_dir() and out_root.is_relative_to(Path(s.input).resolve())), None)
    if inside is not None:
        # the cohort's outputs written into a study's own input folder (probe 74): the next read
        # of that study (a DICOM folder, an ACDC patient) finds them among its files
        raise CardiacInputError(out_root, f"--out lies inside study {inside.study!r}'s input folder {inside.input}; "
                                          "choose an output folder outside the studies")
    if not resume and not force and (out_root / TABLE_CSV).is_file():
        # another manifest's table would be replaced, its studies left unlisted (probe 54)
        raise CardiacInputError(out_root, f"already holds a cohort table ({TABLE_CSV}) from an earlier batch; pass --resume "
                                          "to keep its complete studies and run the rest, --force to run all again, or "
                                          "choose another --out")
    out_root.mkdir(parents=True, exist_ok=True)
    reasons = {s.study: incomplete_reason(out_root / s.study, s, model, frames) for s in specs} if resume else {}
    skipped = [s for s in specs if resume and reasons[s.study] is None]
    todo = [s for s in specs if s not in skipped]
    if resume:
        # why studies with outputs run again (the weights' own note follows)
        by_reason = {}
        for s in todo:
            why = reasons[s.study]
            if why not in ("no results yet", "made with other network weights"):
                by_reason.setdefault(why, []).append(s.study)
        for why, studies in by_reason.items():
            log(f"resume: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} with outputs run again, "
                f"{why} ({', '.join(studies[:3])}{', ...' if len(studies) > 3 else ''})")
        outdated = {s.study: weights_since_changed(read_results(out_root / s.study) or {}) for s in todo}
        outdated = {k: v for k, v in outdated.items() if v}
        if outdated:
            first = next(iter(outdated))
            log(f"resume: {len(outdated)} stud{'y was' if len(outdated) == 1 else 'ies were'} made with networks whose weights "
                f"have changed since ({first}: {', '.join(outdated[first])}): run again, so that one table holds one "
                "network's numbers")
    if not resume and not force:
        done_before = [s.study for s in todo if (out_root / s.study / "results.json").exists()]
        if done_before:
            raise CardiacInputError(out_root, f"already holds outputs of {len(done_before)} of these studies "
                                              f"({', '.join(done_before[:3])}{', ...' if len(done_before) > 3 else ''}); "
                                              "pass --resume to keep them and run the rest, or --force to run all again")
    if skipped:
        log(f"resume: {len(skipped)} of {len(specs)} studies already complete, {len(todo)} to run")
    listed = {s.study for s in specs}
    others = sorted(d.name for d in out_root.iterdir() if d.is_dir() and d.name not in listed and (d / ROW_FILE).is_file())
    if others:
        # a --force or --resume run of a shorter manifest left them unsaid (probe 74)
        log(f"note: {len(others)} study folder{'s' if len(others) > 1 else ''} in {out_root} {'are' if len(others) > 1 else 'is'} "
            f"no study of this cohort ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): left as "
            f"{'they are' if len(others) > 1 else 'it is'}, not in its table")
    dashboard, client, cluster, futures, bar = "", None, None, {}, None
    superseding = force and not resume
    signals = remembered_stop_signals()
    stop = signals.__enter__()
    try:
        if todo:
            n_workers = workers or max(1, min(len(todo), _usable_cores()))
            local = {**QUIET_LOCAL_CLUSTER, **(_forkserver_config() if processes else {})} if not scheduler else {}
            with dask.config.set(local):   # the workers take it when they start
                client, cluster = _open_client(scheduler, n_workers, todo, processes)
            stop.check()
            if scheduler and study_timeout_s:
                _refuse_timeout_without_nannies(client, scheduler)
        # every refusal comes before this first write: a --force batch refused for workers without
        # a nanny had already marked the earlier run's rows superseded, so a batch that never ran
        # had changed the results on disk (a --resume then ran every study again)
        if superseding:
            _supersede_rows(todo, out_root)
            superseding = False
        if todo:
            dashboard = _dashboard(client)
            if dashboard:
                log(f"Dask dashboard: {dashboard}")
            if scheduler and not client.scheduler_info().get("workers"):
                log(f"the scheduler at {scheduler} has no workers yet: the studies wait for `dask worker {scheduler}`")
            # on a cluster the workers' hosts and core counts are their own: threads are left to
            # `dask worker --nthreads` and CARDIACAISEG_THREADS there
            client.register_plugin(ModelPreload(models_needed(todo, model), None if scheduler else _worker_threads(n_workers),
                                                local=not scheduler))
            batch_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.time_ns() % 10 ** 9}"
            signatures = {s.study: spec_signature(s, model, frames) for s in todo}
            futures = {client.submit(run_study, s, str(out_root), model, frames, force or resume, reports, batch_id,
                                     signatures[s.study], study_timeout_s, key=f"cardiacaiseg-{s.study}-{time.time_ns()}",
                                     pure=False): s
                       for s in todo}
            bar = tqdm(total=len(futures), desc="batch", unit="study", disable=not show_progress)

            def task_failed(spec, e, alone=True):
                row = error_row(spec, _task_failure_message(spec, e, alone), worker="")
                row["spec"] = signatures[spec.study]   # stamped once, before the run (a folder is walked once)
                (out_root / spec.study).mkdir(parents=True, exist_ok=True)
                _write_json_atomic(out_root / spec.study / ROW_FILE, row)
                return row

            def done(spec, row):
                bar.set_postfix_str(f"{spec.id}: {row['status']}"[:40])
                bar.update(1)

            suspects = []
            for future in as_completed(futures):
                stop.check()
                spec = futures[future]
                try:
                    done(spec, future.result())
                except Exception as e:   # noqa: BLE001 - the worker died (KilledWorker) or lost the task
                    if type(e).__name__ == "KilledWorker":
                        # Dask blames every task a dying worker held: a study queued behind the
                        # one that crashed it got the crash as its error row without having run
                        # (probe 83). Each is run again on its own once the others are done.
                        suspects.append((spec, e))
                    else:
                        done(spec, task_failed(spec, e))
            for spec, killed in suspects:
                stop.check()
                if not client.scheduler_info().get("workers"):
                    # no worker left to run it (a cluster without nannies): waiting would never end
                    done(spec, task_failed(spec, killed, alone=False))
                    continue
                future = client.submit(run_study, spec, str(out_root), model, frames, force or resume, reports, batch_id,
                                       signatures[spec.study], study_timeout_s,
                                       key=f"cardiacaiseg-{spec.study}-alone-{time.time_ns()}", pure=False)
                futures[future] = spec
                try:
                    done(spec, future.result())
                except Exception as e:   # noqa: BLE001 - run alone, the worker died again: this study's doing
                    done(spec, task_failed(spec, e))
            bar.close()
        stop.check()
    except (KeyboardInterrupt, Terminated):
        # stopped (Ctrl-C, SIGTERM), also while the cluster starts: the table still lists every
        # study, those not finished as "not run ... rerun with --resume", rather than a missing
        # or an earlier table (stopped while Dask started, a --force batch left the earlier
        # table's "6 ok" beside 6 superseded rows: probe 64)
        if bar is not None:
            bar.close()
        # a second Ctrl-C in the 2-3 s the workers take to stop broke off their close; the
        # finally closed them again and hung, and no table was written (probe 91): the stop's own
        # work is held from further stop signals, and each is closed once
        with deferred_signals():
            stopping, client = client, None
            if stopping is not None:
                if futures:
                    stopping.cancel(list(futures))   # the scheduler drops the studies not started
                stopping.close()
            stopping, cluster = cluster, None
            if stopping is not None:
                # this batch's own workers stop before the table is written: a study they were
                # running finished 2-3 s after a table that called it "not run" (on a shared
                # scheduler a running study goes on; --resume keeps it)
                stopping.close()
            if superseding:
                # stopped while Dask started: the table lists the studies as not run, so --resume must run them
                _supersede_rows(todo, out_root)
            _write_table_of(specs, out_root, interrupted_by=todo, since=started_at)
            _remove_earlier_report(out_root, started_at)
            # said before the one word "cancelled" (probe 74)
            log(f"stopped: {out_root / TABLE_CSV} lists the studies not finished as not run; the same command with "
                "--resume runs them")
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        signals.__exit__(None, None, None)
    columns, rows, paths = _write_table_of(specs, out_root)
    if report:
        from .cohort_report import write_cohort_report

        try:
            paths["report"] = write_cohort_report(rows, out_root / REPORT_PNG)
        except Exception as e:   # noqa: BLE001 - the figure is a view of the table, which is written
            # an earlier batch's figure must not stand beside this table as its picture
            _remove_earlier_report(out_root, started_at)
            log(f"warning: {REPORT_PNG} was not drawn ({type(e).__name__}: {e}); the table is complete")
    counts = {s: sum(r["status"] == s for r in rows) for s in (STATUS_OK, STATUS_REVIEW, STATUS_ERROR)}
    return CohortRun(columns, rows, paths, counts, [s.study for s in skipped], [s.study for s in todo], dashboard,
                     time.perf_counter() - t_start)
