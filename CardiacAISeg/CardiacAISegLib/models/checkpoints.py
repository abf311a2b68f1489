"""Run bookkeeping shared by the cine and perfusion training loops: set-up, resume, checkpoints."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

LAST, BEST = "last.pt", "best.pt"
# what a run leaves in its folder besides its snapshot-NNN.pt (training.snapshot_name)
RUN_FILES = (LAST, BEST, "history.json", "split.json")


def refuse_or_clear_earlier_run(out, resume, force):
    """A training run already in ``out`` is continued (``resume``), replaced whole (``force``: its
    checkpoints, snapshots and history removed first, so that none of it mixes with the new run's)
    or refused: a second `train` into the first's folder had replaced its checkpoints and left its
    snapshots beside its own, exit 0 (probe 54)."""
    from ..errors import CardiacInputError

    out = Path(out)
    if resume or not out.is_dir():
        return
    earlier = [p for p in out.iterdir() if p.name in RUN_FILES or (p.name.startswith("snapshot-") and p.suffix == ".pt")]
    if not earlier:
        return
    if not force:
        names = ", ".join(sorted(p.name for p in earlier)[:4]) + (", ..." if len(earlier) > 4 else "")
        raise CardiacInputError(out, f"already holds a training run ({names}); pass --resume to continue it, --force to "
                                     "replace it, or choose another --out")
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


def resume(out, model, opt, sched):
    """(start epoch, best score, history) from ``out/last.pt``; a fresh run when there is none."""
    import torch

    if not (out / LAST).is_file():
        return 0, -1.0, []
    ck = torch.load(out / LAST, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
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
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return best
