"""Regenerate the pictures the extension ships: module icon, SampleData thumbnails, user-guide images.

    python docs/make_figures.py            # needs the package installed (pip install -e .)
    python docs/make_figures.py qperf      # perfusion masks on the QPerf examples (needs ../shared/data)

The user-guide reports are rendered by the engine itself: ``cardiacaiseg phantom`` then
``cardiacaiseg analyze --labels`` (the same commands the guide shows), then shrunk so the
repository stays small. The insertion-point picture is made through ``CardiacAISegLogic``, the
calls the Slicer module makes.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ICONS = ROOT / "CardiacAISeg" / "Resources" / "Icons"
IMAGES = ROOT / "docs" / "images"
GUIDE_WIDTH_PX = 640


def _figure(w_px, h_px, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w_px / dpi, h_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def icon(path):
    """128x128: a short-axis slice (LV pool, myocardial ring, RV crescent, insertion points)."""
    from matplotlib.patches import Circle, Wedge
    from matplotlib.colors import to_rgba

    from CardiacAISegLib.labels import SEGMENTS
    fig = _figure(128, 128)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.add_patch(Circle((0, 0), 0.98, color="#1d2733"))
    rv = to_rgba(SEGMENTS["RV"][1])
    ax.add_patch(Wedge((0.12, 0.0), 0.86, 120, 240, width=0.2, color=rv))
    ax.add_patch(Circle((0.12, 0.0), 0.62, color=SEGMENTS["LV myocardium"][1]))
    ax.add_patch(Circle((0.12, 0.0), 0.38, color=SEGMENTS["LV blood pool"][1]))
    for angle in (120, 240):
        t = np.radians(angle)
        ax.add_patch(Circle((0.12 + 0.62 * np.cos(t), 0.62 * np.sin(t)), 0.09, facecolor="#ffd400", edgecolor="black", lw=1))
    fig.savefig(path, dpi=100, transparent=True)


def thumbnail(study, path, frame=0):
    """SampleData button picture: the mid slice with its contours, cropped around the heart."""
    from CardiacAISegLib.report import slice_view
    lab = study.labels.get(frame, study.labels[min(study.labels)])
    k = int(np.argmax((lab > 0).sum(axis=(1, 2))))
    view = slice_view(study.ijk_to_ras, study.images.shape[2:])
    image, mask = view.image(study.images[frame, k]), view.image(lab[k])
    rows, cols = np.nonzero(mask)
    half = int(max(np.ptp(rows), np.ptp(cols)) * 0.9) + 8
    r0, c0 = int(rows.mean()) - half, int(cols.mean()) - half
    fig = _figure(200, 200)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image, cmap="gray", aspect=view.aspect, vmax=np.percentile(image, 99.5))
    for value, colour in {2: "#c7a469", 3: "#5b8fd9", 1: "#d94a45"}.items():
        if (mask == value).any():
            ax.contour((mask == value).astype(float), levels=[0.5], colors=[colour], linewidths=1.5)
    ax.set_xlim(c0, c0 + 2 * half)
    ax.set_ylim(r0 + 2 * half, r0)
    ax.axis("off")
    fig.savefig(path, dpi=100)


def shrink(src, dst, width=GUIDE_WIDTH_PX):
    from PIL import Image
    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(dst, optimize=True)


def cli(*args):
    subprocess.run([sys.executable, "-m", "CardiacAISegLib.cli", *map(str, args)], check=True)


def guide_reports(work):
    cli("phantom", "--kind", "cine", "--out", work / "cine")
    cli("analyze", work / "cine" / "cine.nii.gz", "--labels", work / "cine" / "cine_labels.nii.gz",
        "--out", work / "cine-out", "--quiet")
    shrink(work / "cine-out" / "report.png", IMAGES / "report-cine.png")
    cli("phantom", "--kind", "perfusion", "--out", work / "perf")
    cli("analyze", work / "perf" / "perfusion.nii.gz", "--kind", "perfusion", "--labels", work / "perf" / "perfusion_labels.nii.gz",
        "--aif", work / "perf" / "aif.csv", "--dt", "0.5", "--out", work / "perf-out", "--quiet")
    shrink(work / "perf-out" / "report.png", IMAGES / "report-perfusion.png")


def insertion_move(work):
    """Bullseye before and after dragging one mid-ventricular anterior insertion point by 25 deg."""
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.report import bullseye
    logic = CardiacAISegLogic(sc.new_scene())
    logic.loadSamplePhantom("cine", work / "cine")
    a = logic.runSegmentation(useExistingLabels=True)
    before = dict(a.segment_values)
    markups = logic.getNodeParameter("markupsID")
    k = [s for s, level in sorted(a.levels.items()) if level == "mid"][1]
    n = [markups.GetNthControlPointLabel(i) for i in range(markups.GetNumberOfControlPoints())].index(f"S{k} anterior")
    p = np.zeros(3)
    markups.GetNthControlPointPosition(n, p)
    centre = np.array([q["centre_ras"] for q in a.insertion if q["slice"] == k][0])
    normal, r, ang = a.study.slice_normal, p - centre, np.radians(25)
    markups.SetNthControlPointPosition(n, *(centre + r * np.cos(ang) + np.cross(normal, r) * np.sin(ang)))
    logic.onInsertionPointMoved(markups, n)
    after = dict(a.segment_values)
    fig = _figure(760, 330)
    vmin = min(v for v in list(before.values()) + list(after.values()) if np.isfinite(v))
    vmax = max(v for v in list(before.values()) + list(after.values()) if np.isfinite(v))
    for i, (values, title) in enumerate(((before, "before"), (after, f"after moving slice {k}'s anterior point 25°"))):
        ax = fig.add_axes([0.02 + 0.5 * i, 0.02, 0.42, 0.88])
        bullseye(ax, values, value_label="mm", vmin=vmin, vmax=vmax, colorbar=i == 1, title=title)
    fig.savefig(work / "move.png", dpi=100)
    shrink(work / "move.png", IMAGES / "insertion-move.png")
    return logic.lastUpdateTimeS


def qperf_masks(path, shared=ROOT.parent / "shared" / "data" / "qperf"):
    """The shipped perfusion network on the real QPerf examples, before and after the bolus check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from CardiacAISegLib.models.perfusion_segmentation import segment_perfusion_study
    from CardiacAISegLib.models.registry import load_model
    from CardiacAISegLib.readers import load_study

    model = load_model("perfusion-resunet")
    fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.4))
    for row, series in enumerate(("rest", "stress")):
        study = load_study(shared, series=series)
        frame = int(np.argmax(study.aif)) + 6
        for col, refine in enumerate((False, True)):
            labels = segment_perfusion_study(study, model, refine=refine)[0][0]
            ax = axes[row, col]
            ax.imshow(study.images[frame, 0], cmap="gray", interpolation="nearest")
            for value, colour in ((1, "red"), (2, "lime"), (3, "gold")):
                if (labels == value).any():
                    ax.contour(labels == value, [0.5], colors=colour, linewidths=1)
            ax.set_title(f"{series}, {'after the bolus check' if refine else 'network alone'}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    if sys.argv[1:] == ["qperf"]:  # needs ../shared/data (not shipped)
        qperf_masks(IMAGES / "qperf-masks.png")
        return
    from CardiacAISegLib.phantoms.phantom import make_cine_phantom, make_perfusion_phantom
    ICONS.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    icon(ICONS / "CardiacAISeg.png")
    thumbnail(make_cine_phantom(seed=0)[0], ICONS / "CardiacAISegPhantomCine.png")
    perfusion = make_perfusion_phantom(seed=0)[0]
    thumbnail(perfusion, ICONS / "CardiacAISegPhantomPerfusion.png", frame=int(np.argmax(perfusion.aif)) + 10)
    from CardiacAISegLib.readers import load_study
    sunnybrook = ROOT / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es"
    study = load_study(sunnybrook / "dicom", labels=sunnybrook / "contours")
    thumbnail(study, ICONS / "CardiacAISegSunnybrook.png", frame=study.ed_frame)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        guide_reports(work)
        seconds = insertion_move(work)
    print(f"wrote icons in {ICONS} and guide images in {IMAGES} (insertion move {1000 * seconds:.1f} ms)")


if __name__ == "__main__":
    main()
