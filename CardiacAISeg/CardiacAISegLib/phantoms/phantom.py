"""Phantoms with exact truth (docs/algorithms.md §7), and writing them as files the readers load.

``cardiacaiseg phantom --kind cine|perfusion --out DIR`` writes NIfTI images, label maps in
the ACDC convention (the readers' default), the AIF as CSV (perfusion) and ``truth.json``.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError, OutputExistsError
from ..labels import to_convention
from ..results import json_safe
from .phantom_cine import make_cine_phantom  # noqa: F401  (re-exported)
from .phantom_perfusion import make_perfusion_phantom  # noqa: F401  (re-exported)

PHANTOM_FILES = {
    "cine": ("cine.nii.gz", "cine_labels.nii.gz", "truth.json"),
    "perfusion": ("perfusion.nii.gz", "perfusion_labels.nii.gz", "aif.csv", "truth.json"),
}


def _nifti(array_tkji, ijk_to_ras, path, dtype, time_step=None):
    """(T, S, R, C) -> a NIfTI (i, j, k[, t]) with the study's RAS affine."""
    import nibabel as nib

    data = np.asarray(array_tkji).transpose(3, 2, 1, 0)
    if data.shape[-1] == 1:
        data = data[..., 0]
    img = nib.Nifti1Image(data.astype(dtype), ijk_to_ras)
    img.header.set_xyzt_units("mm", "sec")
    if time_step and data.ndim == 4:
        zooms = list(img.header.get_zooms())
        zooms[3] = time_step
        img.header.set_zooms(zooms)
    nib.save(img, str(path))


# noise SDs past these give images that are mostly noise (cine: the blood signal is about 1; perfusion:
# myocardial enhancement peaks near 0.5 mmol/L): written as asked, with a word
MOSTLY_NOISE = {"cine": 0.5, "perfusion": 0.5}


def _written_by_a_phantom(out_dir):
    """Whether the phantom files in ``out_dir`` are a phantom's: its truth.json says which kind and seed."""
    try:
        meta = json.loads((Path(out_dir) / "truth.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") in PHANTOM_FILES and "seed" in meta and "truth" in meta


def mostly_noise_warning(kind, noise):
    """A sentence when ``noise`` drowns the phantom's signal, else None."""
    if noise is None or noise <= MOSTLY_NOISE[kind]:
        return None
    what = "the blood signal (about 1)" if kind == "cine" else "the myocardium's peak enhancement (about 0.5 mmol/L)"
    return (f"noise SD {noise:g} is larger than half of {what}: the images are mostly noise; analyze will find "
            "no heart (or no bolus) in them, or flag them, rather than measure what truth.json says")


def write_phantom(kind, out_dir, seed=0, force=False, **options):
    """Write a phantom study into ``out_dir``; returns (paths, study, truth)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CardiacInputError(out_dir, "exists and is not a folder: give a folder to write the phantom into")
    names = PHANTOM_FILES[kind]
    # a phantom of the other kind in the folder is replaced whole: its images kept beside this
    # one's truth.json had lost their truth, and the folder no longer read as one study (probe 74)
    earlier = [n for n in dict.fromkeys(n for files in PHANTOM_FILES.values() for n in files) if (out_dir / n).exists()]
    if earlier and not force:
        raise OutputExistsError(f"{out_dir}: would overwrite {', '.join(earlier)}; pass --force to replace them")
    truth = out_dir / "truth.json"
    if earlier and (truth.exists() or (out_dir / "aif.csv").exists()) and not _written_by_a_phantom(out_dir):
        # --force replaces an earlier phantom (its images alone, truth.json lost, too); a truth.json
        # or aif.csv of another origin (someone's ground truth, a study's own AIF) is data no
        # phantom can write back (probe 74)
        why = "its truth.json is not a phantom's" if truth.exists() else "an aif.csv with no phantom's truth.json"
        raise OutputExistsError(f"{out_dir}: holds {', '.join(earlier)} that no phantom wrote ({why}); --force replaces "
                                "only a phantom: give an empty folder")
    if kind == "cine":
        study, truth = make_cine_phantom(seed=seed, **options)
        frames = sorted(study.labels)
        labels = np.stack([to_convention(study.labels[t], "acdc") for t in frames])
    else:
        study, truth = make_perfusion_phantom(seed=seed, **options)
        labels = to_convention(next(iter(study.labels.values())), "acdc")[None]
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".phantom-", dir=out_dir))
    try:
        dt = study.median_frame_interval_s
        _nifti(study.images, study.ijk_to_ras, stage / names[0], np.float32, dt)
        _nifti(labels, study.ijk_to_ras, stage / names[1], np.uint8)
        meta = {"kind": kind, "seed": seed, "label_convention": "acdc", "dt_s": dt,
                "ed_frame": study.ed_frame, "es_frame": study.es_frame, "truth": json_safe(truth, max_array=64)}  # maps stay out of truth.json
        if kind == "perfusion":
            np.savetxt(stage / "aif.csv", study.aif, header="aif", comments="", fmt="%.6f")
            meta["hematocrit"] = study.hematocrit
        (stage / "truth.json").write_text(json.dumps(meta, indent=1))
        paths = {}
        for f in stage.iterdir():
            os.replace(f, out_dir / f.name)
            paths[f.name] = out_dir / f.name
        for name in earlier:
            if name not in paths:
                (out_dir / name).unlink(missing_ok=True)
        return paths, study, truth
    finally:
        shutil.rmtree(stage, ignore_errors=True)
