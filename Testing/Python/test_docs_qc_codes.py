"""docs/qc-codes.md documents every QC code the package can raise: read from the sources (no
analysis runs), so a new flag without a row in the reference fails here."""
import itertools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "CardiacAISeg" / "CardiacAISegLib"
DOC = REPO / "docs" / "qc-codes.md"

# a flag's code as a literal: _flag("CODE", ...)
FLAG_LITERAL = re.compile(r'_flag\(\s*"([A-Z0-9_]+)"')
# codes passed on to _flag through a variable: _repeated_flags("CODE", ...), the range codes
# and IMAGE_LOST / IMAGE_DAMAGED in the tuples the checks loop over. In the files that raise
# flags, every upper-case string literal with an underscore is such a code.
CODE_LITERAL = re.compile(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"')
# codes built at run time: _flag(f"..{name}..", ...)
FLAG_FSTRING = re.compile(r'_flag\(\s*f"([^"]+)"')
# the templates known, and what their fields take (qc.cine_flags: name in ED, ES; phase in ed, es)
PHASES = ("ED", "ES")
FSTRING_FIELDS = {"{name}": PHASES, "{phase.upper()}": PHASES}
# qc.cine_flags: {LV: "LV", MYO: "MYO", RV: "RV"}[value] + f"_MISSING_MID_{name}"
MISSING_MID = [f"{s}_MISSING_MID_{n}" for s, n in itertools.product(("LV", "MYO", "RV"), PHASES)]


def _expand(template):
    """Every code an f-string template of ``_flag`` can make; AssertionError for a field not known."""
    fields = re.findall(r"\{[^}]*\}", template)
    unknown = [f for f in fields if f not in FSTRING_FIELDS]
    assert not unknown, (f"_flag(f\"{template}\") builds its code from {unknown}: add the values they take to "
                         "FSTRING_FIELDS in this test, and the codes to docs/qc-codes.md")
    codes = []
    for values in itertools.product(*(FSTRING_FIELDS[f] for f in fields)):
        code = template
        for field, value in zip(fields, values):
            code = code.replace(field, value, 1)
        codes.append(code)
    return codes


def raised_codes():
    """{code: file} of every QC code the package's sources can raise."""
    codes = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "_flag(" not in text:
            continue
        where = str(path.relative_to(REPO))
        found = FLAG_LITERAL.findall(text) + CODE_LITERAL.findall(text)
        for template in FLAG_FSTRING.findall(text):
            found += _expand(template)
        if "_MISSING_MID_" in text:
            found += MISSING_MID
        for code in found:
            codes.setdefault(code, where)
    return codes


def missing_from(doc_text, codes):
    """The codes of ``codes`` without a row of their own in ``doc_text``: a table row that starts
    with the code in backticks (a mention in another code's row does not document it)."""
    rows = set(re.findall(r"^\|\s*`([A-Z0-9_]+)`\s*\|", doc_text, re.M))
    return sorted(c for c in codes if c not in rows)


def test_every_qc_code_is_documented():
    codes = raised_codes()
    # the regexes still find the flags (a rename of _flag would otherwise pass this test empty)
    assert {"LV_MASS_RANGE", "AIF_FROM_LV", "MBF_SEGMENT_UNRELIABLE", "INSERTION_POINTS_MISSING",
            "SLICES_REPEATED", "IMAGE_LOST", "LV_CAVITY_GAP_ES", "RV_MISSING_MID_ED", "ES_UNCERTAIN"} <= set(codes)
    doc = DOC.read_text(encoding="utf-8")
    missing = missing_from(doc, codes)
    assert not missing, ("QC codes raised but not documented in docs/qc-codes.md: "
                         + ", ".join(f"{c} ({codes[c]})" for c in missing))
    assert "`REST_`" in doc, "docs/qc-codes.md should explain the REST_ prefix of a rest series' flags"
