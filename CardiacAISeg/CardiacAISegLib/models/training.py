"""`cardiacaiseg train`: train or fine-tune a cine network on ACDC-layout folders.

Checkpoints (last and best by validation Dice) go to ``out_dir``; ``resume=True`` continues
from the last one. Fine-tuning starts from a registry model with the encoder frozen for the
first epochs, the 7T transfer-learning recipe of Ankenbrand et al. 2021 (ED/ES frames only).
Label maps with the LV and myocardium only (``partial_labels``) train with the marginal loss of
``partial_labels.py``, which does not teach the network that the undrawn RV is background.
"""
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..progress import as_progress
from .checkpoints import BEST, end_epoch, resume, start_run, write_split
from .loss_weights import foreground_dice_mean, rv_pixel_weights, weighted_pixel_mean


@dataclass
class TrainConfig:
    data: str
    out_dir: str
    architecture: str = "unet-light"
    arch_params: dict = field(default_factory=dict)
    pixel_mm: float = 1.25
    crop: int = 192
    patch: int = 144
    augment: str = "basic"             # "strong" adds appearance shifts (other vendors/centres)
    epochs: int = 60
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    val_per_group: int = 3
    slices_per_epoch: int = 0          # 0 = every training slice once per epoch
    threads: int = 0                   # 0 = torch default
    finetune_from: str = ""            # registry model name or checkpoint path
    freeze_epochs: int = 0             # encoder frozen for these first epochs (fine-tune)
    resume: bool = False
    force: bool = False                # replace a run already in out_dir (checked before it is removed)
    val_every: int = 1                 # validate every N epochs (and after the last); 0 = last only
    val_heart_crop_mm: float = 0.0     # validate two-stage (as a card with input.heart_crop_mm runs); 0 = whole field
    val_patients: list = field(default_factory=list)   # explicit split (e.g. a new site)
    train_patients: list = field(default_factory=list)
    partial_labels: str = "auto"       # "auto": Info.cfg LabelSet per patient; "lv_myo": all; "none": all complete
    edge_slice_weight: float = 1.0     # sampling weight of the slices at the ends of the heart (training_data.edge_slices)
    distill_from: str = ""             # registry model (or checkpoint of this architecture) whose soft labels the network also learns
    distill_weight: float = 0.5        # share of the distillation term in the loss
    distill_temperature: float = 2.0
    # the teacher read 4 ways (as is, mirrored either way, turned a half turn) and its softened
    # probabilities averaged: a better teacher for the price of 4 of its readings, a few % of
    # a γ-Net step
    distill_flips: bool = False
    lr_cycle_epochs: int = 0           # > 0: cosine restarts every N epochs, weights kept at each cycle's end (snapshots to average)
    perfusion_key_share: float = 0.0   # share of each batch that is synthetic perfusion key images (KeyImagePool)
    perfusion_key_pool: int = 800      # key images kept in memory; an eighth renewed every epoch
    oriented_share: float = 0.0        # share of samples turned as the oriented readings see the heart (else any angle)
    # weight of the RV in the loss (its Dice term, and its labelled pixels in the cross-entropy and
    # the distillation): the γ-Net trails its U-Net teacher most on the RV (held-out 0.882 vs 0.904)
    rv_weight: float = 1.0


def soft_dice_ce_loss(logits, target, n_classes, rv_weight=1.0):
    import torch
    import torch.nn.functional as F

    ce = weighted_pixel_mean(F.cross_entropy(logits, target, reduction="none"), rv_pixel_weights(target, rv_weight))
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (p * onehot).sum(dims)
    denom = p.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1) / (denom + 1)
    return ce + (1 - foreground_dice_mean(dice[1:], rv_weight))


