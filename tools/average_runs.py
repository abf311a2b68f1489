"""Average the weights of runs of one architecture and split (a "model soup", Wortsman et al. 2022).

Used for unet-light v2: the ACDC run and its fine-tune with strong appearance augmentation lie in
one basin, so their average keeps the first's accuracy and the second's exposure to other looks
at no inference cost. Used for gammanet v4 as robust fine-tuning (WiSE-FT, Wortsman et al. 2022):
the shipped weights mixed with their fine-tune's, which keeps most of the fine-tune's gain on
ACDC and the shipped model's result on the other centre. Writes OUT/best.pt, OUT/last.pt
(config + provenance for ship_model.py; the config is the last run's) and OUT/split.json.

A source is a run folder (best.pt, last.pt, split.json), one checkpoint file of a run folder
(``RUN/snapshot-040.pt``: the cycle ends of ``train --lr-cycle-epochs``, averaged as in SWA), or
``model:NAME``, a shipped model's weights with the split of its card. ``--weights`` mixes them (default: equal).
Usage: python tools/average_runs.py RUN_A RUN_B [...] --out RUN [--weights 0.3,0.7]
"""
import argparse
import json
from pathlib import Path


def _source(name):
    """(weights, split, last checkpoint or None, provenance) of a run folder or ``model:NAME``."""
    import torch

    if name.startswith("model:"):
        from CardiacAISegLib.models.registry import get_card, verify_weights

        card = get_card(name[len("model:"):])
        weights = torch.load(verify_weights(card), map_location="cpu", weights_only=True)
        provenance = {"model": card["name"], "version": card.get("version"), "weights_sha256": card["weights"]["sha256"]}
        return weights, card["training"]["split"], None, provenance
    run, weights_file = Path(name), "best.pt"
    if run.suffix == ".pt":   # one checkpoint of a run, e.g. RUN/snapshot-040.pt of a --lr-cycle-epochs run
        run, weights_file = run.parent, run.name
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    cfg = last["config"]
    provenance = {"run": run.name, "weights": weights_file, "epochs": cfg["epochs"], "lr": cfg["lr"], "augment": cfg.get("augment", "basic"),
                  "start": cfg.get("finetune_from") or "random",
                  "best_epoch": max(last["history"], key=lambda h: h.get("dice_mean", -1))["epoch"] if last["history"] else None}
    return (torch.load(run / weights_file, map_location="cpu", weights_only=True),
            json.loads((run / "split.json").read_text()), last, provenance)


def main():
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="run folders or model:NAME")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="comma-separated mixing weights, one per source (default: equal)")
    args = p.parse_args()
    sources = [_source(r) for r in args.runs]
    mix = [float(w) for w in args.weights.split(",")] if args.weights else [1.0 / len(sources)] * len(sources)
    if len(mix) != len(sources) or abs(sum(mix) - 1.0) > 1e-9 or min(mix) < 0:
        raise SystemExit(f"--weights: give {len(sources)} non-negative numbers that add up to 1, got {args.weights}")
    splits = [s[1] for s in sources]
    if any(s["val"] != splits[0]["val"] for s in splits):
        raise SystemExit("sources have different validation patients; averaging them would leak validation data")
    states = [s[0] for s in sources]
    if any(s.keys() != states[0].keys() for s in states):
        raise SystemExit("sources are not the same network (different weight names)")
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = sum(w * s[k] for w, s in zip(mix, states))
        else:  # BatchNorm step counters
            avg[k] = max(s[k] for s in states)
    lasts = [s[2] for s in sources if s[2] is not None]
    if not lasts:
        raise SystemExit("give at least one run folder: its config (architecture, pixel size, fine-tune source) goes with the result")
    provenance = [dict(s[3], weight=w) for s, w in zip(sources, mix)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(avg, out / "best.pt")
    torch.save({"config": lasts[-1]["config"], "history": [], "averaged_from": provenance}, out / "last.pt")
    (out / "split.json").write_text(json.dumps(splits[-1], indent=1))
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
