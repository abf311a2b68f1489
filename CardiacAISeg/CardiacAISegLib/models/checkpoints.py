"""Run bookkeeping shared by the cine and perfusion training loops: set-up, resume, checkpoints."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

LAST, BEST = "last.pt", "best.pt"
# what a run leaves in its folder besides its snapshot-NNN.pt (training.snapshot_name)
RUN_FILES = (LAST, BEST, "history.json", "split.json")


def refuse_or_clear_earlier_run(out, resume, force, clear=True):
    """A training run already in ``out`` is continued (``resume``), replaced whole (``force``: its
    checkpoints, snapshots and history removed first, so that none of it mixes with the new run's)
    or refused: a second `train` into the first's folder had replaced its checkpoints and left its
    snapshots beside its own, exit 0 (probe 54). ``clear=False``: refuse only (the CLI's first
    check, before the data are read; the run clears after every other check)."""
    from ..errors import CardiacInputError

    out = Path(out)
    if resume and force:
        raise CardiacInputError("--resume", "and --force together: --resume continues the run in --out, --force replaces "
                                            "it; give one")
    if resume or not out.is_dir():
        return
    earlier = [p for p in out.iterdir() if p.name in RUN_FILES or (p.name.startswith("snapshot-") and p.suffix == ".pt")]
    if not earlier:
        return
    if not force:
        names = ", ".join(sorted(p.name for p in earlier)[:4]) + (", ..." if len(earlier) > 4 else "")
        raise CardiacInputError(out, f"already holds a training run ({names}); pass --resume to continue it, --force to "
                                     "replace it, or choose another --out")
    if clear:
        for p in earlier:
            p.unlink()


def start_run(config):
    """Threads, seeds and the output folder; returns (out_dir, numpy rng)."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    return out, np.random.default_rng(config.seed)


def write_split(out, train_folders, val_folders):
    (out / "split.json").write_text(json.dumps({"train": [Path(f).name for f in train_folders],
                                                "val": [Path(f).name for f in val_folders]}, indent=1))


def read_checkpoint(path):
    """torch.load of a checkpoint, or a CardiacInputError naming the file (a text file gave
    'UnpicklingError: Memo value not found', a cut-short last.pt 'PytorchStreamReader failed',
    neither naming the file; probe 66)."""
    import torch

    from ..errors import CardiacInputError

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:   # pickle, zip and torch errors alike: the file is what is wrong
        raise CardiacInputError(path, f"not a PyTorch checkpoint that can be read ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else 'no detail'}); cut short or not saved by torch")


def load_weights_into(model, state, source, described=""):
    """``model.load_state_dict(state)``, or a CardiacInputError naming ``source`` and how the
    weights differ from the network (torch's error listed every key: 9,000-18,000 characters)."""
    from ..errors import CardiacInputError

    if not isinstance(state, dict) or not state:
        raise CardiacInputError(source, f"holds no network weights (a state dict of tensors), but a {type(state).__name__}")
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [k for k in target if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what}" for v, what in ((missing, "weights the network needs are missing"),
                                                     (unexpected, "weights it does not have are present"),
                                                     (shapes, "differ in shape")) if v]
        example = (f"; e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)} in the file, {tuple(target[shapes[0]].shape)} in the "
                   "network" if shapes else f"; e.g. {(missing or unexpected)[0]}")
        raise CardiacInputError(source, f"its weights do not fit the network {described or type(model).__name__} ("
                                        f"{', '.join(parts)}{example}); give the --architecture and --params it was "
                                        "trained with")
    model.load_state_dict(state)


# What defines a run: a --resume with other values would continue it as another run (a new
# --seed re-split the patients, the trained ones validated; a longer --epochs climbed the
# learning rate back up the cosine (now re-planned); probe 66). Threads, --quiet and --out do not.
# --epochs may grow: training.replan_decay stretches the decay over the new length.
RUN_DEFINING = ("architecture", "arch_params", "pixel_mm", "crop", "patch", "augment", "batch", "lr", "seed",
                "val_per_group", "slices_per_epoch", "finetune_from", "freeze_epochs", "partial_labels",
                "edge_slice_weight", "distill_from", "distill_weight", "distill_temperature", "distill_flips",
                "lr_cycle_epochs", "perfusion_key_share", "oriented_share", "rv_weight", "train_patients", "val_patients",
                "size", "pool", "renew", "val_samples", "vessels")   # the last five: the perfusion network's runs
