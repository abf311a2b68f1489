"""Training on label maps that carry only some structures (partial labels).

Many clinics (and the Sunnybrook data) contour the LV blood pool and myocardium only. In such a
map a pixel marked background may be background or RV: the map does not say. Training on it with
the ordinary loss would teach the network that the RV is background. The loss here is the marginal
likelihood of what the map does say: where an ``lv_myo`` map says background, the target is the
event "background or RV" (cross-entropy on log(p_bg + p_rv)), and the soft Dice of the RV is taken
over the cases whose map has the RV only (Ankenbrand et al. 2021 fine-tune from a few such ED/ES
frames; the marginal loss is the partial-label loss of Shi et al. 2021, "Marginal loss and
exclusion loss for partially supervised multi-organ segmentation").

A case's label set: ``full`` (background, LV, MYO, RV all drawn) or ``lv_myo`` (no RV drawn).
ACDC-layout folders declare it in Info.cfg (``LabelSet: lv_myo``); ``cardiacaiseg train
--partial-labels lv_myo`` declares it for every training patient, ``none`` treats every map as
complete (a missing RV then is background: the naive fine-tune).
"""
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from .loss_weights import rv_pixel_weights, weighted_pixel_mean

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3
FULL, LV_MYO = "full", "lv_myo"
LABEL_SETS = {FULL: (BACKGROUND, LV, MYO, RV), LV_MYO: (BACKGROUND, LV, MYO)}
# --partial-labels: "auto" reads each patient's Info.cfg, "none" says every map is complete
PARTIAL_LABEL_CHOICES = ("auto", LV_MYO, "none")
INFO_KEY = "LabelSet"


def label_set_of(folder, choice="auto"):
    """The label set of one ACDC-layout patient folder under the ``--partial-labels`` choice."""
    if choice == LV_MYO:
        return LV_MYO
    if choice == "none":
        return FULL
    if choice != "auto":
        raise CardiacInputError("--partial-labels", f"unknown choice {choice!r}; accepted: {', '.join(PARTIAL_LABEL_CHOICES)}")
    from ..readers.acdc import read_info_cfg

    cfg = Path(folder) / "Info.cfg"
    value = read_info_cfg(cfg).get(INFO_KEY, FULL).strip().lower()
    if value not in LABEL_SETS:
        raise CardiacInputError(cfg, f"{INFO_KEY}: {value!r} is not a label set; accepted: {', '.join(LABEL_SETS)} "
                                     "(lv_myo: the maps draw the LV blood pool and myocardium only)")
    return value


def restrict_to_label_set(labels, label_set):
    """An internal-convention label map as a map of ``label_set`` would hold it: with ``lv_myo``
    any RV pixel becomes background, which there means "background or RV"."""
    labels = np.asarray(labels)
    if label_set == LV_MYO:
        return np.where(labels == RV, BACKGROUND, labels).astype(labels.dtype)
    return labels


def partial_label_loss(logits, target, has_rv, n_classes=4, rv_weight=1.0):
    """Cross-entropy + soft Dice (LV, MYO, RV) for a batch that mixes full and LV/MYO-only maps.

    ``logits`` (B, C, H, W); ``target`` (B, H, W) int64; ``has_rv`` (B,) bool, False for an
    ``lv_myo`` case. With every case full it equals ``training.soft_dice_ce_loss``. For an lv_myo
    case a background pixel contributes -log(p_bg + p_rv): the loss does not change when
    probability moves between background and RV there, so the RV of such a case is never pushed
    towards background; its Dice counts LV and MYO only. ``rv_weight`` weighs the RV's Dice term
    and its labelled pixels' cross-entropy (``loss_weights.rv_pixel_weights``).
    """
    import torch
    import torch.nn.functional as F

    has_rv = torch.as_tensor(has_rv, dtype=torch.bool, device=logits.device)
    logp = F.log_softmax(logits, 1)
    lp_target = logp.gather(1, target[:, None])[:, 0]
    lp_bg_or_rv = torch.logsumexp(logp[:, [BACKGROUND, RV]], 1)
    unsure = (~has_rv)[:, None, None] & (target == BACKGROUND)
    ce = weighted_pixel_mean(-torch.where(unsure, lp_bg_or_rv, lp_target), rv_pixel_weights(target, rv_weight))

    p = logp.exp()
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()
    terms = []
    for c in range(1, n_classes):
        known = has_rv if c == RV else torch.ones_like(has_rv)
        if not bool(known.any()):
            continue  # no case of the batch draws this class: no Dice for it
        w = known.float().view(-1, 1, 1)
        inter = (p[:, c] * onehot[:, c] * w).sum()
        denom = (p[:, c] * w).sum() + (onehot[:, c] * w).sum()
        terms.append((1 - (2 * inter + 1) / (denom + 1), rv_weight if c == RV else 1.0))
    return ce + sum(t * w for t, w in terms) / sum(w for _, w in terms)


def write_acdc_patient(folder, images, labels, spacing_xyz, ed_frame, es_frame, group="", label_set=FULL, affine=None):
    """An ACDC-layout patient folder (``patientNNN_frameXX[_gt].nii.gz`` + Info.cfg) from
    (S, R, C) image volumes and internal-convention label maps keyed by 1-based frame number;
    ``label_set`` goes into Info.cfg (``lv_myo`` maps are written without their RV)."""
    import nibabel as nib

    from ..labels import to_convention

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = folder.name
    if affine is None:
        affine = np.diag([*map(float, spacing_xyz), 1.0])
    for t, vol in images.items():
        img = nib.Nifti1Image(np.asarray(vol, np.float32).transpose(2, 1, 0), affine)
        img.header.set_zooms(tuple(float(s) for s in spacing_xyz))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(folder / f"{name}_frame{t:02d}.nii.gz"))
        if t in labels:
            lab = to_convention(restrict_to_label_set(labels[t], label_set).astype(np.uint8), "acdc")
            gt = nib.Nifti1Image(np.asarray(lab, np.uint8).transpose(2, 1, 0), affine)
            gt.header.set_zooms(tuple(float(s) for s in spacing_xyz))
            gt.header.set_xyzt_units("mm", "sec")
            nib.save(gt, str(folder / f"{name}_frame{t:02d}_gt.nii.gz"))
    lines = [f"ED: {ed_frame}", f"ES: {es_frame}", f"NbFrame: {max(images)}"]
    if group:
        lines.append(f"Group: {group}")
    lines.append(f"{INFO_KEY}: {label_set}")
    (folder / "Info.cfg").write_text("\n".join(lines) + "\n")
    return folder
