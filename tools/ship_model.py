"""Ship a trained run into CardiacAISeg/Resources/Models/<name>/ with its model card.

The card's metrics and timings are copied from the evaluation (RUN/evaluation.json or
--evaluation FILE, written by tools/evaluate_cine.py or tools/evaluate_perfusion.py), never typed
by hand, and the evaluation file is shipped beside the weights. The inference mode the evaluation
measured (evaluate_cine.py --heart-crop-mm) becomes the card's input.heart_crop_mm, so the model
runs in every analysis as it was measured. A run that fine-tunes a shipped model (its config's
finetune_from) needs --base-card, that model's card as it was when the run started: its training
section is carried into this card's (training.starts_from) and its held-out split must be the run's.
Usage: python tools/ship_model.py RUN --name unet-light --arch unet-light --title "..." [--default]
           [--evaluation FILE] [--base-card CARD.json] [--version N] [--overwrite]
"""
import argparse
import json
import shutil
from pathlib import Path

ACDC_LICENCE = ("CC BY-NC-SA 4.0: trained on ACDC (Bernard et al., IEEE TMI 2018), whose terms allow "
                "non-commercial research use only; these weights carry the same restriction")
TIMING_KEYS = ("cpu_", "threads", "runs", "runtime_timed")
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
    p.add_argument("--evaluation", help="the evaluation to copy metrics from (default RUN/evaluation[-TTA].json)")
    p.add_argument("--base-card", help="model card of the shipped model the run was fine-tuned from (its finetune_from)")
    p.add_argument("--dest", help="models folder to write into (default: the shipped models); a dry run elsewhere")
    args = p.parse_args()
    run = Path(args.run)
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    cfg = ck["config"]
    state = torch.load(run / args.checkpoint, map_location="cpu", weights_only=True)
    params = cfg.get("arch_params", {})
    net = build(args.arch, **params)
    net.load_state_dict(state)
    evaluation_path = Path(args.evaluation) if args.evaluation else run / f"evaluation{'' if args.tta == 'none' else '-' + args.tta}.json"
    evaluation = json.loads(evaluation_path.read_text())
    if evaluation["summary"].get("tta", "none") != args.tta:
        p.error(f"{evaluation_path} measured tta {evaluation['summary'].get('tta')!r}, not --tta {args.tta!r}")
    if evaluation["split"]["val"] != json.loads((run / "split.json").read_text())["val"]:
        p.error(f"{evaluation_path} was not measured on {run}'s held-out patients (split.json)")
    measured = (evaluation.get("run"), evaluation.get("checkpoint"))
    if measured[0] and (Path(measured[0]).resolve() != run.resolve() or measured[1] != args.checkpoint):
        p.error(f"{evaluation_path} measured {measured[0]}/{measured[1]}, not {run}/{args.checkpoint}")
    history = ck["history"]
    best_epoch = max(history, key=lambda h: h.get("dice_mean", -1))["epoch"] if history else None
    if args.task == "cine":
        context = getattr(net, "context_slices", 0)
        inp = {"pixel_mm": cfg["pixel_mm"], "channels": 2 * context + 1, "frames": "one frame at a time (2D per slice)",
               "normalisation": "per volume: 1st-99.5th percentile -> [0, 1], clipped",
               "field_of_view": "whole slice, resampled in-plane to pixel_mm (fully convolutional)",
               "size_multiple": net.size_multiple, "tta": args.tta}
        if context:   # a 2.5D network: inference stacks each slice's neighbours (models/preprocess.py)
            inp["context_slices"] = context
        crop_mm = evaluation["summary"].get("heart_crop_mm")
        if crop_mm:
            inp["heart_crop_mm"] = crop_mm
            inp["field_of_view"] = (f"two-stage: the network finds the heart on the middle slices of the whole field, then segments "
                                    f"a square of {crop_mm:g} mm around it (larger if the heart is), resampled to pixel_mm; "
                                    "labels outside the square are background. Whole field when the heart is not found or "
                                    f"the field is within 1.15 x {crop_mm:g} mm (models/inference.py)")
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
        if cfg.get("finetune_from"):
            training.update(fine_tune_section(args, cfg, run, history, best_epoch, evaluation, p, ck.get("epoch")))
            if ck.get("averaged_from"):   # the card said "fine-tune of" for gammanet v4, a mix
                training["weights"] = ("average of the weights in averaged_from (WiSE-FT, Wortsman et al. 2022); the fine-tuned "
                                       "one's run: fine_tune; the weights the chain began with: starts_from")
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
            "training": training, "metrics": {k: v for k, v in evaluation["summary"].items() if not k.startswith(TIMING_KEYS + ("tta", "heart_crop_mm"))},
            "timing": {k: v for k, v in evaluation["summary"].items() if k.startswith(TIMING_KEYS)},
            "licence": licence,
            "evaluated_with": evaluation.get("command") or "tools/evaluate_%s.py" % args.task}
    folder = ship_model(state, card, dest_root=args.dest, overwrite=args.overwrite)
    if evaluation_path.resolve() != (folder / "evaluation.json").resolve():
        shutil.copyfile(evaluation_path, folder / "evaluation.json")
    print(f"shipped {folder} (metrics from {evaluation_path}, copied as evaluation.json)")


