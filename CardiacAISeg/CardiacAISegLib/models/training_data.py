"""Training slices from ACDC-layout folders, patient split and batch augmentation (torch)."""
import random
from pathlib import Path

import numpy as np

from ..readers.acdc import load_acdc_patient, read_info_cfg
from .preprocess import model_grid_shape, normalise_volume, resample_slices, with_context_slices


def acdc_folders(root):
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if (p / "Info.cfg").is_file())
    if not folders:
        from ..errors import CardiacInputError

        raise CardiacInputError(root, "no ACDC patient folders (with Info.cfg) found")
    return folders


def split_patients(folders, val_per_group=3, seed=0):
    """Patient-level split, stratified by the Info.cfg Group (DCM, HCM, MINF, NOR, RV)."""
    groups = {}
    for f in folders:
        groups.setdefault(read_info_cfg(Path(f) / "Info.cfg").get("Group", "?"), []).append(f)
    rng = random.Random(seed)
    train, val = [], []
    for g in sorted(groups):
        members = sorted(groups[g])
        rng.shuffle(members)
        val += members[:val_per_group]
        train += members[val_per_group:]
    return sorted(train), sorted(val)


def labelled_slices(folders, pixel_mm, progress=None, with_edges=False, context=0):
    """All labelled (image, label) slices resampled to ``pixel_mm``; ED/ES frames alone suffice.
    ``with_edges``: also a bool per slice, ``edge_slices`` of its frame's stack. ``context`` > 0:
    each image is (2 context + 1, rows, cols), the slice between its neighbours in the stack
    (``preprocess.with_context_slices``, as a 2.5D network reads it at inference)."""
    items, edges = [], []
    for n, folder in enumerate(folders):
        if progress:
            progress(n, len(folders), f"loading {Path(folder).name}")
        study_items, study_edges = study_slices(load_acdc_patient(folder), pixel_mm, context)
        items += study_items
        edges += study_edges
    return (items, edges) if with_edges else items


def refuse_empty_training_split(data, train_folders, val_folders, val_per_group):
    """A CardiacInputError when the split leaves no training patient (every patient of a small
    data folder went to validation: a bare ZeroDivisionError before; probe 66)."""
    if not train_folders:
        from ..errors import CardiacInputError

        raise CardiacInputError(data, f"no training patient is left: the {len(val_folders)} patients all go to validation "
                                      f"(--val-per-group {val_per_group} per Info.cfg Group); lower --val-per-group or "
                                      "add patients")


def study_slices(study, pixel_mm, context=0):
    """(items, edges) of one loaded patient: ``labelled_slices`` of its labelled frames."""
    import torch

    items, edges = [], []
    spacing_rc = study.spacing_rc
    for t, lab in study.labels.items():
        vol = normalise_volume(study.images[t])
        grid = model_grid_shape(vol.shape[1:], spacing_rc, pixel_mm)
        img = resample_slices(torch.from_numpy(with_context_slices(vol, context)), grid).numpy()
        lbl = resample_slices(torch.from_numpy(lab.astype(np.float32))[:, None], grid, mode="nearest")[:, 0].numpy().astype(np.uint8)
        for k in range(img.shape[0]):
            items.append((img[k] if context else img[k, 0], lbl[k]))
        edges.extend(edge_slices(lbl))
    return items, edges


ACDC_VALUES = "0 background, 1 RV, 2 myocardium, 3 LV blood pool"