def deep_supervision_loss(outputs, target, loss_fn):
    """``loss_fn(logits, target)`` over a network's [full, 1/2, 1/4, ...] outputs, the target
    taken to each scale by nearest neighbour, weighted 1, 1/2, 1/4, ... and normalised to sum 1
    (nnU-Net's deep supervision). A single tensor is the plain loss."""
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return loss_fn(outputs, target)
    weights = [0.5 ** i for i in range(len(outputs))]
    total = 0.0
    for w, logits in zip(weights, outputs):
        t = target if logits.shape[-2:] == target.shape[-2:] else \
            F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        total = total + w * loss_fn(logits, t)
    return total / sum(weights)


def distillation_loss(student_logits, teacher_logits, temperature=2.0, pixel_weights=None):
    """Hinton et al. 2015: KL(teacher || student) of the temperature-softened class
    probabilities per pixel (averaged with ``pixel_weights`` when given), times T^2 so its
    gradients keep their scale as T changes."""
    import torch.nn.functional as F

    t = temperature
    log_p_student = F.log_softmax(student_logits / t, 1)
    p_teacher = F.softmax(teacher_logits / t, 1)
    kl = (p_teacher * (p_teacher.clamp_min(1e-8).log() - log_p_student)).sum(1)
    return weighted_pixel_mean(kl, pixel_weights) * t * t


def teacher_logits(teacher, x, temperature=2.0, flips=False):
    """The teacher's logits for ``x``; with ``flips``, logits whose softened probabilities
    (softmax(logits / temperature)) are the mean of the teacher's on ``x`` as is, mirrored
    either way and turned a half turn, each mapped back."""
    import torch

    if not flips:
        return teacher(x)
    t = temperature
    mean = 0
    for dims in ((), (-1,), (-2,), (-2, -1)):
        logits = teacher(x.flip(dims) if dims else x)
        mean = mean + torch.softmax((logits.flip(dims) if dims else logits) / t, 1) / 4
    return t * mean.clamp_min(1e-12).log()