def check_base_weights(base, finetune_from, parser):
    """Refuse a base card that does not describe the weights the run started from, where that can
    be checked: the run started from a checkpoint file and the base card is the shipped model's
    current card (its weights are here to compare tensor by tensor)."""
    import torch

    from CardiacAISegLib.models.registry import SHIPPED_DIR, read_card

    start = Path(str(finetune_from))
    shipped = SHIPPED_DIR / base["name"]
    made_from = {entry.get("run") for entry in base["training"].get("averaged_from", [])} | {base["training"].get("fine_tune", {}).get("run")}
    if start.is_file() and start.parent.name in made_from - {None}:
        # gammanet v5: a distillation that went on from the crop fine-tune v4 was mixed from
        print(f"note: the run started from {start}, a checkpoint of {start.parent.name}, one of the runs "
              f"{base['name']} v{base.get('version')} was made from (its card's training names it)")
        return
    if not start.is_file():
        print(f"note: the run started from the model named {finetune_from!r}; {base['name']} v{base.get('version')} "
              "is taken as that model's card (not checkable: give the card it had when the run started)")
        return
    if not (shipped / "model.json").is_file() or read_card(shipped)["weights"]["sha256"] != base["weights"]["sha256"]:
        print(f"note: the run started from {start}; the base card's weights are not shipped here, so not compared")
        return
    a = torch.load(start, map_location="cpu", weights_only=True)
    b = torch.load(shipped / base["weights"]["file"], map_location="cpu", weights_only=True)
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        parser.error(f"the run started from {start}, whose weights are not {base['name']} v{base.get('version')}'s "
                     f"(sha256 {base['weights']['sha256'][:12]}…); give --base-card the card of the model the run started from")


def fine_tune_section(args, cfg, run, history, best_epoch, evaluation, parser, epochs_done=None):
    """The training entries of a run that fine-tunes a shipped model: what the fine-tune did and,
    from the base model's card, how the weights it started from were trained."""
    if not args.base_card:
        parser.error(f"{run} fine-tunes {cfg['finetune_from']!r}: give --base-card, that model's card as it was when the run "
                     "started (e.g. git show COMMIT:CardiacAISeg/Resources/Models/NAME/model.json > base.json)")
    base = json.loads(Path(args.base_card).read_text())
    check_base_weights(base, cfg["finetune_from"], parser)
    if base["training"]["split"]["val"] != evaluation["split"]["val"]:
        parser.error(f"{args.base_card}: its held-out patients differ from the run's, so the evaluation would count "
                     "patients the base model was trained on as held out")
    # a chain of fine-tunes nests: each card's starts_from holds the training of the weights it began with
    starts_from = {"name": base["name"], "version": base.get("version"), "weights_sha256": base["weights"]["sha256"],
                   "training": {k: v for k, v in base["training"].items() if k not in ("split", "split_rule", "data")}}
    seconds = sorted(h["seconds"] for h in history)
    return {"weights": f"fine-tune of {base['name']} v{base.get('version')} (training.starts_from) on crops around the heart",
            "fine_tune": {"run": run.name, "from": cfg["finetune_from"], "epochs": epochs_done or cfg["epochs"],
                          "epochs_planned": cfg["epochs"], "best_epoch": best_epoch,
                          "slices_per_epoch": cfg["slices_per_epoch"] or "all", "batch": cfg["batch"],
                          "crop_px": cfg["crop"], "patch_px": cfg["patch"], "pixel_mm": cfg["pixel_mm"],
                          "what": f"random {cfg['crop']}-px ({cfg['crop'] * cfg['pixel_mm']:g} mm) crops around the heart, "
                                  f"augmented, then {cfg['patch']}-px ({cfg['patch'] * cfg['pixel_mm']:g} mm) patches",
                          "augment": cfg.get("augment", "basic"), "freeze_epochs": cfg.get("freeze_epochs", 0),
                          "optimizer": f"Adam lr {cfg['lr']} cosine to 2%",
                          "seconds_per_epoch_median": seconds[len(seconds) // 2] if seconds else None,
                          **({"distilled_from": {"model": cfg["distill_from"], "weight": cfg.get("distill_weight"),
                                                 "temperature": cfg.get("distill_temperature"),
                                                 **({"teacher_read": "4 ways (as is, mirrored either way, turned a half turn), "
                                                                     "probabilities averaged"} if cfg.get("distill_flips") else {})}}
                             if cfg.get("distill_from") else {})},
            "starts_from": starts_from,
            "epochs": f"{epochs_done or cfg['epochs']} fine-tune epochs of {cfg['slices_per_epoch'] or 'all'} slices after the base model's training",
            "seconds_per_epoch_median": seconds[len(seconds) // 2] if seconds else None,
            "optimizer": f"fine-tune: Adam lr {cfg['lr']} cosine to 2%; base: see starts_from",
            "batch": cfg["batch"], "patch": cfg["patch"]}


if __name__ == "__main__":
    main()