def checked_training_patient(folder, label_set, role="training"):
    """The loaded patient of a training run, or a CardiacInputError naming the folder and file:
    label maps a network must not learn from (values ACDC does not use, set to background by the
    reader: an LV coded 4 or 0/255 masks trained as background with Dice 1.0 on empty maps, exit
    0; probe 66), a patient with no usable map (skipped without a word), a validation patient
    without ED and ES maps (a KeyError after the first epoch), an LV/MYO-only map with RV (1) but
    no LV pool (3) voxels (1 = LV coding: the LV was trained as "background or RV"). Returns (study, note):
    the note names a training patient's frames without labels, which are left out."""
    from ..errors import CardiacInputError
    from .partial_labels import FULL, LV, LV_MYO, RV

    folder = Path(folder)
    study = load_acdc_patient(folder)
    problems = study.provenance.get("label_problems", {})
    missing = study.provenance.get("missing_label_files", {})
    if problems:
        first = problems[min(problems)]
        raise CardiacInputError(folder, f"{role} patient's label map cannot be trained on: {first} (ACDC's values: "
                                        f"{ACDC_VALUES}); recode the map, or move the patient out of the data folder")
    if role == "validation":
        for phase, t in (("ED", study.ed_frame), ("ES", study.es_frame)):
            if t not in study.labels:
                raise CardiacInputError(folder, f"validation patient without a usable {phase} label map "
                                                f"({missing.get(t, 'none found')}); validation scores ED and ES: label both, or "
                                                "move the patient out of the data folder")
    if not study.labels:
        reasons = "; ".join(missing.values()) or "no _gt label maps"
        raise CardiacInputError(folder, f"{role} patient without a usable label map ({reasons}); label it, or move it out of "
                                        "the data folder")
    if label_set == LV_MYO:
        for t, lab in study.labels.items():
            n_rv = int((lab == RV).sum())
            if n_rv and not (lab == LV).any():
                number = study.provenance["frame_numbers"][t]
                raise CardiacInputError(folder, f"LV/MYO-only labels (--partial-labels lv_myo or LabelSet lv_myo in Info.cfg), "
                                                f"but the frame {number} map holds {n_rv} voxels of value 1, the RV in ACDC's "
                                                f"convention ({ACDC_VALUES}), and no LV blood pool (3); if 1 is your LV, "
                                                "recode it to 3 and the myocardium to 2")
    notes = []
    unlabelled = [missing[t] for t in sorted(missing) if t in (study.ed_frame, study.es_frame)]
    if unlabelled:
        notes.append(f"frames without labels left out ({'; '.join(unlabelled)})")
    if label_set == FULL and not any((lab == RV).any() for lab in study.labels.values()):
        notes.append("no RV labelled in any map, so the RV is taught as background; if the maps draw the LV and "
                     "myocardium only, give --partial-labels lv_myo (or 'LabelSet: lv_myo' in its Info.cfg)")
    return study, (f"{folder.name}: " + "; ".join(notes) if notes else "")


def anatomy_slices(folders):
    """(image 0..1, labels, spacing_rc) of ED/ES slices that show LV blood pool and myocardium."""
    out = []
    for f in folders:
        st = load_acdc_patient(f)
        sp = st.spacing_rc
        for t, lab in st.labels.items():
            vol = normalise_volume(st.images[t])
            for k in range(lab.shape[0]):
                if (lab[k] == 1).sum() > 30 and (lab[k] == 2).sum() > 30:
                    out.append((vol[k], lab[k], sp))
    return out


