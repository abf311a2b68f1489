"""Train the perfusion network on synthetic first-pass series built on ACDC anatomy.

A pool of synthetic series is generated up front (generation costs more than a training step
on CPU) and a fraction is renewed every epoch; rot90/flip augmentation is applied per batch.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from ..progress import as_progress
from .checkpoints import end_epoch, resume, start_run, write_split


@dataclass
class PerfusionTrainConfig:
    data: str
    out_dir: str
    arch_params: dict = field(default_factory=lambda: {"in_frames": 48, "widths": [32, 48, 64], "blocks": [2, 2, 2], "bridge_blocks": 2})
    size: int = 64
    pool: int = 1600
    renew: int = 200
    epochs: int = 25
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    val_per_group: int = 3
    val_samples: int = 160
    threads: int = 0
    resume: bool = False
    force: bool = False                # replace a run already in out_dir (checked before it is removed)
    finetune_from: str = ""            # registry model name or checkpoint path to start from
    vessels: float = 0.0               # chance per series of great vessels outside the heart (perfusion_synth._paint_vessels)


def make_pool(slices, n, size, rng, vessels=0.0):
    from .perfusion_synth import synth_sample

    xs = np.empty((n, 48, size, size), np.float16)
    ys = np.empty((n, size, size), np.uint8)
    for i in range(n):
        img, lab, sp = slices[rng.integers(len(slices))]
        x, y, _ = synth_sample(img, lab, sp, rng, size=size, vessels=vessels)
        xs[i], ys[i] = x, y
    return xs, ys


def _dice_per_class(pred, gt):
    out = {}
    for name, v in (("lv", 1), ("myo", 2), ("rv", 3)):
        a, b = pred == v, gt == v
        s = a.sum() + b.sum()
        out[name] = float(2 * (a & b).sum() / s) if s else 1.0
    return out


def train_perfusion(config: PerfusionTrainConfig, progress=None, log=print):
    import torch

    from .architectures import build
    from .postprocess import keep_one_component_per_structure
    from .training import load_start_weights, soft_dice_ce_loss
    from .training_data import acdc_folders, anatomy_slices, refuse_empty_training_split, split_patients

    progress = as_progress(progress)
    from pathlib import Path

    from .checkpoints import load_weights_into, refuse_changed_run, refuse_changed_split, refuse_or_clear_earlier_run

    # as the cine runs: everything refused before --out is written or an earlier run removed
    out_dir = Path(config.out_dir)
    saved_run = refuse_changed_run(out_dir, config) if config.resume else None
    train_f, val_f = split_patients(acdc_folders(config.data), config.val_per_group, config.seed)
    refuse_empty_training_split(config.data, train_f, val_f, config.val_per_group)
    if not val_f:
        # its best epoch is chosen on validation series: an empty set ended in "high <= 0" after
        # split.json was written (probe 95)
        from ..errors import CardiacInputError

        raise CardiacInputError("--val-per-group", f"{config.val_per_group}: perfusion training keeps the epoch that "
                                                   "segments its validation series best; give 1 or more")
    if config.resume:
        refuse_changed_split(out_dir, train_f, val_f)
    torch.manual_seed(config.seed)   # start_run seeds again for training; the network's start is seeded here
    model = build("perfusion-resunet", **config.arch_params)
    if config.finetune_from:
        load_weights_into(model, load_start_weights(config.finetune_from), config.finetune_from, "perfusion-resunet")
    refuse_or_clear_earlier_run(out_dir, config.resume, config.force)
    out, rng = start_run(config)
    write_split(out, train_f, val_f)
    train_slices, val_slices = anatomy_slices(train_f), anatomy_slices(val_f)
    val_x, val_y = make_pool(val_slices, config.val_samples, config.size, np.random.default_rng(12345), config.vessels)
    log(f"{len(train_slices)} training anatomy slices, {len(val_slices)} validation; generating pool of {config.pool}")
    pool_x, pool_y = make_pool(train_slices, config.pool, config.size, rng, config.vessels)

    if config.finetune_from:
        log(f"starting from {config.finetune_from}")
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs, eta_min=config.lr * 0.02)
    start, best, history = resume(out, model, opt, sched, saved_run) if config.resume else (0, -1.0, [])
    steps = config.pool // config.batch
    for epoch in range(start, config.epochs):
        t0 = time.time()
        model.train()
        losses = []
        order = rng.permutation(config.pool)
        for s in range(steps):
            idx = order[s * config.batch:(s + 1) * config.batch]
            x = torch.from_numpy(pool_x[idx].astype(np.float32))
            y = torch.from_numpy(pool_y[idx].astype(np.int64))
            k = int(rng.integers(4))
            x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
            if rng.random() < 0.5:
                x, y = x.flip(3), y.flip(2)
            loss = soft_dice_ce_loss(model(x), y, 4)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            progress(epoch * steps + s + 1, config.epochs * steps, f"epoch {epoch + 1} loss {np.mean(losses):.3f}")
        sched.step()
        model.eval()
        with torch.inference_mode():
            pred = model(torch.from_numpy(val_x.astype(np.float32))).argmax(1).numpy().astype(np.uint8)
        scores = [_dice_per_class(keep_one_component_per_structure(p[None])[0], g) for p, g in zip(pred, val_y)]
        summary = {f"dice_{n}": float(np.mean([s[n] for s in scores])) for n in ("lv", "myo", "rv")}
        summary["dice_mean"] = float(np.mean(list(summary.values())))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1), **summary}
        best = end_epoch(out, model, opt, sched, config, history, entry, summary["dice_mean"], best, log)
        if config.renew:  # renew part of the pool so the network sees new series
            nx, ny = make_pool(train_slices, config.renew, config.size, rng, config.vessels)
            where = rng.choice(config.pool, config.renew, replace=False)
            pool_x[where], pool_y[where] = nx, ny
    return history
