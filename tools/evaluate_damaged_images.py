"""How often the cine misfit check (readers/geometry_check.misfit_image_mask: an image that holds
anatomy but not its slice's) and the blanked-block check (blanked_patch_mask: a block of one
value where the slice's other frames hold tissue, in the heart too) flag a good image, and how
often they find a damaged one.

False alarms: the real cines in ../shared (Sunnybrook, 20 phases; the MetaImage cine, 30), each
whole, cut to every 2nd-7th phase (coarse cycles, whose ES every slice changes at) and with
Rician noise at 2-10 % of the 99th percentile; cine phantoms of 6-25 frames with their segmented
heart left out, as the measures call it; for the block check, the 80 ACDC ED/ES pairs too. Damaged images: half an image zeroed (top, bottom,
left), the next slice's or the one after next's image in its place, a band of 40 rows zeroed;
at four phases on every slice of both real cines, and a few under noise; blocks of 10, 15 and 30
pixels zeroed at the image centre (the heart) at three phases on the middle slices.

Usage:
  python tools/evaluate_damaged_images.py

(readers/geometry_check.py, the MISFIT_ constants: session 24)
"""
import itertools
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _heart(study, margin_mm=10.0):
    from scipy import ndimage

    labels = np.stack([study.labels[t] for t in sorted(study.labels)]) > 0
    steps = max(1, int(round(margin_mm / study.spacing[0])))
    return np.stack([ndimage.binary_dilation(labels[:, k].any(0), iterations=steps) if labels[:, k].any()
                     else labels[0, k] for k in range(labels.shape[1])])


def _damaged(images, t, k, kind):
    out = images.copy()
    rows, cols = images.shape[2:]
    n_s = images.shape[1]
    if kind == "top half zeroed":
        out[t, k, :rows // 2] = 0
    elif kind == "bottom half zeroed":
        out[t, k, rows // 2:] = 0
    elif kind == "left half zeroed":
        out[t, k, :, :cols // 2] = 0
    elif kind == "next slice's image":
        out[t, k] = images[t, k + 1 if k < n_s - 1 else k - 1]
    elif kind == "image two slices on":
        out[t, k] = images[t, k + 2 if k < n_s - 2 else k - 2]
    elif kind == "band of rows zeroed":
        out[t, k, rows // 2 - 20: rows // 2 + 20] = 0
    return out


def main():
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
    from CardiacAISegLib.readers import load_study
    from CardiacAISegLib.readers.geometry_check import blanked_patch_mask, misfit_image_mask

    rng = np.random.default_rng(0)
    real = {"Sunnybrook": load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom").images.astype(np.float32),
            "MetaImage": load_study(SHARED / "cine-metaimage" / "ExampleSequence").images.astype(np.float32)}
    stacks, flagged = 0, 0
    noisy = {}
    for name, images in real.items():
        variants = [("whole", images)]
        variants += [(f"every {step}th from {start}", images[start::step])
                     for step in range(2, 8) for start in range(step) if len(images[start::step]) >= 4]
        sigma99 = float(np.percentile(images, 99))
        for level in (0.02, 0.03, 0.045, 0.06, 0.1):
            sigma = level * sigma99
            noisy[(name, level)] = np.hypot(images + rng.normal(0, sigma, images.shape),
                                            rng.normal(0, sigma, images.shape)).astype(np.float32)
            variants.append((f"noise {level:.1%}", noisy[(name, level)]))
        for what, stack in variants:
            stacks += 1
            found = np.argwhere(misfit_image_mask(stack) | blanked_patch_mask(stack)).tolist()
            if found:
                flagged += 1
                print(f"false alarm: {name} {what}: {found}")
    for seed, size, n_frames, noise in itertools.product(range(8), (64, 96, 128), (6, 12, 25), (None, 0.05)):
        kwargs = dict(seed=seed, n_frames=n_frames, n_slices=8 if size == 64 else 10, size=size)
        if noise:
            kwargs["noise"] = noise
        phantom, _ = make_cine_phantom(**kwargs)
        stacks += 1
        found = np.argwhere(misfit_image_mask(phantom.images, _heart(phantom)) | blanked_patch_mask(phantom.images)).tolist()
        if found:
            flagged += 1
            print(f"false alarm: phantom {kwargs}: {found}")
    for patient in sorted((SHARED / "acdc").glob("patient*")):
        stacks += 1
        found = np.argwhere(blanked_patch_mask(load_study(patient).images)).tolist()
        if found:
            flagged += 1
            print(f"false alarm (block): {patient.name}: {found}")
    print(f"good stacks with an image flagged: {flagged} of {stacks}")

    kinds = ("top half zeroed", "bottom half zeroed", "left half zeroed", "next slice's image",
             "image two slices on", "band of rows zeroed")
    found, tried = 0, 0
    for name, images in real.items():
        for t, k, kind in itertools.product((0, 3, 7, 12), range(images.shape[1]), kinds):
            tried += 1
            damaged = _damaged(images, t, k, kind)
            mask = misfit_image_mask(damaged) | blanked_patch_mask(damaged)
            hit = bool(mask[t, k]) and int(mask.sum()) == 1
            found += hit
            if not hit:
                print(f"missed: {name} phase {t} slice {k}, {kind} ({int(mask.sum())} flagged)")
    print(f"damaged images found alone: {found} of {tried}")
    found, tried = 0, 0
    for name, images in real.items():
        rows, cols = images.shape[2:]
        for t, k, side in itertools.product((0, 7, 12), range(2, images.shape[1] - 2), (10, 15, 30)):
            damaged = images.copy()
            damaged[t, k, rows // 2 - side // 2: rows // 2 + side // 2, cols // 2 - side // 2: cols // 2 + side // 2] = 0
            mask = blanked_patch_mask(damaged)
            tried += 1
            found += bool(mask[t, k]) and int(mask.sum()) == 1
    print(f"blocks zeroed in the heart found alone: {found} of {tried}")
    for (name, level), images in noisy.items():
        k = images.shape[1] // 2
        for kind in ("top half zeroed", "next slice's image"):
            mask = misfit_image_mask(_damaged(images, 7, k, kind))
            print(f"noise {level:.1%}, {name} phase 7 slice {k}, {kind}: {'found' if mask[7, k] else 'missed'}")


if __name__ == "__main__":
    main()
