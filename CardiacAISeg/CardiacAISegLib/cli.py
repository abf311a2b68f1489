"""`cardiacaiseg`: analyze, phantom, models, import-model, train, gui."""
import argparse
import json
import sys
import traceback
from pathlib import Path

from .errors import CancelledError, CardiacInputError, OutputExistsError
from .outputs import Terminated, output_lock, stop_signals_raise


QC_REVIEW_EXIT = 3   # --strict: outputs written, but QC asks for review
BATCH_ERROR_EXIT = 1  # batch: every study ran, but some failed (error rows)


def _labels_argument(given):
    """--labels as ``analyze.run`` takes it: None, one value, or a list of files (given twice)."""
    from .analyze import SPECIAL_LABELS

    if not given:
        return None
    if len(given) == 1:
        return given[0]
    special = [g for g in given if g in SPECIAL_LABELS]
    if special:
        raise CardiacInputError("--labels", f"--labels {special[0]} reads the study's own labels or makes a ring: give it "
                                            "alone, not with label files")
    return list(given)


def _analyze(args):
    from .report_process import ReportProcess

    _check_device(args.device)
    # Forked first, while this process is small and holds no lock or output file: the report's
    # process imports matplotlib on the other core while this one reads and segments.
    with ReportProcess() as report_process, output_lock(args.out):   # one run per output folder
        from .analyze import run
        from .progress import tqdm_progress

        analysis, paths = run(args.input, args.out, model=args.model, labels=_labels_argument(args.labels),
                              aif=args.aif, dt=args.dt,
                              force=args.force, frames=args.frames, series=args.series,
                              label_convention=args.label_convention, rest=args.rest, rest_labels=args.rest_labels,
                              rest_aif=args.rest_aif, rest_dt=args.rest_dt, rest_series=args.rest_series, density=args.density, kind=args.kind, units=args.units,
                              device=args.device, bullseye=args.bullseye, scene=args.scene,
                              progress=None if args.quiet else tqdm_progress("analyze"),   # --quiet: no tqdm import
                              report_process=report_process)
    from .report import summary_lines

    r = analysis.results()
    # the report's lines of key measures (with a rest series: rest MBF, MPR and MPRI too)
    for line in summary_lines(analysis):
        print(line)
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for name, path in sorted(paths.items()):
        print(f"wrote {path}")
    qc = r.get("qc") or {}
    review = [f["code"] for f in qc.get("flags", []) if f["severity"] == "review"]
    print(f"QC: {qc.get('status', 'n/a')}" + (f" ({', '.join(review)})" if review else ""))
    if args.strict and qc.get("status") != "pass":
        # outputs are written (for review); the exit code tells a pipeline not to trust them
        print(f"error: QC review needed ({', '.join(review)}) and --strict was given", file=sys.stderr)
        return QC_REVIEW_EXIT
    return 0


def _out_folder(value):
    """--out: an empty value wrote the outputs into the current folder (probe 21); the rule is the
    Slicer Logic's too (``outputs.check_output_folder_named``)."""
    import argparse

    from .outputs import check_output_folder_named

    try:
        check_output_folder_named(value)
    except CardiacInputError as e:
        raise argparse.ArgumentTypeError(f"{e.problem}, e.g. --out out") from None
    return value


def _non_negative(convert, what):
    """An argparse type: ``convert`` of the text, finite and >= 0 (--noise nan wrote an image all
    NaN beside a truth.json claiming exact truth; -0.1 ended in numpy's 'scale < 0'; probe 74)."""
    import argparse
    import math

    def parse(value):
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if not math.isfinite(number) or number < 0:
            raise argparse.ArgumentTypeError(f"{value}: must be {what} >= 0")
        return number

    return parse


