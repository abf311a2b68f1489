"""Average the weights of runs of one architecture and split (a "model soup", Wortsman et al. 2022).

Used for unet-light v2: the ACDC run and its fine-tune with strong appearance augmentation lie in
one basin, so their average keeps the first's accuracy and the second's exposure to other looks
at no inference cost. Writes OUT/best.pt, OUT/last.pt (config + provenance for ship_model.py)
and OUT/split.json. Usage: python tools/average_runs.py RUN_A RUN_B [...] --out RUN
"""
import argparse
import json
import shutil
from pathlib import Path


def main():
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = [Path(r) for r in args.runs]
    splits = [json.loads((r / "split.json").read_text()) for r in runs]
    if any(s != splits[0] for s in splits):
        raise SystemExit("runs have different train/validation splits; averaging them would leak validation data")
    states = [torch.load(r / "best.pt", map_location="cpu", weights_only=True) for r in runs]
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = sum(s[k] for s in states) / len(states)
        else:  # BatchNorm step counters
            avg[k] = max(s[k] for s in states)
    lasts = [torch.load(r / "last.pt", map_location="cpu", weights_only=False) for r in runs]
    provenance = [{"run": r.name, "epochs": ck["config"]["epochs"], "lr": ck["config"]["lr"],
                   "augment": ck["config"].get("augment", "basic"), "start": ck["config"].get("finetune_from") or "random",
                   "best_epoch": max(ck["history"], key=lambda h: h.get("dice_mean", -1))["epoch"]} for r, ck in zip(runs, lasts)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(avg, out / "best.pt")
    torch.save({"config": lasts[-1]["config"], "history": [], "averaged_from": provenance}, out / "last.pt")
    shutil.copy(runs[0] / "split.json", out / "split.json")
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