# what a run saved before a setting existed trained with (its checkpoint has no such key)
RUN_DEFINING_BEFORE_IT_EXISTED = {"rv_weight": 1.0}
# (--val-every and --val-heart-crop-mm only choose which checkpoint is kept best: they may change)
FLAG_OF = {"arch_params": "--params", "finetune_from": "--finetune", "distill_temperature": "distillation temperature",
           "train_patients": "training patients", "val_patients": "validation patients"}


def refuse_changed_run(out, config):
    """A CardiacInputError when ``out/last.pt`` was trained with other run-defining settings than
    ``config`` (or other data), naming each flag with the run's value. Returns the checkpoint read
    (for ``resume``, so a 13 MB last.pt is read once), None when there is none."""
    from ..errors import CardiacInputError

    path = Path(out) / LAST
    if not path.is_file():
        return None
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("config") or {}
    now = asdict(config)
    changed = []
    saved = {**{k: v for k, v in RUN_DEFINING_BEFORE_IT_EXISTED.items() if k in now}, **saved}
    for key in RUN_DEFINING:
        if key in saved and key in now and _comparable(saved[key]) != _comparable(now[key]):
            changed.append(f"{FLAG_OF.get(key, '--' + key.replace('_', '-'))} {_shown(saved[key])} (now {_shown(now[key])})")
    # the data folder is not compared: a relative path (the docs' own commands) reads another
    # folder from another working directory; refuse_changed_split compares the patients
    if changed:
        raise CardiacInputError(path, "was trained with other settings: " + "; ".join(changed) + ". --resume continues a "
                                      "run as it was started: repeat them, or start a new run from its weights (--finetune "
                                      f"{path} --out ANOTHER_FOLDER)")
    return checkpoint


def _comparable(value):
    return json.dumps(value, sort_keys=True)


def _shown(value):
    return "none" if value in ("", None) else (json.dumps(value) if isinstance(value, (dict, list)) else str(value))


def refuse_changed_split(out, train_folders, val_folders):
    """A resumed run's patients must be the ones it was trained and validated on (split.json)."""
    from ..errors import CardiacInputError

    path = Path(out) / "split.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    now = {"train": [Path(f).name for f in train_folders], "val": [Path(f).name for f in val_folders]}
    if saved != now:
        gone = sorted(set(saved.get("train", []) + saved.get("val", [])) ^ set(now["train"] + now["val"]))
        raise CardiacInputError(path, "the data no longer split into the run's training and validation patients ("
                                      + (f"patients added or gone: {', '.join(gone[:6])}" if gone else "patients moved "
                                         "between training and validation") + "); resume on the data it was started on")


def resume(out, model, opt, sched, checkpoint=None):
    """(start epoch, best score, history) from ``out/last.pt`` (``checkpoint``: it, read already);
    a fresh run when there is none."""
    if checkpoint is None and not (out / LAST).is_file():
        return 0, -1.0, []
    ck = checkpoint if checkpoint is not None else read_checkpoint(out / LAST)
    load_weights_into(model, ck["model"], out / LAST)
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    return ck["epoch"], ck["best"], ck["history"]


def end_epoch(out, model, opt, sched, config, history, entry, score, best, log):
    """Record the epoch, keep the best weights by ``score`` (None = not validated), save last.pt."""
    import torch

    if score is not None and score > best:
        best = score
        torch.save(model.state_dict(), out / BEST)
    history.append(entry)
    log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()}))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": entry["epoch"], "best": best, "history": history, "config": asdict(config)}, out / (LAST + ".tmp"))
    (out / (LAST + ".tmp")).replace(out / LAST)
    # NaN (a score with nothing to score) as null: bare NaN is no JSON to other readers
    (out / "history.json").write_text(json.dumps(_json_safe(history), indent=1))
    return best


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
