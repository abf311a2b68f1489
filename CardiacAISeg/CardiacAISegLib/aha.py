"""AHA 17-segment model, segments 1-16 (the apical cap, 17, is not imaged in short axis).

Cerqueira et al., Circulation 2002. Basal (1-6) and mid (7-12) rings use six 60 degree
sectors starting at the anterior RV insertion and running anterior -> septal -> inferior ->
lateral; the apical ring (13-16) uses four 90 degree sectors centred on the septum.
Territories follow the usual coronary assignment (LAD / RCA / LCx).
"""

_RING6 = ("anterior", "anteroseptal", "inferoseptal", "inferior", "inferolateral", "anterolateral")
_RING4 = ("anterior", "septal", "inferior", "lateral")
_TERRITORY = {
    1: "LAD", 2: "LAD", 7: "LAD", 8: "LAD", 13: "LAD", 14: "LAD",
    3: "RCA", 4: "RCA", 9: "RCA", 10: "RCA", 15: "RCA",
    5: "LCx", 6: "LCx", 11: "LCx", 12: "LCx", 16: "LCx",
}


def _build():
    rows = []
    for level, first, names in (("basal", 1, _RING6), ("mid", 7, _RING6), ("apical", 13, _RING4)):
        for n, name in enumerate(names):
            sid = first + n
            rows.append({"id": sid, "name": f"{level} {name}", "level": level,
                         "territory": _TERRITORY[sid]})
    return rows


# [{"id": 1, "name": "basal anterior", "level": "basal", "territory": "LAD"}, ...] ids 1..16
AHA_SEGMENTS = _build()
AHA_BY_ID = {row["id"]: row for row in AHA_SEGMENTS}
LEVELS = ("basal", "mid", "apical")
TERRITORIES = ("LAD", "RCA", "LCx")


def segments_in_level(level):
    """Segment ids of ``level`` ("basal": 1-6, "mid": 7-12, "apical": 13-16)."""
    return [row["id"] for row in AHA_SEGMENTS if row["level"] == level]


def segments_in_territory(territory):
    """Segment ids supplied by ``territory`` ("LAD", "RCA" or "LCx")."""
    return [row["id"] for row in AHA_SEGMENTS if row["territory"] == territory]
