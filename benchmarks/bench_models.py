"""CPU time of every installed network: model load, per slice and per study (median of runs),
with ONNX Runtime (the default on a CPU) and torch eager side by side in the same process.

Next to the Xue et al. 2020 anchor (inline on the scanner: 120 ms model load + 250 ms per
slice). Targets: a cine ED+ES stack <= 1 s and a 3-slice perfusion study end to end
(segmentation + MBF map + measures) <= 1 s on 2 cores; the default cine network >= 100 GFLOP/s
effective on 2 cores (issue 14), measured on one 320x272 slice (ACDC's 1.5625 mm grid at
1.25 mm): 2.0 GFLOP for unet-light, counted from its convolutions.

The default cine network is also timed in the inference mode its card declares (two-stage:
``input.heart_crop_mm``) against the whole field, same process and runtime, per slice and per
ED+ES stack, with the effective GFLOP/s counted on the pixels the network actually ran (first
pass on the mid slices + the squares, padded as run).

    python benchmarks/bench_models.py [--runs 5] [--threads 2] [--runtimes onnxruntime,torch]
"""
import argparse
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
XUE_LOAD_MS, XUE_SLICE_MS = 120.0, 250.0


def _median_time(fn, runs):
    fn()  # warm-up (first call allocates)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_time(name, runtime):
    from CardiacAISegLib.models import registry

    registry._CACHE.clear()
    t0 = time.perf_counter()
    registry.load_model(name, runtime=runtime)
    return time.perf_counter() - t0