def _batch(args):
    from .cohort import STATUS_ERROR, STATUS_OK, load_cohort, run_cohort

    if args.workers is not None and args.workers < 1:
        raise CardiacInputError("--workers", f"{args.workers}: give at least 1 worker")
    if args.resume and args.force:
        # together, --force was silently ignored (probe 64)
        raise CardiacInputError("--resume --force", "give one: --resume keeps the complete studies and runs the rest, "
                                                    "--force runs every study again")
    defaults = {k: v for k, v in (("labels", args.labels), ("kind", args.kind), ("scene", args.scene)) if v}
    notes = []
    specs = load_cohort(args.input, defaults, exclude=[args.out], notes=notes)
    for note in notes:
        print(f"note: {note}")
    renamed = [s for s in specs if s.id != s.study]
    if renamed:
        shown = ", ".join(f"{s.id!r} -> {s.study}" for s in renamed[:3])
        print(f"note: {len(renamed)} study id{'s are' if len(renamed) > 1 else ' is'} not a folder name as written: "
              f"{shown}{', ...' if len(renamed) > 3 else ''} (cohort.csv: study = the id, folder = its output folder)")
    with output_lock(args.out):   # one batch per output folder: two at once overwrote each other's table
        run = run_cohort(specs, args.out, scheduler=args.scheduler, workers=args.workers, model=args.model,
                         frames=args.frames, resume=args.resume, force=args.force, show_progress=not args.quiet,
                         reports=args.reports, study_timeout_s=args.study_timeout)
    for r in run.rows:
        if r["status"] == STATUS_ERROR:
            print(f"warning: study {r['study']}: {r['error']}", file=sys.stderr)
    from .cohort_report import uncompared_references

    for ref, why in uncompared_references([r for r in run.rows if r["status"] != STATUS_ERROR]):
        print(f"warning: manifest column {ref} is not compared in the cohort report: {why}", file=sys.stderr)
    c = run.counts
    print(f"{len(run.rows)} stud{'y' if len(run.rows) == 1 else 'ies'}: {c['ok']} ok, {c['qc-review']} QC review, {c['error']} error "
          f"({len(run.ran)} run, {len(run.skipped)} already complete) in {run.elapsed_s:.1f} s")
    for name, path in sorted(run.paths.items()):
        print(f"wrote {path}")
    if args.strict and any(r["status"] != STATUS_OK for r in run.rows):
        bad = len(run.rows) - c['ok']
        print(f"error: {bad} {'study is' if bad == 1 else 'studies are'} not ok (QC review or error) and --strict was given",
              file=sys.stderr)
        return QC_REVIEW_EXIT
    if c["error"]:
        # the other studies' outputs and the table are complete; a script that checks only the
        # exit status must still learn that some studies have no result
        print(f"error: {c['error']} of {len(run.rows)} stud{'y' if len(run.rows) == 1 else 'ies'} failed (their rows in cohort.csv say why)", file=sys.stderr)
        return BATCH_ERROR_EXIT
    return 0


def _phantom(args):
    from .phantoms.phantom import mostly_noise_warning, write_phantom

    options = {} if args.noise is None else {"noise": args.noise}
    warning = mostly_noise_warning(args.kind, args.noise)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    paths, _, _ = write_phantom(args.kind, args.out, seed=args.seed, force=args.force, **options)
    for name, path in sorted(paths.items()):
        print(f"wrote {path}")


def _models(args):
    from .models.registry import NAME_CLASH_RULE, disagreement_at_import, scan_models, user_models_dir

    cards, skipped = scan_models()
    for folder, reason in skipped:   # on stderr, so --json output stays one JSON document
        print(f"warning: {folder}: not used: {reason}", file=sys.stderr)
    from .models.registry import runnable_problem

    problems = {c["name"]: runnable_problem(c) for c in cards}
    if args.json:
        print(json.dumps([{**{k: v for k, v in c.items() if not k.startswith("_")}, "source": c["_source"],
                           "usable": problems[c["name"]] is None, "problem": problems[c["name"]]} for c in cards],
                         indent=1))
        return
    if not cards:
        print("no models installed")
    for c in cards:
        m = c.get("metrics", {})
        # a number as a number; a card written before metrics were checked may hold text (probe 95)
        dice = " ".join(f"{k}={v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
                        for k, v in (m if isinstance(m, dict) else {}).items() if k.startswith("dice_") and k.count("_") == 1)
        print(f"{c['name']:20s} {c['task']:9s} {c['_source']:7s} {c['title']}" + (" [default]" if c.get("default") else ""))
        print(f"{'':20s} {dice}  {_timing_text(c)}  licence: {c['licence']}")
        if problems[c["name"]]:
            print(f"{'':20s} NOT USABLE: {problems[c['name']]}")
        disagreed = disagreement_at_import(c)
        if disagreed:   # said per analysis only, such a model was listed like any other (probe 80)
            print(f"{'':20s} DISAGREED AT IMPORT: {disagreed}")
    print(f"user models: {user_models_dir()} ($CARDIACAISEG_MODELS); names: {NAME_CLASH_RULE}")


