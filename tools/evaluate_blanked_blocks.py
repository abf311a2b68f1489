"""False alarms and finds of the blanked-block damage check (readers/geometry_check.blanked_patch_mask)
on the real cines in ../shared: the 80 ACDC ED/ES pairs, Sunnybrook (20 phases) and the MetaImage
cine (30), each raw, as 8-bit exports windowed from the 10th-50th to the 95th-99.5th percentile,
and quantised to 8 levels; then blocks put at the image centre (the heart) of both real cines'
middle slices at three phases: zeros 10 and 30 px, the image mean, its 99th percentile, a band
of 5 rows across the image. A block is found when its image alone is flagged.

Usage:
  python tools/evaluate_blanked_blocks.py

(session 25: 0 of 492 stacks flagged; 268 of 270 blocks found, the two missed 10-px blocks)
"""
import itertools, numpy as np, warnings, glob
warnings.filterwarnings("ignore")
from pathlib import Path
from CardiacAISegLib.readers import load_study
from CardiacAISegLib.readers.geometry_check import blanked_patch_mask
S = Path(__file__).resolve().parents[2] / "shared" / "data"
def variants(im):
    im = im.astype(np.float32)
    yield "raw", im
    for lo_p, hi_p in ((10, 99.5), (30, 99), (50, 98), (30, 95)):
        lo, hi = np.percentile(im, lo_p), np.percentile(im, hi_p)
        yield f"u8 {lo_p}-{hi_p}", np.round(255 * np.clip((im - lo) / (hi - lo), 0, 1)).astype(np.uint8)
    q = np.percentile(im, 99.5) / 8
    yield "quant8", (np.round(np.clip(im, 0, np.percentile(im, 99.5)) / q)).astype(np.uint8)
studies = {"SB": load_study(S/"sunnybrook"/"SC-HF-I-1_dicom").images, "MI": load_study(S/"cine-metaimage"/"ExampleSequence").images}
for p in sorted(glob.glob(str(S/"acdc"/"patient*"))):
    studies[p[-10:]] = load_study(p).images
fa = {}; n = 0
for name, im in studies.items():
    for v, x in variants(im):
        n += 1
        m = blanked_patch_mask(x)
        if m.any(): fa.setdefault(v, []).append((name, np.argwhere(m).tolist()[:3]))
print("stacks", n); [print("FA", v, len(l), l[:4]) for v, l in fa.items()]
for name in ("SB", "MI"):
    im = studies[name].astype(np.float32); rows, cols = im.shape[2:]
    found = tried = 0
    for t, k in itertools.product((0, 7, 12), range(2, im.shape[1] - 2)):
        for kind in ("zero30", "mean30", "p99_30", "band5", "zero10"):
            x = im.copy(); r, c = rows // 2, cols // 2
            if kind == "zero30": x[t, k, r-15:r+15, c-15:c+15] = 0
            if kind == "zero10": x[t, k, r-5:r+5, c-5:c+5] = 0
            if kind == "mean30": x[t, k, r-15:r+15, c-15:c+15] = im[t, k].mean()
            if kind == "p99_30": x[t, k, r-15:r+15, c-15:c+15] = np.percentile(im[t, k], 99)
            if kind == "band5": x[t, k, r-2:r+3, :] = 0
            m = blanked_patch_mask(x); tried += 1; hit = m[t, k] and m.sum() == 1; found += hit
            if not hit: print("miss", name, t, k, kind, m.sum())
    print(name, "found", found, "of", tried)
