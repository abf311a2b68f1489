"""Run bookkeeping shared by the cine and perfusion training loops: set-up, resume, checkpoints."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

LAST, BEST = "last.pt", "best.pt"


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
