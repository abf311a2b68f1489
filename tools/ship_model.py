"""Ship a trained run into CardiacAISeg/Resources/Models/<name>/ with its model card.

The card's metrics and timings are copied from RUN/evaluation.json (written by
tools/evaluate_cine.py or tools/evaluate_perfusion.py), never typed by hand.
Usage: python tools/ship_model.py RUN --name unet-light --arch unet-light --title "..." [--default]
"""
import argparse
import json
from pathlib import Path

ACDC_LICENCE = ("CC BY-NC-SA 4.0: trained on ACDC (Bernard et al., IEEE TMI 2018), whose terms allow "
                "non-commercial research use only; these weights carry the same restriction")
SYNTH_LICENCE = ("CC BY-NC-SA 4.0: trained on synthetic series built on ACDC label maps and images "
                 "(Bernard et al., IEEE TMI 2018; non-commercial research use only)")


def main():
    import torch

    from CardiacAISegLib.models.architectures import build, parameter_count
    from CardiacAISegLib.models.shipping import ship_model

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--task", default="cine")
    p.add_argument("--default", action="store_true")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--tta", default="none", help="test-time mirroring the card asks for (cine)")
    p.add_argument("--version", default="1")
    p.add_argument("--note", help="a sentence for the card's training section (provenance the run cannot tell)")
    args = p.parse_args()
    run = Path(args.run)
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    cfg = ck["config"]
    state = torch.load(run / args.checkpoint, map_location="cpu", weights_only=True)
    params = cfg.get("arch_params", {})
    net = build(args.arch, **params)
    net.load_state_dict(state)
    evaluation = json.loads((run / f"evaluation{'' if args.tta == 'none' else '-' + args.tta}.json").read_text())
    history = ck["history"]
    best_epoch = max(history, key=lambda h: h.get("dice_mean", -1))["epoch"] if history else None
    if args.task == "cine":
        inp = {"pixel_mm": cfg["pixel_mm"], "channels": 1, "frames": "one frame at a time (2D per slice)",
               "normalisation": "per volume: 1st-99.5th percentile -> [0, 1], clipped",
               "field_of_view": "whole slice, resampled in-plane to pixel_mm (fully convolutional)",
               "size_multiple": net.size_multiple, "tta": args.tta}
        training = {"data": "ACDC training set (80 patients in ../shared/data/acdc; ED and ES frames with manual labels)",
                    "split": evaluation["split"], "split_rule": f"by patient, stratified by group, {cfg['val_per_group']} per group held out",
                    "epochs": cfg["epochs"], "best_epoch": best_epoch, "batch": cfg["batch"], "patch": cfg["patch"],
                    "slices_per_epoch": cfg["slices_per_epoch"] or "all",
                    "optimizer": f"Adam lr {cfg['lr']} cosine to 2%", "loss": "cross-entropy + soft Dice (LV, MYO, RV)",
                    "augmentation": "any in-plane rotation, mirror, scale 0.8-1.25, gamma 0.6-1.6, coil shading, contrast, blur, Gaussian noise"
                    + ("; strong runs also scale 0.7-1.4, coarser matrix, Gaussian blur, random tone curve, offset, Rician floor"
                       if cfg.get("augment") == "strong" or ck.get("averaged_from") else ""),
                    "seconds_per_epoch_median": sorted(h["seconds"] for h in history)[len(history) // 2] if history else None,
                    "machine": "2-core CPU (no GPU), torch 2.13"}
        if ck.get("averaged_from"):
            training["weights"] = "average of the best checkpoints of these runs (model soup, Wortsman et al. 2022)"
            training["averaged_from"] = ck["averaged_from"]
            training["optimizer"] = "Adam, cosine to 2% of each run's lr (see averaged_from)"
            training["seconds_per_epoch_median"] = "see the runs' history"
            training["epochs"] = "see averaged_from (each fine-tune continues the run it starts from)"
        licence = ACDC_LICENCE
    else:
        inp = {"pixel_mm": None, "channels": cfg["arch_params"]["in_frames"], "frames": cfg["arch_params"]["in_frames"],
               "pre_foot_frames": 3, "normalisation": "each series divided by its maximum",
               "field_of_view": "native grid (no resampling; trained on 1.4-3.6 mm pixels and tight crops)", "size_multiple": net.size_multiple,
               "postprocess": "one component per structure, then the bolus check of models/perfusion_refine.py when an AIF is given"}
        training = {"data": "synthetic first-pass series on ACDC anatomy (models/perfusion_synth.py), Gd and signal-intensity variants",
                    "split": evaluation.get("split"), "epochs": cfg["epochs"], "best_epoch": best_epoch, "pool": cfg["pool"],
                    "optimizer": f"Adam lr {cfg['lr']} cosine", "loss": "cross-entropy + soft Dice", "machine": "2-core CPU, torch 2.13"}
        licence = SYNTH_LICENCE
    if args.note:
        training["note"] = args.note
    card = {"name": args.name, "title": args.title, "version": args.version, "task": args.task, "default": args.default,
            "classes": ["background", "LV blood pool", "LV myocardium", "RV"], "input": inp,
            "architecture": {"name": args.arch, "params": params, "parameter_count": parameter_count(net)},
            "training": training, "metrics": {k: v for k, v in evaluation["summary"].items() if not k.startswith(("cpu_", "threads", "runs", "tta"))},
            "timing": {k: v for k, v in evaluation["summary"].items() if k.startswith(("cpu_", "threads", "runs"))},
            "licence": licence,
            "evaluated_with": "tools/evaluate_%s.py" % args.task}
    folder = ship_model(state, card, overwrite=args.overwrite)
    print(f"shipped {folder}")


if __name__ == "__main__":
    main()