def conv_gflop(card, shape):
    """Multiply-adds x 2 of every convolution of the torch network on one input of ``shape``."""
    import torch

    from CardiacAISegLib.models import registry

    module = registry.load_model(card["name"], runtime="torch").module
    total = [0]

    def count(mod, inputs, output):
        total[0] += 2 * output.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        module(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return total[0] / 1e9


def bench_slice(card, runtime, runs, shape=(1, 1, 320, 272)):
    """(wall ms, CPU ms) for the network alone on one slice: CPU time (all threads) is less
    disturbed than wall time by other processes on a shared machine."""
    import numpy as np

    from CardiacAISegLib.models import registry

    module = registry.load_model(card["name"], runtime=runtime).module
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    if runtime == "onnxruntime":
        def fn():
            module.run_numpy(x)
    else:
        import torch

        xt = torch.from_numpy(x)

        def fn():
            with torch.inference_mode():
                module(xt)
    fn()
    walls, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def bench_cine(card, runs, runtime):
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import segment_cine_study
    from CardiacAISegLib.readers import load_study

    loaded = registry.load_model(card["name"], runtime=runtime)
    rows = []
    cases = [("Sunnybrook sample ED+ES", SAMPLE)]
    if (SHARED / "acdc" / "patient001").is_dir():
        cases.append(("ACDC patient001 ED+ES", SHARED / "acdc" / "patient001"))
    for label, path in cases:
        study = load_study(path)
        frames = "all" if study.n_frames <= 2 else "ed_es"
        n_slices = study.n_slices * min(study.n_frames, 2)
        s = _median_time(lambda: segment_cine_study(study, loaded, frames=frames), runs)
        rows.append((card["name"], runtime, label, n_slices, 1000 * s / n_slices, s, 1.0))
    return rows


class PixelCounter:
    """A network wrapper that counts the pixels (batch x rows x cols) of every input it runs."""

    def __init__(self, module):
        self.module, self.pixels = module, 0
        if hasattr(module, "run_numpy"):   # keep the ONNX Runtime (numpy) path of inference
            self.run_numpy = self._run_numpy

    def _run_numpy(self, x):
        self.pixels += x.shape[0] * x.shape[2] * x.shape[3]
        return self.module.run_numpy(x)

    def __call__(self, x):
        self.pixels += x.shape[0] * x.shape[2] * x.shape[3]
        return self.module(x)

    def to(self, device):
        self.module = self.module.to(device)
        return self

    def eval(self):
        return self


def bench_two_stage(card, runs, runtime, gflop_per_pixel):
    """Rows (case, mode, slices, ms/slice, s/stack, CPU s/stack, network Mpixels, effective
    GFLOP/s, square found) for the card's two-stage mode and the whole field. CPU time (all
    threads) is less disturbed than wall time by other processes on a shared machine."""
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import segment_cine_study
    from CardiacAISegLib.models.registry import LoadedModel
    from CardiacAISegLib.readers import load_study

    loaded = registry.load_model(card["name"], runtime=runtime)
    whole_card = {**card, "input": {k: v for k, v in card["input"].items() if k != "heart_crop_mm"}}
    modes = [(f"two-stage {card['input']['heart_crop_mm']:g} mm", card), ("whole field", whole_card)]
    cases = [("Sunnybrook sample ED+ES", SAMPLE)]
    if (SHARED / "acdc" / "patient001").is_dir():
        cases.append(("ACDC patient001 ED+ES", SHARED / "acdc" / "patient001"))
    rows = []
    for label, path in cases:
        study = load_study(path)
        frames = "all" if study.n_frames <= 2 else "ed_es"
        n_slices = study.n_slices * min(study.n_frames, 2)
        for mode, mode_card in modes:
            counter = PixelCounter(loaded.module)
            model = LoadedModel(mode_card, counter, loaded.runtime)
            segment_cine_study(study, model, frames=frames, device="cpu")   # counts the pixels once
            pixels = counter.pixels
            box = study.provenance.pop("cine_heart_box", None)
            walls, cpus = [], []
            for _ in range(runs):
                t0, c0 = time.perf_counter(), time.process_time()
                segment_cine_study(study, LoadedModel(mode_card, loaded.module, loaded.runtime), frames=frames, device="cpu")
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            study.provenance.pop("cine_heart_box", None)
            s, cpu = statistics.median(walls), statistics.median(cpus)
            rows.append((label, mode, n_slices, 1000 * s / n_slices, s, cpu, pixels / 1e6, gflop_per_pixel * pixels / s, box))
    return rows


def bench_perfusion(card, runs, runtime):
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.perfusion_segmentation import segment_perfusion_study
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom

    loaded = registry.load_model(card["name"], runtime=runtime)
    study, _ = make_perfusion_phantom(seed=4, noise=0.02)

    def end_to_end():
        labels = segment_perfusion_study(study, loaded)
        Analysis(study, labels).run()

    seg = _median_time(lambda: segment_perfusion_study(study, loaded), runs)
    total = _median_time(end_to_end, runs)
    return [(card["name"], runtime, "phantom 3 slices: segmentation", 3, 1000 * seg / 3, seg, None),
            (card["name"], runtime, "phantom 3 slices: end to end", 3, 1000 * total / 3, total, 1.0)]


def main(argv=None):
    import os

    import torch

    from CardiacAISegLib.models.registry import default_model, list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", help="comma-separated model names (default: all installed)")
    ap.add_argument("--runtimes", default="onnxruntime,torch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["CARDIACAISEG_THREADS"] = str(args.threads)   # ONNX Runtime's intra-op threads
    runtimes = args.runtimes.split(",")
    rows, loads, slices = [], [], []
    wanted = set(args.models.split(",")) if args.models else None
    for card in list_models():
        if wanted and card["name"] not in wanted:
            continue
        for rt in runtimes:
            if rt == "onnxruntime" and "onnx" not in card and card["weights"]["format"] != "onnx":
                continue
            loads.append((card["name"], rt, 1000 * _load_time(card["name"], rt)))
            if card["task"] == "cine":
                shape = (1, 1, 320, 272)
                gflop = conv_gflop(card, shape) if card["weights"]["format"] != "onnx" else None
                slices.append((card["name"], rt, gflop, *bench_slice(card, rt, args.runs, shape)))
            rows += bench_cine(card, args.runs, rt) if card["task"] == "cine" else bench_perfusion(card, args.runs, rt)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs, load average {load:.1f}\n")
    print(f"{'model':20s} {'runtime':12s} {'load ms':>8s}   (Xue 2020 anchor: {XUE_LOAD_MS:.0f} ms)")
    for name, rt, ms in loads:
        print(f"{name:20s} {rt:12s} {ms:8.0f}")
    print(f"\none 320x272 slice, network only ({args.threads} threads)")
    print(f"{'model':20s} {'runtime':12s} {'GFLOP':>6s} {'wall ms':>8s} {'GFLOP/s':>8s} {'CPU ms':>7s} {'GFLOP/CPU-s':>11s}")
    for name, rt, gflop, wall, cpu in slices:
        per_s = f"{gflop / wall * 1000:8.1f}" if gflop else "       -"
        per_cpu = f"{gflop / cpu * 1000:11.1f}" if gflop and cpu > 0 else "          -"
        print(f"{name:20s} {rt:12s} {gflop or 0:6.2f} {wall:8.1f} {per_s} {cpu:7.1f} {per_cpu}")
    print(f"\n{'model':20s} {'runtime':12s} {'case':38s} {'slices':>6s} {'ms/slice':>9s} {'vs Xue':>7s} {'study s':>8s} "
          f"{'target s':>8s} {'ratio':>6s} {'vs torch':>8s}")
    torch_s = {(r[0], r[2]): r[5] for r in rows if r[1] == "torch"}
    for name, rt, case, n, ms, s, target in rows:
        ratio = f"{s / target:6.2f}" if target else "     -"
        speedup = f"{torch_s[(name, case)] / s:7.2f}x" if rt != "torch" and (name, case) in torch_s else "       -"
        print(f"{name:20s} {rt:12s} {case:38s} {n:6d} {ms:9.1f} {ms / XUE_SLICE_MS:7.2f} {s:8.3f} {target or '-':>8} {ratio} {speedup}")
    default = [c for c in list_models("cine") if c["name"] == default_model("cine")]
    if default and default[0]["input"].get("heart_crop_mm") and (not wanted or default[0]["name"] in wanted):
        card = default[0]
        rt = runtimes[0]
        gflop_per_pixel = conv_gflop(card, (1, 1, 320, 272)) / (320 * 272)
        two = bench_two_stage(card, args.runs, rt, gflop_per_pixel)
        print(f"\n{card['name']} v{card.get('version')} ({rt}, {args.threads} threads): the card's two-stage mode vs the whole field, "
              "same process; GFLOP/s on the pixels the network ran")
        print(f"{'case':26s} {'mode':20s} {'slices':>6s} {'ms/slice':>9s} {'stack s':>8s} {'CPU s':>6s} {'Mpixels':>8s} "
              f"{'GFLOP/s':>8s} {'speed-up':>8s} {'CPU ratio':>9s}  square")
        whole = {r[0]: r for r in two if r[1] == "whole field"}
        for case, mode, n, ms, s, cpu, mpix, gflops, box in two:
            speedup = f"{whole[case][4] / s:7.2f}x" if mode != "whole field" else "       -"
            cpu_ratio = f"{whole[case][5] / cpu:8.2f}x" if mode != "whole field" and cpu > 0 else "        -"
            where = "" if box is None else (f"rows {box['rows']} cols {box['cols']} ({box['mm'][0]:g} x {box['mm'][1]:g} mm)"
                                            if "rows" in box else f"whole field: {box['whole_field']}")
            print(f"{case:26s} {mode:20s} {n:6d} {ms:9.1f} {s:8.3f} {cpu:6.2f} {mpix:8.2f} {gflops:8.1f} {speedup} {cpu_ratio}  {where}")


if __name__ == "__main__":
    main()