def _timing_text(card):
    """'125 ms/slice CPU (4 readings, 2 threads)': a card's timing with what it counted, since
    cards timed with other readings or threads are not comparable (probe 60)."""
    from .models.inference import ORIENTED, ORIENTED4, TTA_VARIANTS

    timing = card.get("timing") if isinstance(card.get("timing"), dict) else {}
    if not isinstance(timing.get("cpu_ms_per_slice"), (int, float)) or not timing["cpu_ms_per_slice"] > 0:
        return ""   # a user card without a number here lists without one
    tta = card.get("input", {}).get("tta", "none")
    readings = {ORIENTED: 2, ORIENTED4: 4}.get(tta) or len(TTA_VARIANTS.get(tta, ((),)))
    threads = timing.get("threads") if isinstance(timing.get("threads"), int) else None
    said = [f"{readings} reading{'s' if readings != 1 else ''} per slice"] + ([f"{threads} thread{'s' if threads != 1 else ''}"]
                                                                               if threads else [])
    return f"{timing['cpu_ms_per_slice']:.0f} ms/slice CPU ({', '.join(said)})"


def _import_model(args):
    from .models.registry import import_model, import_notes

    card = import_model(args.weights, args.card, overwrite=args.force)
    print(f"imported {card['name']} ({card['task']}, {card['weights']['format']}; test run passed) into {card['_folder']}")
    check = card.get("import_check")
    if check and check.get("agrees"):
        from .models.registry import sample_agreement_text

        print(f"It agrees with the shipped default {sample_agreement_text(check)}")
    for note in import_notes(card):
        print(f"warning: {note}", file=sys.stderr)


# flags the perfusion network's training does not read (it trains on 64-px synthetic series of
# its own): given, they were ignored without a word (probe 66)
PERFUSION_TRAIN_IGNORES = ("params", "pixel_mm", "slices_per_epoch", "crop", "patch", "augment", "val_every",
                           "val_heart_crop_mm", "edge_slice_weight", "distill_from", "distill_weight", "distill_flips",
                           "lr_cycle_epochs", "perfusion_key_share", "oriented_share", "freeze_epochs", "partial_labels",
                           "rv_weight")


