"""Fine-tuning the shipped cine network on a new domain from LV/MYO-only labels (issue 11).

One command runs the whole experiment and writes its numbers as JSON:

    nice -n 10 python tools/finetune_new_domain.py --out build/new_domain/results.json

1. The shipped default model's held-out patients (its card's validation split, 3 per ACDC group:
   never seen in training) are turned into a "new domain" by the fixed acquisition/appearance
   change of ``DOMAIN`` (coarser in-plane matrix, a dark-blood-like tone curve, surface-coil
   shading, Rician noise) and written as ACDC-layout folders under ``--work``.
2. ``--finetune-per-group`` of them per group (default 1: five patients) are the fine-tune set,
   their ED/ES maps written WITHOUT the RV (``LabelSet: lv_myo``), as a clinic contouring only the
   LV would supply them; the others are the new-domain test set (all three classes scored).
3. Networks compared on the new-domain test set and on the same test patients as acquired
   (original ACDC domain: what fine-tuning costs there): the shipped network, a fine-tune with the
   partial-label loss (``--partial-labels lv_myo``), a naive fine-tune that takes the missing RV
   for background (``--partial-labels none``); ``--variants rehearsal`` a partial-label fine-tune
   whose batches mix in full-label ACDC patients of the card's training split (one per group);
   ``--with-full`` a fine-tune on the same patients with their RV drawn (the reference a
   full-label site would get).

Evaluation as every analysis runs the card (two-stage, ``training.evaluate``); Dice per class at
ED and ES, EF and LV mass errors. CPU only; on the shared 2-core machine a run takes ~30-60 min.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# The new domain: fixed, so every run and every reader of the docs sees the same shift.
DOMAIN = {
    "matrix_factor": 1.6,       # in-plane pixels 1.6 x larger (coarser matrix), area-averaged, labels by majority
    "tone_gamma": 0.6,          # tone curve v -> (1 - mix) v + mix sin(pi v ** gamma), v = intensity / 99.5th
    "tone_mix": 0.5,            # percentile (clipped to 1): mid-grey myocardium brightened, bright blood darkened
    "shading_per_fov": 0.8,     # multiplicative coil shading exp(-0.8 y), y = -1 (first row) .. 1 (last row)
    "rician_sigma": 0.03,       # Rician noise floor, fraction of the tone-mapped maximum
    "seed": 11,                 # noise seed (per patient: seed + patient number)
}


def to_new_domain(images, labels, spacing_xyz, seed):
    """(images {t: (S,R,C)}, labels {t: (S,R,C)}, spacing_xyz) in the new domain (``DOMAIN``)."""
    import torch
    import torch.nn.functional as F

    f = DOMAIN["matrix_factor"]
    any_vol = next(iter(images.values()))
    S, R, C = any_vol.shape
    r2, c2 = max(8, int(round(R / f))), max(8, int(round(C / f)))
    spacing = (spacing_xyz[0] * C / c2, spacing_xyz[1] * R / r2, spacing_xyz[2])
    rng = np.random.default_rng(seed)
    yy = np.linspace(-1, 1, r2)[:, None] * np.ones((1, c2))
    shading = np.exp(-DOMAIN["shading_per_fov"] * yy)
    out_i, out_l = {}, {}
    for t, vol in images.items():
        x = torch.from_numpy(np.asarray(vol, np.float32))[:, None]
        small = F.interpolate(x, size=(r2, c2), mode="area")[:, 0].numpy()
        v = np.clip(small / max(float(np.percentile(small, 99.5)), 1e-6), 0, 1)
        mix = DOMAIN["tone_mix"]
        toned = ((1 - mix) * v + mix * np.sin(np.pi * v ** DOMAIN["tone_gamma"])) * shading
        n = DOMAIN["rician_sigma"] * float(toned.max())
        noisy = np.sqrt((toned + n * rng.standard_normal(toned.shape)) ** 2 + (n * rng.standard_normal(toned.shape)) ** 2)
        out_i[t] = noisy.astype(np.float32)
        if t in labels:
            onehot = F.one_hot(torch.from_numpy(labels[t].astype(np.int64)), 4).permute(0, 3, 1, 2).float()
            out_l[t] = F.interpolate(onehot, size=(r2, c2), mode="area").argmax(1).numpy().astype(np.uint8)
    return out_i, out_l, spacing


def write_domain(acdc, patients, dest, label_set, seed):
    from CardiacAISegLib.models.partial_labels import write_acdc_patient
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    folders = []
    for p in patients:
        st = load_acdc_patient(Path(acdc) / p)
        frames = (st.ed_frame, st.es_frame)
        imgs, labs, spacing = to_new_domain({t: st.images[t] for t in frames}, {t: st.labels[t] for t in frames},
                                            st.spacing, seed + int(p[-3:]))
        # frame files are numbered from 1, in the order the study had them
        folders.append(write_acdc_patient(Path(dest) / p, {t + 1: imgs[t] for t in frames}, {t + 1: labs[t] for t in frames},
                                          spacing, st.ed_frame + 1, st.es_frame + 1, st.provenance["info"].get("Group", ""),
                                          label_set))
    return folders


def evaluate_module(module, folders, card):
    from CardiacAISegLib.models.training import evaluate

    inp = card["input"]
    summary, rows = evaluate(module, folders, inp["pixel_mm"], inp.get("size_multiple", 16), inp.get("tta", "none"),
                             heart_crop_mm=inp.get("heart_crop_mm"))
    keep = ("dice_lv", "dice_myo", "dice_rv", "dice_lv_ed", "dice_myo_ed", "dice_rv_ed", "dice_lv_es", "dice_myo_es",
            "dice_rv_es", "dice_mean", "ef_abs_err_pct", "mass_abs_err_g", "rvef_abs_err_pct")
    return {k: round(float(summary[k]), 4) for k in keep}, [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "heart_box"} for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="unet-light", help="registry model to fine-tune (its card's validation split is used)")
    ap.add_argument("--acdc", default=str(SHARED / "acdc"))
    ap.add_argument("--work", default=str(ROOT / "build" / "new_domain"))
    ap.add_argument("--out", default=None, help="results JSON (default WORK/results.json)")
    ap.add_argument("--finetune-per-group", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--slices-per-epoch", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--augment", default="basic", choices=["basic", "strong"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-full", action="store_true", help="also fine-tune on the same patients with their RV drawn")
    ap.add_argument("--variants", default="partial,naive",
                    help="fine-tunes to run, comma-separated: partial (partial-label loss), naive (missing RV as "
                         "background), rehearsal (partial-label loss, the new-domain LV/MYO maps mixed with "
                         "--rehearsal-per-group full-label ACDC patients of the card's training split per group)")
    ap.add_argument("--rehearsal-per-group", type=int, default=1)
    ap.add_argument("--no-original", action="store_true", help="skip the original-domain evaluation")
    args = ap.parse_args(argv)

    import torch

    from CardiacAISegLib.models.architectures import build
    from CardiacAISegLib.models.partial_labels import FULL, LV_MYO
    from CardiacAISegLib.models.registry import get_card, load_model
    from CardiacAISegLib.models.training import TrainConfig, train
    from CardiacAISegLib.readers.acdc import read_info_cfg

    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()  # train() joins patient folders onto it: relative would nest
    out_json = Path(args.out) if args.out else work / "results.json"
    card = get_card(args.model)
    val = sorted(card["training"]["split"]["val"])
    by_group = {}
    for p in val:
        by_group.setdefault(read_info_cfg(Path(args.acdc) / p / "Info.cfg").get("Group", "?"), []).append(p)
    finetune = sorted(p for g in sorted(by_group) for p in by_group[g][:args.finetune_per_group])
    test = sorted(p for p in val if p not in finetune)
    print(f"fine-tune (LV/MYO labels only): {finetune}\nnew-domain test: {test}", flush=True)

    t0 = time.time()
    write_domain(args.acdc, test, work / "domain_test", FULL, DOMAIN["seed"])
    write_domain(args.acdc, finetune, work / "domain_lv_myo", LV_MYO, DOMAIN["seed"])
    if args.with_full:
        write_domain(args.acdc, finetune, work / "domain_full", FULL, DOMAIN["seed"])
    test_new = [work / "domain_test" / p for p in test]
    test_orig = [Path(args.acdc) / p for p in test]
    print(f"new-domain folders written in {time.time() - t0:.0f} s", flush=True)

    def score(name, module, seconds=None):
        t = time.time()
        entry = {"new_domain": evaluate_module(module, test_new, card)}
        if not args.no_original:
            entry["original_domain"] = evaluate_module(module, test_orig, card)
        entry["eval_seconds"] = round(time.time() - t, 1)
        if seconds is not None:
            entry["finetune_seconds"] = round(seconds, 1)
        s = {k: {m: v[0][m] for m in ("dice_lv", "dice_myo", "dice_rv", "ef_abs_err_pct", "mass_abs_err_g")}
             for k, v in entry.items() if isinstance(v, tuple)}
        print(name, json.dumps(s), flush=True)
        return entry

    results = {"shipped": score("shipped", load_model(args.model, runtime="torch").module)}
    # rehearsal: full-label ACDC patients the shipped network trained on, in their own domain, keep the RV taught
    train_split = sorted(card["training"]["split"]["train"])
    by_group_train = {}
    for p in train_split:
        by_group_train.setdefault(read_info_cfg(Path(args.acdc) / p / "Info.cfg").get("Group", "?"), []).append(p)
    rehearsal = [str(Path(args.acdc) / p) for g in sorted(by_group_train) for p in by_group_train[g][:args.rehearsal_per_group]]
    lv_myo = [str(work / "domain_lv_myo" / p) for p in finetune]
    known = {"partial": ("finetune_partial_loss", lv_myo, "auto"),
             "naive": ("finetune_naive_rv_as_background", lv_myo, "none"),
             "rehearsal": ("finetune_partial_loss_acdc_rehearsal", lv_myo + rehearsal, "auto")}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in known]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; accepted: {', '.join(known)}")
    runs = [known[v] for v in variants]
    if args.with_full:
        runs.append(("finetune_full_labels", [str(work / "domain_full" / p) for p in finetune], "none"))
    for name, folders, partial in runs:
        # absolute folders: TrainConfig joins them onto data unchanged
        cfg = TrainConfig(data=str(work), out_dir=str(work / "runs" / name), architecture=card["architecture"]["name"],
                          arch_params=card["architecture"].get("params", {}), pixel_mm=card["input"]["pixel_mm"],
                          crop=160, patch=128, augment=args.augment, epochs=args.epochs, batch=args.batch, lr=args.lr,
                          seed=args.seed, slices_per_epoch=args.slices_per_epoch, threads=args.threads,
                          finetune_from=args.model, train_patients=folders, val_patients=[], partial_labels=partial,
                          force=True)   # a rerun with the same --work replaces its runs
        t = time.time()
        history = train(cfg, log=lambda *_: None)
        seconds = time.time() - t
        module = build(card["architecture"]["name"], **card["architecture"].get("params", {}))
        module.load_state_dict(torch.load(Path(cfg.out_dir) / "best.pt", map_location="cpu", weights_only=True))
        module.eval()
        results[name] = score(name, module, seconds)
        results[name]["loss_first_last_epoch"] = [round(history[0]["loss"], 4), round(history[-1]["loss"], 4)]

    def table(entry):
        return {k: v[0] for k, v in entry.items() if isinstance(v, tuple)}

    doc = {
        "what": "shipped cine network fine-tuned on a new domain from LV/MYO-only ED/ES labels (tools/finetune_new_domain.py)",
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).relative_to(ROOT)
                                                                     if Path(sys.argv[0]).is_absolute() else sys.argv[0])] + sys.argv[1:]),
        "model": {"name": card["name"], "version": card.get("version"), "weights_sha256": card["weights"]["sha256"]},
        "domain": DOMAIN,
        "finetune_patients": finetune,
        "rehearsal_patients": [Path(p).name for p in rehearsal] if "rehearsal" in variants else [],
        "test_patients": test,
        "finetune": {"epochs": args.epochs, "slices_per_epoch": args.slices_per_epoch, "batch": args.batch, "lr": args.lr,
                     "augment": args.augment, "crop_px": 160, "patch_px": 128, "frames": "ED and ES", "threads": args.threads,
                     "freeze_epochs": 0},
        "summary": {name: table(entry) for name, entry in results.items()},
        "seconds": {name: {k: v for k, v in entry.items() if k.endswith("seconds")} for name, entry in results.items()},
        "per_patient": {name: {k: v[1] for k, v in entry.items() if isinstance(v, tuple)} for name, entry in results.items()},
        "machine": "shared 2-core CPU (other jobs running), torch " + torch.__version__,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