class KeyImagePool:
    """Synthetic perfusion key images (``perfusion_synth.key_image_sample``) built on the training
    patients' anatomy, mixed into cine batches so that the cine network also reads the key images
    the perfusion ensemble gives it (issue 9: on real full-field perfusion the cine network on a
    key image found the heart where the synthetic-only perfusion network did not, but was trained
    on bSSFP contrast only). Generating one costs ~20 ms, a training step more: a pool is made up
    front and an eighth of it renewed after every epoch."""

    def __init__(self, folders, pixel_mm, crop, size, share, rng):
        self.anatomy = anatomy_slices(folders)
        self.pixel_mm, self.fov_mm, self.share = pixel_mm, crop * pixel_mm, share
        self.images = [self._make(rng) for _ in range(size)]

    def _make(self, rng):
        from .perfusion_synth import key_image_sample

        while True:
            img, lab, sp = self.anatomy[rng.integers(len(self.anatomy))]
            try:
                return key_image_sample(img, lab, sp, rng, self.pixel_mm, self.fov_mm)
            except ValueError:   # the slice's LV left the field: draw another
                continue

    def draw_count(self, batch, rng):
        return int(rng.binomial(batch, self.share))

    def item(self, rng, context=0):
        """(image, labels) of one pooled key image; with ``context`` a 2.5D stack whose neighbours
        are zero, as inference gives perfusion slices (they are not contiguous)."""
        image, labels = self.images[rng.integers(len(self.images))]
        if context:
            stack = np.zeros((2 * context + 1, *image.shape), np.float32)
            stack[context] = image
            image = stack
        return image, labels

    def renew(self, rng):
        for i in rng.choice(len(self.images), max(1, len(self.images) // 8), replace=False):
            self.images[i] = self._make(rng)


def edge_slices(label_stack):
    """(S,) bool: the slices at the ends of the heart's labelled extent in one frame's stack, the
    most basal and apical labelled slices and the unlabelled slice just beyond each. That is
    where a short-axis network errs most (ACDC held-out, unet-light v3: an atrium called LV at
    an ES base, basal myocardium half drawn, a missed apex), and where it sees fewest examples."""
    labelled = np.flatnonzero(np.asarray(label_stack).reshape(len(label_stack), -1).any(axis=1))
    edge = np.zeros(len(label_stack), bool)
    if labelled.size:
        for k in (labelled[0] - 1, labelled[0], labelled[-1], labelled[-1] + 1):
            if 0 <= k < len(label_stack):
                edge[k] = True
    return edge


def labelled_slices_with_sets(folders, pixel_mm, partial_labels="auto", progress=None, context=0, notes=None):
    """(slices, label sets, edges): ``labelled_slices``; per slice, its patient's label set
    (``partial_labels.label_set_of``), "full" or "lv_myo" (the maps of lv_myo patients hold no RV:
    any RV pixel is dropped, so the loss reads their background as "background or RV"); and the (N,) bool array of ``edge_slices``. Every
    patient is checked first (``checked_training_patient``); ``notes`` (a list) receives what
    is left out."""
    from .partial_labels import label_set_of, restrict_to_label_set

    items, sets, edges = [], [], []
    for n, folder in enumerate(folders):
        if progress:
            progress(n, len(folders), f"loading {Path(folder).name}")
        label_set = label_set_of(folder, partial_labels)
        study, note = checked_training_patient(folder, label_set)
        if note and notes is not None:
            notes.append(note)
        slices, edge = study_slices(study, pixel_mm, context)
        items += [(img, restrict_to_label_set(lbl, label_set)) for img, lbl in slices]
        sets += [label_set] * len(slices)
        edges.extend(edge)
    return items, sets, np.array(edges, bool)


def random_crop(img, lbl, size, rng, heart_bias=0.8):
    """A size x size crop (zero-padded) centred near the heart most of the time; ``img`` is
    (rows, cols) or (channels, rows, cols) (a slice with its neighbours)."""
    h, w = lbl.shape
    if lbl.any() and rng.random() < heart_bias:
        rr, cc = np.nonzero(lbl)
        cy, cx = rr.mean() + rng.normal(0, size / 6), cc.mean() + rng.normal(0, size / 6)
    else:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    top, left = int(round(cy - size / 2)), int(round(cx - size / 2))
    out_i = np.zeros((*img.shape[:-2], size, size), np.float32)
    out_l = np.zeros((size, size), np.uint8)
    ys, xs = max(top, 0), max(left, 0)
    ye, xe = min(top + size, h), min(left + size, w)
    if ye > ys and xe > xs:
        out_i[..., ys - top:ye - top, xs - left:xe - left] = img[..., ys:ye, xs:xe]
        out_l[ys - top:ye - top, xs - left:xe - left] = lbl[ys:ye, xs:xe]
    return out_i, out_l


def augment_context(x, rng, drop_p=0.2):
    """Neighbouring-slice augmentation of a (B, 2n+1, H, W) batch of 2.5D inputs, in place: the
    slice order reversed for half (readers stack base-first or apex-first: the network must not
    care which), all neighbours zeroed for ``drop_p`` of them (a lone slice, a first pass on mid
    slices, perfusion key images: inference gives zeros where it has no contiguous neighbours)."""
    b = x.shape[0]
    flip = rng.random(b) < 0.5
    x[flip] = x[flip][:, ::-1].copy()
    drop = rng.random(b) < drop_p
    centre = x.shape[1] // 2
    keep = x[drop, centre].copy()
    x[drop] = 0
    x[drop, centre] = keep
    return x


# The shipped cine cards read each heart square turned by quarter turns until the RV lies
# towards column 0 (``inference.variants_for``, "oriented4"), so once turned the LV -> RV axis
# lies within 45 degrees of the columns (55 where two turns are blended near a diagonal), either
# way along them (the readings mirror it). ``oriented_share`` of a batch is drawn that way.
ORIENTED_SPREAD_DEG = 55.0


def _heart_axis_angle(labels):
    """The LV -> RV direction of an (H, W) map in the engine's coding (``labels.LV``, ``labels.RV``,
    as the readers give training maps) as atan2(rows, columns), or None without both."""
    from ..labels import LV, RV

    lv, rv = np.nonzero(labels == LV), np.nonzero(labels == RV)
    if not len(lv[0]) or not len(rv[0]):
        return None
    return float(np.arctan2(rv[0].mean() - lv[0].mean(), rv[1].mean() - lv[1].mean()))


def training_angles(y, rng, oriented_share=0.0):
    """In-plane rotation of each sample of the (B, H, W) label batch ``y`` for `augment_batch`:
    any angle, or for ``oriented_share`` of the samples (those with an LV and an RV) an angle
    that leaves the heart's axis as the oriented readings see it (ORIENTED_SPREAD_DEG either
    side of the columns, either way along them)."""
    b = y.shape[0]
    ang = rng.uniform(-np.pi, np.pi, b)
    if oriented_share <= 0:   # the random stream of runs made before the option
        return ang
    spread = np.radians(ORIENTED_SPREAD_DEG)
    for i in np.nonzero(rng.random(b) < oriented_share)[0]:
        axis = _heart_axis_angle(np.asarray(y[i]))
        if axis is not None:
            # affine_grid samples the input at R(ang) @ output, so an input direction at angle a
            # comes out at a - ang: here pi (towards column 0) + u, or the half turn of it
            ang[i] = axis - np.pi - rng.uniform(-spread, spread) + np.pi * rng.integers(0, 2)
    return ang


def augment_batch(x, y, rng, out_size, strength="basic", oriented_share=0.0):
    """Rotation, scale, flips, gamma, coil shading, blur/noise, on a (B,C,H,W) batch
    (C > 1: a slice with its neighbours, all channels moved and shaded alike).

    Orientation conventions differ between vendors and readers, so the network is trained
    to be indifferent to in-plane rotation and mirroring: any angle, except for
    ``oriented_share`` of the batch, turned as the oriented readings present the heart
    (`training_angles`). ``strength="strong"`` widens the scale range and adds the appearance
    changes of `appearance_shift` (other vendors/centres).
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    lo_s, hi_s = (0.7, 1.4) if strength == "strong" else (0.8, 1.25)
    ang = torch.from_numpy(training_angles(y, rng, oriented_share)).float()
    scale = torch.from_numpy(np.exp(rng.uniform(np.log(lo_s), np.log(hi_s), b))).float()
    flip = torch.from_numpy(np.where(rng.random(b) < 0.5, -1.0, 1.0)).float()
    ratio = out_size / x.shape[-1]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) * ratio / scale * flip
    theta[:, 0, 1] = -torch.sin(ang) * ratio / scale
    theta[:, 1, 0] = torch.sin(ang) * ratio / scale * flip
    theta[:, 1, 1] = torch.cos(ang) * ratio / scale
    channels = x.shape[1]
    grid = F.affine_grid(theta, (b, channels, out_size, out_size), align_corners=False)
    xi = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    yi = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()

    gamma = torch.from_numpy(np.exp(rng.uniform(np.log(0.6), np.log(1.6), b))).float().view(b, 1, 1, 1)
    xi = xi.clamp(0, 1) ** gamma
    # smooth multiplicative shading: a random low-order field, as surface coils produce
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, out_size), torch.linspace(-1, 1, out_size), indexing="ij")
    coef = torch.from_numpy(rng.normal(0, 0.2, (b, 3))).float()
    field = 1 + coef[:, 0, None, None] * xx + coef[:, 1, None, None] * yy + coef[:, 2, None, None] * xx * yy
    xi = xi * field[:, None].clamp(0.5, 1.5)
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, b)).float().view(b, 1, 1, 1)
    xi = xi * contrast
    if rng.random() < 0.3:
        k = torch.tensor([0.25, 0.5, 0.25])
        xi = F.conv2d(F.pad(xi, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :]).view(1, 1, 3, 3).repeat(channels, 1, 1, 1),
                      groups=channels)
    if strength == "strong":
        xi = appearance_shift(xi, rng)
    sigma = torch.from_numpy(rng.uniform(0, 0.05, b)).float().view(b, 1, 1, 1)
    xi = xi + sigma * torch.randn_like(xi)
    return xi, yi


def appearance_shift(x, rng):
    """Per-image changes another scanner would make: resolution, blur, tone curve, offset, Rician floor.

    ACDC is one centre and one vendor; these keep the network from keying on its particular
    sharpness and grey-level histogram (the held-out studies come from other vendors).
    """
    import torch
    import torch.nn.functional as F

    b, channels, h, w = x.shape
    out = []
    for i in range(b):
        xi = x[i:i + 1]
        if rng.random() < 0.3:  # coarser acquisition matrix, interpolated back by the scanner
            f = rng.uniform(1.2, 2.0)
            small = F.interpolate(xi, size=(max(8, int(h / f)), max(8, int(w / f))), mode="bilinear", align_corners=False, antialias=True)
            xi = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
        if rng.random() < 0.3:
            s = rng.uniform(0.5, 1.3)
            r = np.arange(-3, 4)
            k = torch.from_numpy(np.exp(-r ** 2 / (2 * s * s))).float()
            k = k / k.sum()
            xi = F.conv2d(F.pad(xi, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).repeat(channels, 1, 1, 1), groups=channels)
            xi = F.conv2d(F.pad(xi, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).repeat(channels, 1, 1, 1), groups=channels)
        if rng.random() < 0.5:  # monotone tone curve through random knots
            knots = np.sort(rng.uniform(0, 1, 3))
            ys = np.concatenate([[0], np.sort(rng.uniform(0, 1, 3)), [1]])
            xs = np.concatenate([[0], knots, [1]])
            mix = rng.uniform(0.3, 0.8)
            curve = np.interp(xi.clamp(0, 1).numpy(), xs, ys).astype(np.float32)
            xi = mix * torch.from_numpy(curve) + (1 - mix) * xi
        xi = xi * rng.uniform(0.75, 1.3) + rng.uniform(-0.08, 0.08)
        if rng.random() < 0.3:
            n = rng.uniform(0.01, 0.06)
            xi = torch.sqrt((xi + n * torch.randn_like(xi)) ** 2 + (n * torch.randn_like(xi)) ** 2)
        out.append(xi)
    return torch.cat(out)