def _train(args):
    from .models.training import TrainConfig, train
    from .progress import tqdm_progress

    from .models.checkpoints import refuse_or_clear_earlier_run

    _check_train_numbers(args)
    refuse_or_clear_earlier_run(Path(args.out), args.resume, args.force, clear=False)   # said first; cleared last
    if not Path(args.data).is_dir():
        raise CardiacInputError(args.data, "no such folder (the data: a folder of ACDC-layout patient folders)"
                                if not Path(args.data).exists() else "not a folder of ACDC-layout patient folders")
    if args.architecture == "perfusion-resunet":
        from .models.perfusion_training import PerfusionTrainConfig, train_perfusion

        defaults = vars(build_parser().parse_args(["train", args.data, "--out", str(args.out)]))
        given = [f"--{k.replace('_', '-')}" for k in PERFUSION_TRAIN_IGNORES if getattr(args, k) != defaults[k]]
        if given:
            raise CardiacInputError(given[0], f"{', '.join(given)} not read by --architecture perfusion-resunet (it trains on "
                                              "64-pixel synthetic first-pass series built on the patients); leave "
                                              f"{'them' if len(given) > 1 else 'it'} out")
        cfg = PerfusionTrainConfig(data=args.data, out_dir=args.out, epochs=args.epochs, batch=args.batch, lr=args.lr,
                                   seed=args.seed, resume=args.resume, force=args.force, finetune_from=args.finetune or "",
                                   threads=args.threads, val_per_group=args.val_per_group)
        train_perfusion(cfg, progress=tqdm_progress("train", disable=args.quiet))
        return
    try:
        arch_params = json.loads(args.params)
    except json.JSONDecodeError as e:
        raise CardiacInputError("--params", f"not JSON ({e}); e.g. '{{\"filters\": [12, 24, 48, 96, 192]}}'")
    if not isinstance(arch_params, dict):
        raise CardiacInputError("--params", "give a JSON object of architecture parameters, e.g. '{\"timesteps\": 2}'")
    if not args.edge_slice_weight > 0:
        raise CardiacInputError("--edge-slice-weight", f"{args.edge_slice_weight} is not a sampling weight; give a number > 0 "
                                                       "(1 = every slice alike)")
    if args.lr_cycle_epochs < 0 or (args.lr_cycle_epochs and args.epochs % args.lr_cycle_epochs):
        raise CardiacInputError("--lr-cycle-epochs", f"{args.lr_cycle_epochs} must be 0 (one decay over the run) or divide "
                                                     f"--epochs {args.epochs}, so that the run ends at a cycle's end")
    if not 0 <= args.distill_weight <= 1:
        raise CardiacInputError("--distill-weight", f"{args.distill_weight} is not a share of the loss; give 0-1")
    if not 0 <= args.oriented_share <= 1:
        raise CardiacInputError("--oriented-share", f"{args.oriented_share} is not a share of the samples; give 0-1")
    if args.freeze_epochs and not args.finetune:
        raise CardiacInputError("--freeze-epochs", "freezes the encoder of the network fine-tuned from; without --finetune "
                                                   "it would freeze random weights")
    cfg = TrainConfig(data=args.data, out_dir=args.out, architecture=args.architecture, arch_params=arch_params,
                      epochs=args.epochs,
                      batch=args.batch, lr=args.lr, seed=args.seed, resume=args.resume, force=args.force,
                      finetune_from=args.finetune or "",
                      freeze_epochs=args.freeze_epochs, slices_per_epoch=args.slices_per_epoch, pixel_mm=args.pixel_mm,
                      augment=args.augment, val_every=args.val_every, val_heart_crop_mm=args.val_heart_crop_mm,
                      edge_slice_weight=args.edge_slice_weight, distill_from=args.distill_from,
                      distill_weight=args.distill_weight, distill_flips=args.distill_flips, lr_cycle_epochs=args.lr_cycle_epochs,
                      crop=args.crop, patch=args.patch, perfusion_key_share=args.perfusion_key_share,
                      oriented_share=args.oriented_share, rv_weight=args.rv_weight,
                      partial_labels=args.partial_labels, threads=args.threads, val_per_group=args.val_per_group)
    train(cfg, progress=tqdm_progress("train", disable=args.quiet))


def _check_train_numbers(args):
    """Numbers `train` cannot run with, refused before anything is read or written (--batch 0,
    --pixel-mm 0 and --crop 0 ended in ZeroDivisionError, --epochs 0 wrote an untrained best.pt
    with exit 0, --val-heart-crop-mm -160 was accepted; probe 66)."""
    import math

    checks = [("--epochs", args.epochs, args.epochs >= 1, "give 1 or more"),
              ("--batch", args.batch, args.batch >= 1, "give 1 or more"),
              ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "give a learning rate > 0, e.g. 1e-3"),
              ("--pixel-mm", args.pixel_mm, math.isfinite(args.pixel_mm) and 0.2 <= args.pixel_mm <= 5,
               "give the training grid's pixel size in mm, 0.2-5 (the shipped networks: 1.25)"),
              ("--crop", args.crop, args.crop >= 32, "give the crop's side in pixels, 32 or more"),
              ("--patch", args.patch, args.patch >= 32, "give the patch's side in pixels, 32 or more"),
              ("--slices-per-epoch", args.slices_per_epoch, args.slices_per_epoch >= 0,
               "give 0 (every training slice once) or more"),
              ("--val-every", args.val_every, args.val_every >= 0, "give 0 (after the last epoch only) or more"),
              ("--val-heart-crop-mm", args.val_heart_crop_mm,
               math.isfinite(args.val_heart_crop_mm) and args.val_heart_crop_mm >= 0, "give 0 (whole field) or a side in mm"),
              ("--val-per-group", args.val_per_group, args.val_per_group >= 0, "give 0 (no validation) or more"),
              ("--freeze-epochs", args.freeze_epochs, args.freeze_epochs >= 0, "give 0 or more"),
              ("--threads", args.threads, args.threads >= 0, "give 0 (torch's default) or more"),
              ("--rv-weight", args.rv_weight, math.isfinite(args.rv_weight) and args.rv_weight > 0,
               "give a loss weight > 0 (1 = the RV counted as the LV and myocardium)")]
    for flag, value, ok, hint in checks:
        if not ok:
            raise CardiacInputError(flag, f"{value} cannot be used; {hint}")