def load_teacher(source, architecture="unet-light", arch_params=None):
    """The network to distil from, frozen: a registry model, or a checkpoint of ``architecture``
    (with ``arch_params``)."""
    from .architectures import build
    from .registry import load_model

    if Path(source).is_file():
        from .checkpoints import load_weights_into

        teacher = build(architecture, **(arch_params or {}))
        load_weights_into(teacher, load_start_weights(source), source, architecture)
    else:
        import torch

        from ..errors import CardiacInputError
        from .registry import get_card

        card = get_card(source)
        task = "perfusion" if architecture == "perfusion-resunet" else "cine"
        # refused here, before --out is touched: a perfusion teacher of a cine run failed at the
        # first batch (48 input channels) after --force had removed the earlier run (probe 95)
        if card["task"] != task:
            raise CardiacInputError("--distill-from", f"{source} is a {card['task']} model; a {architecture} run learns "
                                                      f"from a {task} model")
        teacher = load_model(source, runtime="torch").module
        if not isinstance(teacher, torch.nn.Module):
            raise CardiacInputError("--distill-from", f"{source} runs on ONNX Runtime only (an ONNX import): distillation "
                                                      "needs a PyTorch network (a shipped model, a TorchScript or state_dict "
                                                      "import, or a run's best.pt)")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def dice(a, b):
    """Dice of two masks; NaN when both are empty (nothing to score: 1.0 there ranked a network
    that found no LV on maps whose LV had been dropped as perfect; probe 66)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def evaluate(model, folders, pixel_mm, size_multiple=16, tta="none", heart_crop_mm=None):
    """Per-patient Dice (LV, MYO, RV at ED and ES), EF and LV mass errors on the native grid.
    ``heart_crop_mm``: two-stage inference as a card with that ``input.heart_crop_mm`` runs it
    (``inference.segment_cine_volumes``, the path of every analysis), else the whole field."""
    from ..readers.acdc import load_acdc_patient
    from .inference import segment_cine_volumes

    model.eval()
    spec = {"pixel_mm": pixel_mm, "size_multiple": size_multiple, "tta": tta}
    if heart_crop_mm:
        spec["heart_crop_mm"] = heart_crop_mm
    rows = []
    for folder in folders:
        st = load_acdc_patient(folder)
        spacing_rc = st.spacing_rc
        vv = st.voxel_volume_ml
        row = {"patient": st.name, "group": st.provenance["info"].get("Group")}
        preds, heart = segment_cine_volumes(model, {t: st.images[t] for t in (st.ed_frame, st.es_frame)}, spacing_rc, spec,
                                            reference=st.ed_frame)
        if heart is not None:
            row["heart_box"] = heart
        vols = {}
        for phase, t in (("ed", st.ed_frame), ("es", st.es_frame)):
            pred = preds[t]
            gt = st.labels[t]
            for name, v in (("lv", 1), ("myo", 2), ("rv", 3)):
                row[f"dice_{name}_{phase}"] = dice(pred == v, gt == v)
            vols[phase] = {src: {v: float((m == v).sum() * vv) for v in (1, 2, 3)} for src, m in (("pred", pred), ("gt", gt))}
        for src in ("pred", "gt"):
            edv, esv = vols["ed"][src][1], vols["es"][src][1]
            row[f"ef_{src}"] = 100 * (edv - esv) / edv if edv else float("nan")
            row[f"mass_{src}"] = 1.05 * vols["ed"][src][2]
            redv, resv = vols["ed"][src][3], vols["es"][src][3]
            row[f"rvef_{src}"] = 100 * (redv - resv) / redv if redv else float("nan")
        rows.append(row)
    summary = {}
    with warnings.catch_warnings():   # a measure no patient has (the RV of LV/MYO-only maps) is NaN, said as null
        warnings.simplefilter("ignore", RuntimeWarning)
        _summarise(rows, summary)
    return summary, rows


def _summarise(rows, summary):
    for key in rows[0]:
        if key.startswith("dice_"):
            summary[key] = float(np.nanmean([r[key] for r in rows]))
    summary["ef_abs_err_pct"] = float(np.nanmean([abs(r["ef_pred"] - r["ef_gt"]) for r in rows]))
    summary["mass_abs_err_g"] = float(np.nanmean([abs(r["mass_pred"] - r["mass_gt"]) for r in rows]))
    summary["rvef_abs_err_pct"] = float(np.nanmean([abs(r["rvef_pred"] - r["rvef_gt"]) for r in rows]))
    for s in ("lv", "myo", "rv"):
        summary[f"dice_{s}"] = (summary[f"dice_{s}_ed"] + summary[f"dice_{s}_es"]) / 2
    # over the structures the maps hold (no RV in any: LV and MYO, not NaN, so a best epoch is still kept)
    summary["dice_mean"] = float(np.nanmean([summary["dice_lv"], summary["dice_myo"], summary["dice_rv"]]))


def _encoder_parameters(model):
    enc = getattr(model, "down", None) or getattr(model, "encoder", None)
    return list(enc.parameters()) if enc is not None else []


def train(config: TrainConfig, progress=None, log=print):
    import torch

    from ..errors import CardiacInputError
    from .checkpoints import LAST, load_weights_into, refuse_changed_run, refuse_changed_split, refuse_or_clear_earlier_run
    from .partial_labels import FULL, label_set_of, partial_label_loss
    from .training_data import (KeyImagePool, acdc_folders, augment_batch, augment_context, checked_training_patient,
                                labelled_slices_with_sets, random_crop, refuse_empty_training_split, split_patients)

    progress = as_progress(progress)
    if not 0 <= config.perfusion_key_share < 1:   # before anything is loaded or written
        raise CardiacInputError("--perfusion-key-share", f"{config.perfusion_key_share} is not a share of a batch; give 0 "
                                                         "(cine slices only) up to below 1")
    config = with_start_architecture(config)
    out_dir = Path(config.out_dir)
    # everything that can be refused is checked before anything in --out is written or removed
    # (a refused run left split.json, which blocked the rerun; --force removed the earlier run
    # before a bad --params was found; probe 66)
    saved_run = refuse_changed_run(out_dir, config) if config.resume else None
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_network(config)
    context = getattr(model, "context_slices", 0)
    if config.finetune_from:
        load_weights_into(model, widen_input_channels(load_start_weights(config.finetune_from), model), config.finetune_from,
                          _described(config))
    teacher = load_teacher(config.distill_from, config.architecture, config.arch_params) if config.distill_from else None

    if config.train_patients or config.val_patients:
        root = Path(config.data)
        train_f = [root / p for p in config.train_patients]
        val_f = [root / p for p in config.val_patients]
    else:
        train_f, val_f = split_patients(acdc_folders(config.data), config.val_per_group, config.seed)
    refuse_empty_training_split(config.data, train_f, val_f, config.val_per_group)
    if config.resume:
        refuse_changed_split(out_dir, train_f, val_f)
    notes = []
    slices, label_sets, edges = labelled_slices_with_sets(train_f, config.pixel_mm, config.partial_labels, context=context,
                                                          notes=notes)
    for f in val_f:
        checked_training_patient(f, label_set_of(f, config.partial_labels), "validation")
    val_full = all(label_set_of(f, config.partial_labels) == FULL for f in val_f)

    refuse_or_clear_earlier_run(out_dir, config.resume, config.force)
    if config.resume and not (out_dir / LAST).is_file():
        log(f"nothing to resume in {out_dir} (no {LAST}): starting the run")
    out, rng = start_run(config)
    write_split(out, train_f, val_f)
    if config.finetune_from:
        log(f"fine-tuning from {config.finetune_from}")
    if teacher is not None:
        log(f"distilling from {config.distill_from} (weight {config.distill_weight:g}, temperature {config.distill_temperature:g}"
            f"{', read 4 ways' if config.distill_flips else ''})")
    if config.rv_weight != 1.0:
        log(f"the RV weighted {config.rv_weight:g} in the loss (its Dice term, its pixels in the cross-entropy"
            f"{' and the distillation' if teacher is not None else ''})")
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = lr_schedule(torch, opt, config)
    start_epoch, best, history = resume(out, model, opt, sched, saved_run) if config.resume else (0, -1.0, [])
    if start_epoch:
        log(f"resumed at epoch {start_epoch}")
        replan_decay(opt, sched, config, start_epoch, log)

    for note in notes:
        log(note)
    has_rv_all = np.array([s == FULL for s in label_sets])
    partial_note = f" ({int((~has_rv_all).sum())} with LV/MYO labels only)" if not has_rv_all.all() else ""
    log(f"{len(train_f)} training patients, {len(slices)} slices{partial_note}; {len(val_f)} validation patients")
    sample_p = None
    if config.edge_slice_weight != 1.0:
        weights = np.where(edges, config.edge_slice_weight, 1.0)
        sample_p = weights / weights.sum()
        log(f"{int(edges.sum())} slices at the ends of the heart drawn {config.edge_slice_weight:g}x as often")
    keys = None
    if config.perfusion_key_share > 0:
        keys = KeyImagePool(train_f, config.pixel_mm, config.crop, config.perfusion_key_pool, config.perfusion_key_share, rng)
        log(f"{config.perfusion_key_share:.0%} of each batch: synthetic perfusion key images ({len(keys.images)} kept, "
            f"from {len(keys.anatomy)} training slices)")
    n_classes = 4
    per_epoch = config.slices_per_epoch or len(slices)
    steps = max(1, per_epoch // config.batch)
    size_multiple = getattr(model, "size_multiple", 16)
    for epoch in range(start_epoch, config.epochs):
        frozen = epoch < config.freeze_epochs
        for p in _encoder_parameters(model):
            p.requires_grad_(not frozen)
        model.train()
        t0, losses = time.time(), []
        if sample_p is None:
            order = rng.permutation(len(slices))
        else:   # weighted draws with replacement (without it, an epoch of most slices would be near uniform)
            order = rng.choice(len(slices), size=steps * config.batch, replace=True, p=sample_p)
        for s in range(steps):
            idx = order[(s * config.batch) % len(slices):][: config.batch]
            if len(idx) < config.batch:
                idx = rng.choice(len(slices), config.batch)
            n_keys = keys.draw_count(config.batch, rng) if keys else 0
            idx = idx[: config.batch - n_keys]
            crops = [random_crop(*slices[i], config.crop, rng) for i in idx]
            crops += [random_crop(*keys.item(rng, context), config.crop, rng) for _ in range(n_keys)]
            x = np.stack([c[0] for c in crops])
            x = torch.from_numpy(augment_context(x, rng) if context else x[:, None])
            y = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
            x, y = augment_batch(x, y, rng, config.patch, config.augment, config.oriented_share)
            outputs = model(x)
            logits = outputs[0] if isinstance(outputs, list) else outputs
            batch_has_rv = np.concatenate([has_rv_all[idx], np.ones(n_keys, bool)])   # key images are fully labelled
            if batch_has_rv.all():
                loss = deep_supervision_loss(outputs, y, lambda lg, t: soft_dice_ce_loss(lg, t, n_classes, config.rv_weight))
            else:
                has_rv = torch.from_numpy(batch_has_rv)
                loss = deep_supervision_loss(outputs, y, lambda lg, t: partial_label_loss(lg, t, has_rv, n_classes,
                                                                                        config.rv_weight))
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher_logits(teacher, x, config.distill_temperature, config.distill_flips)
                loss = (1 - config.distill_weight) * loss + config.distill_weight * distillation_loss(
                    logits, soft, config.distill_temperature, rv_pixel_weights(y, config.rv_weight))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            progress(epoch * steps + s + 1, config.epochs * steps, f"epoch {epoch + 1} loss {np.mean(losses):.3f}")
        sched.step()
        if keys:
            keys.renew(rng)
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1), "frozen_encoder": frozen}
        last_epoch = epoch + 1 == config.epochs
        score = None
        if val_f and (last_epoch or (config.val_every and (epoch + 1) % config.val_every == 0)):
            # a network trained on crops is ranked as the card will run it
            summary, _ = evaluate(model, val_f, config.pixel_mm, size_multiple,
                                  heart_crop_mm=config.val_heart_crop_mm or None)
            entry.update(summary)
            # validation maps without the RV cannot score it: rank checkpoints by LV and MYO then
            score = summary["dice_mean"] if val_full else (summary["dice_lv"] + summary["dice_myo"]) / 2
        best = end_epoch(out, model, opt, sched, config, history, entry, score, best, log)
        if config.lr_cycle_epochs and (epoch + 1) % config.lr_cycle_epochs == 0:
            # the low-learning-rate end of each cycle: snapshots whose average (tools/average_runs.py)
            # lies in a flatter part of the basin than any one of them (SWA, Izmailov et al. 2018)
            torch.save(model.state_dict(), out / snapshot_name(epoch + 1))
    if not val_f or best < 0:
        torch.save(model.state_dict(), out / BEST)
    return history


def build_network(config):
    """The network of ``config``, or a CardiacInputError naming --params when the architecture
    takes no such parameter (a TypeError of the class's __init__ before)."""
    from ..errors import CardiacInputError
    from .architectures import build

    try:
        return build(config.architecture, **config.arch_params)
    except TypeError as e:
        raise CardiacInputError("--params", f"{json.dumps(config.arch_params)} does not fit {config.architecture} ({e}); "
                                            "see the parameters in its model card (cardiacaiseg models --json)")


def _described(config):
    return f"{config.architecture} {json.dumps(config.arch_params)}" if config.arch_params else config.architecture


def lr_schedule(torch, opt, config):
    """Cosine decay to 2 % of the rate over the run, or over each cycle of ``lr_cycle_epochs``."""
    eta_min = config.lr * 0.02
    if config.lr_cycle_epochs:
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=config.lr_cycle_epochs, eta_min=eta_min)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1), eta_min=eta_min)


