"""Ship the output ensemble of a shipped cine model and another training run as one model card.

The ensemble is architecture "ensemble" (models/architectures.py): the mean of the members'
log-probabilities, one state dict, one ONNX graph, read by the card's input section as the base
model is. Its metrics are copied from an evaluation of exactly that pair (tools/evaluate_cine.py
RUN_OF_BASE --ensemble-with RUN ...), never typed; the evaluation is shipped beside the weights.
``--half-weights`` stores the weights (and the ONNX export's) as float16, half the bytes; the
evaluation must then have been run with --half-weights too, so the card's numbers are of the
rounded weights that ship.
Usage: python tools/ship_ensemble.py --base-card CardiacAISeg/Resources/Models/gammanet/model.json
           --with runs/NAME --evaluation build/eval/FILE.json --version N --title "..." [--half-weights] [--overwrite]
"""
import argparse
import copy
import json
import shutil
from pathlib import Path

TIMING_KEYS = ("cpu_", "threads", "runs", "runtime_timed")


def main():
    import torch

    from CardiacAISegLib.models.architectures import build, parameter_count
    from CardiacAISegLib.models.registry import read_card, verify_weights
    from CardiacAISegLib.models.shipping import HALF_PRECISION, export_onnx, ship_model

    p = argparse.ArgumentParser()
    p.add_argument("--base-card", required=True, help="the shipped model card whose weights are the first member")
    p.add_argument("--with", dest="other", required=True, help="the training run of the second member (its last.pt has the config)")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--evaluation", required=True, help="tools/evaluate_cine.py's evaluation of this pair (--ensemble-with)")
    p.add_argument("--version", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--name", help="the card's name (default: the base card's)")
    p.add_argument("--half-weights", action="store_true", help="store the weights as float16 (the evaluation must be --half-weights)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--dest", help="models folder to write into (default: the shipped models); a dry run elsewhere")
    args = p.parse_args()

    base_path = Path(args.base_card)
    base = read_card(base_path.parent)
    base_state = torch.load(verify_weights(base), map_location="cpu", weights_only=True)
    run = Path(args.other)
    config = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["config"]
    other_state = torch.load(run / args.checkpoint, map_location="cpu", weights_only=True)
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []

    evaluation = json.loads(Path(args.evaluation).read_text())
    summary = evaluation["summary"]
    # the evaluation must be of this pair, read as the base card reads
    if "--ensemble-with" not in evaluation.get("command", "") or Path(evaluation["command"].split("--ensemble-with")[1].split()[0]).resolve() != run.resolve():
        p.error(f"{args.evaluation} is not an evaluation of an ensemble with {run} (its command: {evaluation.get('command')})")
    if evaluation["split"]["val"] != base["training"]["split"]["val"]:
        p.error(f"{args.evaluation} was not measured on {base['name']}'s held-out patients")
    if json.loads((run / "split.json").read_text())["val"] != base["training"]["split"]["val"]:
        p.error(f"{run} held out other patients than {base['name']}: its training saw the evaluation's patients")
    precision = HALF_PRECISION if args.half_weights else "float32"
    if summary.get("weights_precision", "float32") != precision:
        p.error(f"{args.evaluation} measured {summary.get('weights_precision', 'float32')} weights, this card would ship {precision}")
    for key, card_key in (("tta", "tta"), ("heart_crop_mm", "heart_crop_mm")):
        if summary.get(key) != base["input"].get(card_key):
            p.error(f"{args.evaluation} measured {key} {summary.get(key)!r}, the base card reads {base['input'].get(card_key)!r}")

    members = [{"name": base["architecture"]["name"], "params": base["architecture"].get("params", {})},
               {"name": config["architecture"], "params": config.get("arch_params", {})}]
    net = build("ensemble", members=members)
    state = {f"members.0.{k}": v for k, v in base_state.items()}
    state.update({f"members.1.{k}": v for k, v in other_state.items()})
    net.load_state_dict(state)   # raises when a member's weights do not fit its architecture

    best = max(history, key=lambda h: h.get("dice_mean", -1)) if history else {}
    card = copy.deepcopy(base)
    for key in ("weights", "onnx", "_folder"):   # _folder: where read_card found the base, not a card field
        card.pop(key, None)
    card.update(name=args.name or base["name"], title=args.title, version=args.version)
    card["architecture"] = {"name": "ensemble", "params": {"members": members}, "parameter_count": parameter_count(net)}
    card["training"] = {
        "data": base["training"]["data"], "split": base["training"]["split"], "split_rule": base["training"].get("split_rule"),
        "machine": base["training"].get("machine"),
        "weights": "output ensemble: the mean of the members' log-probabilities (architecture 'ensemble'), each member "
                   "trained apart on the same training patients",
        "members": [
            dict(base["training"], shipped_as=f"{base['name']} v{base.get('version')}", parameter_count=base["architecture"].get("parameter_count")),
            {"run": str(run), "checkpoint": args.checkpoint, "epochs": config["epochs"], "best_epoch": best.get("epoch"),
             "own_validation_dice_mean": best.get("dice_mean"), "finetune_from": config.get("finetune_from"),
             "lr": config["lr"], "batch": config["batch"], "patch": config["patch"], "crop": config.get("crop"),
             "augment": config.get("augment"), "distill_from": config.get("distill_from"),
             "distill_weight": config.get("distill_weight"), "rv_weight": config.get("rv_weight"),
             "oriented_share": config.get("oriented_share"), "parameter_count": parameter_count(build(members[1]["name"], **members[1]["params"]))},
        ],
    }
    card["metrics"] = {k: v for k, v in summary.items() if not k.startswith(TIMING_KEYS + ("tta", "heart_crop_mm", "weights_precision"))}
    card["timing"] = {k: v for k, v in summary.items() if k.startswith(TIMING_KEYS)}
    card["evaluated_with"] = evaluation.get("command")
    folder = ship_model(net.state_dict(), card, dest_root=args.dest, overwrite=args.overwrite,
                        precision=HALF_PRECISION if args.half_weights else None)
    if Path(args.evaluation).resolve() != (folder / "evaluation.json").resolve():
        shutil.copyfile(args.evaluation, folder / "evaluation.json")
    card = export_onnx(folder)
    print(f"shipped {folder}: {card['architecture']['parameter_count']} parameters, ONNX parity "
          f"{card['onnx']['parity_max_abs_diff']:.2g} (metrics from {args.evaluation}, copied as evaluation.json)")


if __name__ == "__main__":
    main()