def _gui(args):
    from .webgui import run

    status = run(args)
    if status:
        raise SystemExit(status)


def _add_gui_arguments(parser):
    from .webgui import add_arguments  # argparse only: trame is imported when the server starts

    add_arguments(parser)


def build_parser():
    p = argparse.ArgumentParser(prog="cardiacaiseg", description="Short-axis cardiac MRI: segmentation, volumes and perfusion MBF")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="segment and measure a cine or perfusion study")
    a.add_argument("input", help="ACDC patient folder, DICOM folder (or one DICOM file, or a DICOMDIR), QPerf folder "
                                  "(params.json), .nii/.nii.gz, .seq.nrrd/.nrrd, .mhd/.mha (or a folder of per-frame files), "
                                  "Analyze .hdr")
    a.add_argument("--out", required=True, type=_out_folder, help="output folder")
    a.add_argument("--model", help="registry model name (see `cardiacaiseg models`); default: the task's default")
    a.add_argument("--labels", action="append",
                   help="label map file to measure instead of running a network; given twice, one file per frame (the "
                        "segmentation.seg.nrrd and segmentation_es.seg.nrrd a run wrote, corrected or not, each go to the "
                        "frame they record); 'study' = labels found with the input (ACDC _gt, the label map beside a "
                        "folder's one image); 'ring' = automatic myocardial ring ROI (perfusion)")
    a.add_argument("--label-convention", default="acdc", choices=["acdc", "ukbb", "internal"],
                   help="label values of --labels: acdc = 1 RV, 2 myocardium, 3 LV blood pool (default); ukbb and "
                        "internal = 1 LV blood pool, 2 myocardium, 3 RV")
    a.add_argument("--aif", help="arterial input function: a text/CSV column, an Analyze/NIfTI column, or a DICOM folder "
                                  "holding the dual-sequence AIF series (found by itself when it lies beside the series)")
    a.add_argument("--dt", type=float, help="frame interval in seconds (perfusion), when the file has none; of the stress "
                                             "series when --rest is given (the rest series has its own: --rest-dt)")
    a.add_argument("--units", choices=["gd_mmol_l", "signal"], help="perfusion image units when the file cannot tell (NIfTI, DICOM)")
    a.add_argument("--kind", choices=["cine", "perfusion"], help="override the detected series kind")
    a.add_argument("--series", help="DICOM series to use (UID, number or description) when a folder has several; "
                                         "'stress'/'rest': the series of a QPerf folder, or the DICOM series whose description names it "
                                         "(a whole exam: --series stress --rest EXAM)")
    a.add_argument("--frames", default="ed_es", choices=["ed_es", "all"], help="frames to segment (cine)")
    a.add_argument("--rest", help="rest perfusion series for MPR (with --rest-labels / --rest-aif / --rest-dt)")
    a.add_argument("--rest-labels", help="label map of the rest series, as --labels for the stress (default: the network)")
    a.add_argument("--rest-aif", help="AIF of the rest series, as --aif for the stress (default: its own dual-sequence "
                                      "AIF series, else its LV blood pool)")
    a.add_argument("--rest-dt", type=float, help="frame interval of the rest series in seconds, when its file has none")
    a.add_argument("--rest-series", help="the rest series in the --rest folder, as --series chooses the stress's (default: "
                                         "the series whose description names rest)")
    a.add_argument("--density", type=float, default=1.05, help="myocardial tissue density g/mL")
    a.add_argument("--device", help="where the networks run: cpu (default without a GPU: ONNX Runtime) or a torch device "
                                    "such as cuda or cuda:1 (default when an NVIDIA GPU is usable; runs them in torch)")
    a.add_argument("--force", action="store_true", help="replace existing outputs")
    a.add_argument("--scene", action="store_true",
                   help="also write scene.mrb (the analysis as a Slicer scene; needs slicer-core, about 1 s more)")
    a.add_argument("--bullseye", default="mbf", choices=["mbf", "relative_upslope"],
                   help="perfusion bullseye and report: MBF, or relative upslope (semi-quantitative, no calibration)")
    a.add_argument("--strict", action="store_true",
                   help=f"exit with status {QC_REVIEW_EXIT} when a plausibility (QC) check asks for review (for pipelines)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_analyze)

    b = sub.add_parser("batch", help="analyze a cohort (CSV manifest or folder of studies) on Dask; one cohort table",
                       description="Each study writes the same outputs as `analyze` into OUT/<study>/; the cohort table "
                                   "(cohort.csv, cohort.parquet) and cohort_report.png go into OUT. See docs/cohorts.md.")
    b.add_argument("input", help="CSV manifest (a path column and any of: study, kind, series, labels, label_convention, aif, "
                                 "dt, units, density, model, frames, rest, rest_series, rest_labels, rest_aif, rest_dt, "
                                 "ref_<measure>; as analyze's flags) or a folder with one study per subfolder or image file")
    b.add_argument("--out", required=True, type=_out_folder, help="output folder of the cohort")
    b.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786); default: a local cluster")
    b.add_argument("--workers", type=int, help="local cluster worker processes (default: one per core, at most one per study)")
    b.add_argument("--model", help="registry model for studies without labels (default: the task's default)")
    b.add_argument("--labels", help="labels for every study unless the manifest says otherwise ('study' = ACDC _gt, 'ring')")
    b.add_argument("--kind", choices=["cine", "perfusion"], help="series kind for every study unless the manifest says otherwise")
    b.add_argument("--frames", default="ed_es", choices=["ed_es", "all"], help="frames to segment (cine)")
    b.add_argument("--resume", action="store_true", help="keep studies whose outputs are complete, run the rest")
    b.add_argument("--force", action="store_true", help="run every study again, replacing its outputs")
    b.add_argument("--scene", action="store_true", help="also write each study's scene.mrb (as analyze --scene)")
    b.add_argument("--reports", default="flagged", choices=["flagged", "all", "none"],
                   help="which studies get a report.png: flagged = those QC asks to review (default; drawing it is "
                        "most of a study's time in a batch), all, none. The cohort table and cohort_report.png always")
    b.add_argument("--study-timeout", type=_non_negative(float, "seconds"), metavar="SECONDS",
                   help="stop a study that runs longer than this: it becomes an error row saying so, its worker process "
                        "is restarted and the other studies go on (default: no limit)")
    b.add_argument("--strict", action="store_true", help=f"exit with status {QC_REVIEW_EXIT} when any study is not ok (QC review or error)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_batch)

    ph = sub.add_parser("phantom", help="write a synthetic study with exact truth")
    ph.add_argument("--kind", choices=["cine", "perfusion"], default="cine", help="cine (default) or first-pass perfusion")
    ph.add_argument("--out", required=True, type=_out_folder, help="output folder: images, labels, truth.json")
    ph.add_argument("--seed", type=_non_negative(int, "a whole number"), default=0,
                    help="random seed of the heart's shape, values and noise")
    ph.add_argument("--noise", type=_non_negative(float, "a finite number"), help="image noise SD (cine: fraction of blood signal; perfusion: mmol/L); default: the phantom's")
    ph.add_argument("--force", action="store_true", help="replace an existing phantom in --out")
    ph.set_defaults(func=_phantom)

    m = sub.add_parser("models", help="list installed models and where each comes from (shipped/user)")
    m.add_argument("--json", action="store_true", help="print the model cards as JSON")
    m.set_defaults(func=_models)

    im = sub.add_parser("import-model", help="install a TorchScript/ONNX model with its model card into the user models folder",
                        description="Checks the card, the sha256 and a test run of the network before anything is written. "
                                    "The card's name must be a plain slug (a-z 0-9 . _ -) and not a shipped model's name.")
    im.add_argument("weights", help="TorchScript (.ts/.pt), ONNX (.onnx) or state_dict file")
    im.add_argument("card", help="model card (JSON): name, title, task, classes, input, weights, licence")
    im.add_argument("--force", action="store_true", help="replace a model imported before under the same name")
    im.set_defaults(func=_import_model)

    t = sub.add_parser("train", help="train or fine-tune a network on ACDC-layout folders (perfusion: on synthetic first-pass series built on them)")
    t.add_argument("data")
    t.add_argument("--out", required=True)
    t.add_argument("--architecture", default="unet-light", choices=["unet-light", "gammanet", "perfusion-resunet"])
    t.add_argument("--params", default="{}", help="architecture parameters as JSON, e.g. '{\"filters\": [12, 24, 48, 96, 192]}' "
                                                  "(a wider unet-light; the shipped card records them)")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--pixel-mm", type=float, default=1.25)
    t.add_argument("--slices-per-epoch", type=int, default=0)
    t.add_argument("--crop", type=int, default=192, help="crop around the heart before augmentation (pixels at --pixel-mm)")
    t.add_argument("--patch", type=int, default=144, help="training patch after augmentation (pixels)")
    t.add_argument("--augment", default="basic", choices=["basic", "strong"], help="strong: also resolution, blur, tone-curve and noise-floor shifts")
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    t.add_argument("--val-heart-crop-mm", type=float, default=0.0,
                   help="validate two-stage on a square of this side around the heart, as a card with "
                        "input.heart_crop_mm runs (rank crop-trained networks as they will run); 0 = whole field")
    t.add_argument("--edge-slice-weight", type=float, default=1.0,
                   help="draw the slices at the ends of the heart (most basal/apical labelled and the empty one "
                        "beyond) this many times as often; 1 = uniform")
    t.add_argument("--distill-from", default="", help="registry model whose soft labels the network also learns "
                                                        "(knowledge distillation, e.g. a gammanet from unet-light)")
    t.add_argument("--lr-cycle-epochs", type=int, default=0,
                   help="restart the cosine learning-rate decay every N epochs and keep the weights at each cycle's end "
                        "(snapshot-NNN.pt, to average with tools/average_runs.py); 0 = one decay over the run")
    t.add_argument("--perfusion-key-share", type=float, default=0.0,
                   help="share of each batch drawn from synthetic first-pass perfusion key images built on the training "
                        "patients (a cine network the perfusion ensemble uses; 0 = cine slices only)")
    t.add_argument("--oriented-share", type=float, default=0.0,
                   help="share of training samples turned as the shipped oriented readings see the heart (its LV -> RV "
                        "axis within 55 degrees of the columns); the rest at any angle (0 = any angle for all)")
    t.add_argument("--distill-weight", type=float, default=0.5, help="share of the distillation term in the loss (0-1)")
    t.add_argument("--rv-weight", type=float, default=1.0,
                   help="weight of the RV in the loss: its Dice term and its labelled pixels in the cross-entropy and "
                        "the distillation (1 = counted as the LV and myocardium)")
    t.add_argument("--distill-flips", action="store_true", help="the teacher reads each batch 4 ways (mirrored, turned a "
                                                                "half turn) and its probabilities are averaged")
    t.add_argument("--resume", action="store_true", help="continue the training run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="replace a training run already in --out (its checkpoints, "
                                                        "snapshots and history are removed first)")
    t.add_argument("--finetune", help="start from this registry model or checkpoint")
    t.add_argument("--freeze-epochs", type=int, default=0, help="epochs with the encoder frozen (fine-tune)")
    t.add_argument("--partial-labels", default="auto", choices=["auto", "lv_myo", "none"],
                   help="label maps with the LV blood pool and myocardium only: lv_myo = every training patient's "
                        "(their background means 'background or RV'; the RV is not taught as background); auto = per "
                        "patient from Info.cfg 'LabelSet: lv_myo' (default full); none = every map is complete")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    t.add_argument("--val-per-group", type=int, default=3,
                   help="validation patients per Info.cfg Group (0: train on every patient, no validation)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    g = sub.add_parser("gui", help="browser GUI on Slicer's views (local web app; needs the 'gui' extra)")
    _add_gui_arguments(g)
    g.set_defaults(func=_gui)

    debug_help = "on an error, show the Python traceback (for a bug report)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    for sp in sub.choices.values():  # also after the command: `cardiacaiseg analyze ... --debug`
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return p


def _check_device(device):
    """Refuse a --device this machine cannot give before anything is loaded."""
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise CardiacInputError("--device", f"{device!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CardiacInputError("--device", f"{device!r} asks for CUDA, but torch {torch.__version__} finds no usable CUDA GPU "
                                                "on this machine; use --device cpu or leave --device out")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CardiacInputError("--device", f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                                f"numbered from 0")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise CardiacInputError("--device", "'mps' asks for Apple's GPU, which this machine does not have; use --device cpu")
    elif dev.type != "cpu":
        raise CardiacInputError("--device", f"{device!r}: accepted devices are cpu, cuda, cuda:N and mps")


_READER_LIBRARIES = ("pydicom", "nibabel", "nrrd", "SimpleITK", "PIL", "zlib", "gzip")
_PATH_LOCALS = ("f", "path", "data_path", "file", "filename", "folder", "labels", "target")


def _reader_failure(exc, args):
    """(file, library) when an unexpected exception escaped from a reader, else None.

    Readers turn the failures they know into CardiacInputError; this is the safety net for the
    ones they do not, so the user still learns which file could not be read.
    """
    from pathlib import Path

    if isinstance(exc, (ImportError, NameError, SyntaxError)):  # a broken install or a bug, whatever the file
        return None
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    modules = [str(fr.f_globals.get("__name__", "")) for fr in frames]
    readers = [fr for fr, m in zip(frames, modules) if m.startswith(__package__ + ".readers")]
    if not readers:
        return None
    culprit = None
    for fr in reversed(readers):  # the innermost reader frame knows the file it was reading
        for name in _PATH_LOCALS:
            value = fr.f_locals.get(name)
            if isinstance(value, (str, Path)) and str(value) and Path(value).exists():
                culprit = value
                break
        if culprit is not None:
            break
    library = next((m.split(".")[0] for m in reversed(modules) if m.split(".")[0] in _READER_LIBRARIES), None)
    return culprit or getattr(args, "input", None) or "<input>", library


def _report(message, code, debug):
    if debug:
        traceback.print_exc()
    print(message, file=sys.stderr)
    return code


def main(argv=None):
    """Run one command; every failure ends as one ``error:`` line and an exit code.

    2: bad input or refused output folder; 1: anything else (a bug, the disk, memory);
    130: cancelled (Ctrl-C); 128+N: stopped by signal N (SIGTERM: 143). ``--debug`` adds the
    traceback. SIGTERM unwinds like Ctrl-C, so staging folders and the lock go away.
    """
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    hint = "" if debug else " (run with --debug for the traceback)"
    try:
        with stop_signals_raise():
            status = args.func(args)
    except (CardiacInputError, OutputExistsError) as e:
        return _report(f"error: {e}", 2, debug)
    except CancelledError as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except MemoryError:
        where = f" on {args.input}" if getattr(args, "input", None) else ""
        return _report(f"error: out of memory while running {args.command}{where}: this machine has too little free memory "
                       f"for it (close other programs, use a smaller input, or see "
                       f"CARDIACAISEG_MEMORY_GIB in memory_check.py){hint}", 1, debug)
    except OSError as e:  # disk full, permission denied, a writer that failed: no traceback
        failed = _reader_failure(e, args)
        if failed is not None:  # a reader that let an OSError out: name the file it was reading
            return _report(f"error: {failed[0]}: cannot be read ({e.strerror or e}){hint}", 2, debug)
        # "<file>: <reason>" like every other error, not "[Errno 20] Not a directory: '<file>'"
        if e.filename and e.strerror:
            text = f"{e.filename}: {e.strerror}"
        elif getattr(args, "out", None):   # a write with no file named (disk full): the folder it was writing
            text = f"{args.out}: {e.strerror or e} (writing the outputs)"
        else:
            text = str(e)
        return _report(f"error: {text}", 1, debug)
    except Exception as e:  # a bug or a failure nobody foresaw: one line, the traceback only on request
        failed = _reader_failure(e, args)
        if failed is not None:
            path, library = failed
            by = f" ({library} raised {type(e).__name__}: {e})" if library else f" ({type(e).__name__}: {e})"
            return _report(f"error: {path}: cannot be read{by}{hint}", 2, debug)
        return _report(f"error: {type(e).__name__}: {e}{hint}", 1, debug)
    return status or 0   # a command may ask for its own exit status (analyze --strict: 3)


if __name__ == "__main__":
    sys.exit(main())
