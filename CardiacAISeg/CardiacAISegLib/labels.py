"""Label conventions.

Inside CardiacAISeg every label map uses one convention: 0 background, 1 LV blood pool,
2 LV myocardium, 3 RV (the order of the segments in the output segmentation). Readers
normalise other conventions on load; writers of ground truth convert back.
"""
import numpy as np

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3

# name -> (label value, RGB colour 0..1). Colours follow Slicer's generic anatomy colours
# for heart chambers/muscle so the segmentation looks as users expect.
SEGMENTS = {
    "LV blood pool": (LV, (0.85, 0.29, 0.27)),
    "LV myocardium": (MYO, (0.78, 0.64, 0.41)),
    "RV": (RV, (0.36, 0.56, 0.85)),
}
SEGMENT_IDS = {"LV blood pool": "lv", "LV myocardium": "myo", "RV": "rv"}

# What annotators name the three structures (Slicer segment names, seg.nrrd files, other tools),
# compared lower-case with '_' and '-' as spaces: one list for the file reader and the Slicer
# Logic, which had two (a segmentation named "LV", "Myocardium", "RV" read by one, not the other).
SEGMENT_NAME_WORDS = {
    LV: ("lv", "lv blood pool", "lv pool", "lv cavity", "lv blood", "lv endocardium", "left ventricle",
         "left ventricular cavity", "left ventricle cavity", "left ventricle blood pool", "blood pool"),
    MYO: ("myo", "myocardium", "lv myocardium", "lv myo", "lv wall", "myocardial wall", "left ventricle myocardium",
          "left ventricular myocardium", "lv muscle"),
    RV: ("rv", "right ventricle", "rv blood pool", "rv cavity", "rv pool", "right ventricular cavity",
         "right ventricle cavity", "right ventricle blood pool"),
}
_NAME_TO_LABEL = {word: label for label, words in SEGMENT_NAME_WORDS.items() for word in words}
_NAME_TO_LABEL.update({sid: SEGMENTS[name][0] for name, sid in SEGMENT_IDS.items()})


def label_of_segment_name(name):
    """The internal label (LV, MYO or RV) a segment name stands for, or None."""
    key = " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())
    return _NAME_TO_LABEL.get(key)


def unnamed_structures_problem(found_labels, unknown_names):
    """The message for a segmentation whose LV blood pool or myocardium was not found by name
    while some segments have names that are not known (a naming mismatch, not a missing
    structure), or None."""
    missing = [name for name, (value, _) in SEGMENTS.items() if value in (LV, MYO) and value not in set(found_labels)]
    if not missing or not unknown_names:
        return None
    return (f"no segment named as the {' or the '.join(missing)} (segments {', '.join(repr(n) for n in unknown_names)} are "
            f"not known names); name them e.g. {', '.join(repr(w) for w in ('LV', 'Myocardium', 'RV'))} "
            f"(known: {', '.join(SEGMENTS)} and common synonyms)")


# source label -> internal label
CONVENTIONS = {
    "internal": {1: LV, 2: MYO, 3: RV},
    "acdc": {1: RV, 2: MYO, 3: LV},
    "ukbb": {1: LV, 2: MYO, 3: RV},  # Bai et al. / UK Biobank
}


def normalise_labels(label_map, convention="acdc"):
    """Return a uint8 copy of ``label_map`` in the internal convention."""
    try:
        mapping = CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}")
    src = np.asarray(label_map)
    out = np.zeros(src.shape, np.uint8)
    for value, target in mapping.items():
        out[src == value] = target
    return out


def to_convention(label_map, convention="acdc"):
    """Convert an internal label map back to ``convention`` (e.g. to save ACDC ground truth)."""
    inverse = {v: k for k, v in CONVENTIONS[convention].items()}
    out = np.zeros(np.shape(label_map), np.uint8)
    for internal, value in inverse.items():
        out[np.asarray(label_map) == internal] = value
    return out


# The frame a cine segmentation belongs to, kept in every segment's tags: Slicer reads and writes
# segment tags with the file (node attributes stay in the scene only), so a segmentation corrected
# in Slicer and saved again still says which frame it is, and ``analyze --labels`` puts it there
# rather than on ED (an ES file given back was measured as ED). The count says which series'
# numbering it is: frame 1 of an ED/ES export is another image in the whole cycle.
FRAME_TAG = "CardiacAISeg.Frame"
FRAME_COUNT_TAG = "CardiacAISeg.FrameCount"


def frame_tags(frame, n_frames):
    """{tag: value} recording a cine segmentation's ``frame`` of ``n_frames`` (none for None)."""
    if frame is None:
        return {}
    return {FRAME_TAG: str(int(frame)), FRAME_COUNT_TAG: str(int(n_frames))}


def frame_of_header(header):
    """(frame, number of frames) a seg.nrrd's segment tags record, or None; a frame without a
    readable count gives (frame, None)."""
    n = 0
    while f"Segment{n}_Name" in header:
        tags = dict(t.partition(":")[::2] for t in str(header.get(f"Segment{n}_Tags", "")).split("|") if ":" in t)
        if tags.get(FRAME_TAG, "").strip().isdigit():
            count = tags.get(FRAME_COUNT_TAG, "").strip()
            return int(tags[FRAME_TAG]), (int(count) if count.isdigit() else None)
        n += 1
    return None