def replan_decay(opt, sched, config, start_epoch, log=print):
    """A run resumed with another --epochs: its one cosine decay stretched over the new length,
    the learning rate set where the new plan has it at ``start_epoch``. The scheduler restored
    from last.pt kept the first plan's length, so past its end the rate climbed back up the
    cosine (a 2-epoch run resumed to 4 ended at 1e-3, not 2e-5; probe 66)."""
    import math

    import torch

    if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) or sched.T_max == max(config.epochs, 1):
        return
    if config.epochs <= start_epoch:
        log(f"the run has {start_epoch} epochs already (--epochs {config.epochs}): nothing to train")
        return
    sched.T_max = config.epochs
    lr = sched.eta_min + (config.lr - sched.eta_min) * (1 + math.cos(math.pi * start_epoch / sched.T_max)) / 2
    for group in opt.param_groups:
        group["lr"] = lr
    sched._last_lr = [lr for _ in opt.param_groups]
    log(f"learning-rate decay re-planned over {config.epochs} epochs: {lr:.3g} at epoch {start_epoch + 1}")


def snapshot_name(epoch):
    return f"snapshot-{epoch:03d}.pt"


def with_start_architecture(config):
    """``config`` with the architecture parameters of the registry model it fine-tunes (e.g. the
    shipped unet-light's filters) when it names none itself: a fine-tune builds the network it
    starts from, and its checkpoint records them for shipping."""
    from dataclasses import replace

    if not config.finetune_from or config.arch_params or _names_a_file(config.finetune_from):
        return config
    from .registry import get_card

    card = get_card(config.finetune_from)
    refuse_unbuildable_start(card, "--finetune")
    if card["architecture"]["name"] != config.architecture:
        return config   # load_start_weights says what does not fit
    return replace(config, arch_params=dict(card["architecture"].get("params", {})))


def refuse_unbuildable_start(card, flag):
    """A registry model a run starts from (--finetune) must be weights of a network this tool
    builds: an imported TorchScript or ONNX model has none to train (a KeyError 'architecture'
    before; probe 95)."""
    from ..errors import CardiacInputError

    if card["weights"]["format"] != "state_dict" or not isinstance(card.get("architecture"), dict):
        raise CardiacInputError(flag, f"{card['name']} is an imported {card['weights']['format']} model: its weights are no "
                                      "network this tool builds and trains; fine-tune a shipped model, a run's best.pt, or a "
                                      "state_dict model with an 'architecture' entry (or distil from it with --distill-from)")


def widen_input_channels(state, model):
    """``state`` for ``model`` when the model reads more input channels than the weights were
    trained with (a 2.5D fine-tune of a one-slice network): the old first-layer weights go to the
    centre channel, the neighbours' start at zero, so training starts from the old network's
    exact output and learns what the neighbours add."""
    import torch

    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is not None and value.ndim == 4 and want.ndim == 4 and value.shape[1] == 1 and want.shape[1] > 1 \
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            widened = torch.zeros_like(want)
            widened[:, want.shape[1] // 2] = value[:, 0]
            out[key] = widened
    return out


def _names_a_file(source):
    """``source`` (--finetune, --distill-from) is a path rather than a registry model name."""
    p = Path(source)
    return p.exists() or p.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin") or len(p.parts) > 1


def load_start_weights(source):
    from ..errors import CardiacInputError
    from .checkpoints import read_checkpoint

    p = Path(source)
    if p.is_file():
        ck = read_checkpoint(p)
        return ck["model"] if isinstance(ck, dict) and "model" in ck else ck
    if _names_a_file(source):
        # a path, not a model name: "no such model; installed models: ..." hid a mistyped file name
        raise CardiacInputError(p, "no such checkpoint file" if not p.exists() else "is a folder, not a checkpoint file")
    from .registry import get_card, load_model

    refuse_unbuildable_start(get_card(source), "--finetune")
    return load_model(source, runtime="torch").module.state_dict()  # the torch weights, not the ONNX export
