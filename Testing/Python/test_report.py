"""report.py: PNG size, bullseye colours, slice orientation, atomic writes."""
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from CardiacAISegLib import report  # noqa: E402
from CardiacAISegLib.errors import OutputExistsError  # noqa: E402
from CardiacAISegLib.labels import LV, MYO, RV  # noqa: E402
from CardiacAISegLib.study import Study, affine_from_spacing  # noqa: E402

CENTRE = np.array([10.0, -5.0, 20.0])


def sax_study(frames=3, shape=(4, 40, 50), spin=0.7):
    """Oblique short-axis stack: k runs base -> apex (to patient left, anterior, inferior);
    the RV lies towards patient Right of the LV, as in a person."""
    s, r, c = shape
    n = np.array([-0.6, 0.5, -0.6])
    n /= np.linalg.norm(n)
    a = np.cross(n, [0, 0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    di, dj = np.cos(spin) * a + np.sin(spin) * b, -np.sin(spin) * a + np.cos(spin) * b
    m = affine_from_spacing((2.0, 2.0, 8.0), directions=np.stack([di, dj, n], axis=1))
    m[:3, 3] = CENTRE - m[:3, :3] @ np.array([c / 2, r / 2, 0.0])
    k, j, i = np.meshgrid(np.arange(s), np.arange(r), np.arange(c), indexing="ij")
    rel = np.stack([i, j, k], -1) @ m[:3, :3].T + m[:3, 3] - CENTRE
    rel -= (rel @ n)[..., None] * n
    right = np.array([1.0, 0, 0]) - n[0] * n
    right /= np.linalg.norm(right)
    images, labels = [], {}
    for t in range(frames):
        squeeze = 1.0 - 0.25 * np.sin(np.pi * t / max(frames - 1, 1))
        taper = 1.0 - 0.12 * k
        lab = np.zeros(shape, np.uint8)
        lab[np.linalg.norm(rel - 26.0 * right, axis=-1) < 12 * squeeze * taper] = RV
        lab[np.linalg.norm(rel, axis=-1) < 19 * taper] = MYO
        lab[np.linalg.norm(rel, axis=-1) < 13 * squeeze * taper] = LV
        images.append(100 + 200.0 * (lab == LV) + 150.0 * (lab == RV) + 50.0 * (lab == MYO))
        labels[t] = lab
    study = Study(np.stack(images), m, frame_times_s=np.arange(frames) * 0.04, name="phantom",
                  ed_frame=0, es_frame=frames // 2)
    study.labels = labels
    return study, right, n


def test_report_png_has_expected_size(tmp_path):
    import matplotlib.image
    study, right, n = sax_study()
    up = np.array([0, 1.0, 0]) - n[1] * n
    up /= np.linalg.norm(up)
    c = study.ijk_to_ras_points([[25, 20, 2]])[0]
    points = [{"slice": 2, "anterior_ras": c + 15 * right + 10 * up, "inferior_ras": c + 15 * right - 10 * up}]
    values = {sid: 0.5 + 0.1 * sid for sid in range(1, 17)}
    curve = [float((study.labels[t] == LV).sum() * study.voxel_volume_ml) for t in range(study.n_frames)]
    path = tmp_path / "report.png"
    out = report.write_report(path, study, study.labels, [0, 1], insertion_points=points,
                              segment_values=values, volume_curve=curve)
    assert out == path and os.listdir(tmp_path) == ["report.png"]
    img = matplotlib.image.imread(str(path))
    width, height = report.report_size_px(2, True)
    assert img.shape[:2] == (height, width)
    assert img[..., :3].std() > 0.05                       # something was drawn

    # Perfusion-like: one mask for all frames, no bottom row.
    p2 = tmp_path / "one.png"
    report.write_report(p2, study, {0: study.labels[0]}, 2)
    assert matplotlib.image.imread(str(p2)).shape[:2] == report.report_size_px(1, False)[::-1]


def _pixel(fig, ax, r, theta_deg):
    t = np.radians(theta_deg)
    x, y = ax.transData.transform((r * np.cos(t), r * np.sin(t)))
    buf = np.asarray(fig.canvas.buffer_rgba())
    return buf[int(round(buf.shape[0] - y)), int(round(x)), :3] / 255.0


def test_bullseye_colours_follow_values():
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    values = {sid: 1.0 for sid in range(1, 17)}
    values[1], values[16], values[9] = 0.0, 4.0, float("nan")
    mappable = report.bullseye(ax, values, value_label="MBF", vmin=0.0, vmax=4.0, colorbar=False)
    fig.canvas.draw()
    cmap = matplotlib.colormaps["viridis"]
    seg1 = _pixel(fig, ax, 0.93, 100)        # basal anterior, off its text
    seg16 = _pixel(fig, ax, 0.27, -25)       # apical lateral
    seg9 = _pixel(fig, ax, 0.6, 200)         # mid inferoseptal: missing -> grey
    np.testing.assert_allclose(seg1, cmap(0.0)[:3], atol=0.02)
    np.testing.assert_allclose(seg16, cmap(1.0)[:3], atol=0.02)
    np.testing.assert_allclose(seg9, [0.85, 0.85, 0.85], atol=0.02)
    assert np.abs(seg1 - seg16).sum() > 0.5
    assert mappable.norm.vmin == 0.0 and mappable.norm.vmax == 4.0
    texts = {t.get_text() for t in ax.texts}
    assert {"0.00", "4.00", "n/a", "LAD", "RCA", "LCx"} <= texts


def test_bullseye_scale_fixed_per_measure_unless_fit():
    """A uniform 11 mm wall (10.7-11.2 mm) is one colour on the fixed 0-20 mm scale, not the
    whole colour map; fit=True still fits the data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = {sid: 11.0 for sid in range(1, 17)}
    values[1], values[16] = 10.7, 11.2
    label = "Wall thickness at ED (mm)"
    fixed = report.bullseye(Figure().add_subplot(111), values, value_label=label, colorbar=False)
    assert (fixed.norm.vmin, fixed.norm.vmax) == (0.0, 20.0)
    assert abs(fixed.norm(11.2) - fixed.norm(10.7)) < 0.03
    fitted = report.bullseye(Figure().add_subplot(111), values, value_label=label, colorbar=False, fit=True)
    assert (fitted.norm.vmin, fitted.norm.vmax) == (10.7, 11.2)
    assert report.bullseye_scale("MBF (mL/min/g)") == (0.0, 5.0)
    assert report.bullseye_scale("Relative upslope (myocardium/LV)") == (0.0, 0.3)
    # The one PNG renderer (Slicer Logic, web GUI) states the scale on the plot.
    fig = Figure()
    FigureCanvasAgg(fig)
    mappable = report.bullseye(fig.add_subplot(111), {s: 3.4 for s in range(1, 17)}, value_label="MBF (mL/min/g)")
    assert (mappable.norm.vmin, mappable.norm.vmax) == (0.0, 5.0)
    # values past the fixed top (stress MBF 4.9-6.9 was one colour; probe 39): the top stretches
    high = {s: 4.9 + 2.0 * (s - 1) / 15 for s in range(1, 17)}
    stretched = report.bullseye(Figure().add_subplot(111), high, value_label="MBF (mL/min/g)", colorbar=False)
    assert (stretched.norm.vmin, stretched.norm.vmax) == (0.0, 6.9)
    high[16] = 40.0   # one outlier stretches it to twice the fixed top at most (probe 40)
    capped = report.bullseye(Figure().add_subplot(111), high, value_label="MBF (mL/min/g)", colorbar=False)
    assert (capped.norm.vmin, capped.norm.vmax) == (0.0, 10.0)


def test_slices_shown_as_slicer_radiological_view():
    # Identity (i = R, j = A): Slicer puts R on the screen left and A up, so both axes flip.
    v = report.slice_view(np.eye(4), (3, 4))
    assert (v.transpose, v.flip_x, v.flip_y) == (False, True, True)
    a = np.arange(12).reshape(3, 4)
    assert v.image(a)[0, 0] == a[2, 3]
    assert v.point(3, 2) == (0, 0)
    # LPS-like (i = L, j = P): already the radiological picture.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    v = report.slice_view(lps, (3, 4))
    assert (v.transpose, v.flip_x, v.flip_y) == (False, False, False)
    # Oblique short axis: RV (patient right) on the screen left, anterior wall up.
    study, right, n = sax_study()
    v = report.slice_view(study.ijk_to_ras, study.images.shape[2:])
    shown = v.image(study.labels[0][1])
    rows, cols = np.nonzero(shown == RV)
    lrows, lcols = np.nonzero(shown == LV)
    assert cols.mean() < lcols.mean() - 5
    up = np.array([0, 1.0, 0]) - n[1] * n                      # anterior, in plane
    ant = study.ras_to_ijk_points([CENTRE + 20 * up + 1.0 * 8 * n])[0]
    x, y = v.point(ant[0], ant[1])
    assert y < lrows.mean() - 5


def test_representative_slices_name_base_and_apex():
    study, _, _ = sax_study(shape=(8, 40, 50))
    picks = report.representative_slices(study.labels[0])
    assert [p[1] for p in picks] == ["basal", "mid", "apical"]
    assert picks[0][0] < picks[2][0]                          # k runs base -> apex here
    flipped = study.labels[0][::-1]
    assert report.representative_slices(flipped)[0][0] > report.representative_slices(flipped)[2][0]


def test_report_refuses_overwrite_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    study, _, _ = sax_study(frames=1)
    path = tmp_path / "report.png"
    report.write_report(path, study, study.labels, 0)
    with pytest.raises(OutputExistsError):
        report.write_report(path, study, study.labels, 0)
    before = path.read_bytes()

    def broken_savefig(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        report.write_report(path, study, study.labels, 0, overwrite=True)
    with pytest.raises(OSError):
        report.write_report(tmp_path / "new.png", study, study.labels, 0)
    assert os.listdir(tmp_path) == ["report.png"] and path.read_bytes() == before


def _cine_analysis():
    from CardiacAISegLib.pipeline import compute_analysis

    study, _, _ = sax_study(frames=5)
    return compute_analysis(study, None, labels=study.labels)


def test_report_process_draws_the_same_picture(tmp_path):
    """The CLI's report process (forked before loading, matplotlib warmed up) draws the very
    picture the in-process renderer draws, from the slim ReportStudy (shown frames only)."""
    from CardiacAISegLib.report_process import ReportProcess, fork_available

    if not fork_available():
        pytest.skip("the report process needs os.fork (Linux); elsewhere the report is drawn in-process")
    analysis = _cine_analysis()
    arguments = report.report_arguments(tmp_path / "child.png", analysis)
    shown = arguments["frames_to_show"]
    assert set(arguments["study"].images._frames) == set(shown) and len(shown) < analysis.study.n_frames
    with ReportProcess() as process:
        assert process.draw(arguments)
        process.wait()
    report.write_report(**dict(arguments, path=tmp_path / "slim.png"))
    report.write_analysis_report(tmp_path / "main.png", analysis)
    from PIL import Image

    child = np.asarray(Image.open(tmp_path / "child.png"))
    assert child.shape[:2][::-1] == report.report_size_px(len(shown), True)
    np.testing.assert_array_equal(child, np.asarray(Image.open(tmp_path / "main.png")))
    np.testing.assert_array_equal(child, np.asarray(Image.open(tmp_path / "slim.png")))


def test_report_process_errors_and_cleanup(tmp_path, monkeypatch):
    """A report the child cannot draw raises in the caller with the child's message and leaves no
    file; an unused process is ended and reaped (no zombie, no orphan)."""
    from CardiacAISegLib.report_process import ReportProcess, fork_available

    if not fork_available():
        pytest.skip("the report process needs os.fork (Linux)")
    arguments = report.report_arguments(tmp_path / "bad.png", _cine_analysis())
    arguments["frames_to_show"] = [99]
    process = ReportProcess()
    assert process.draw(arguments)
    with pytest.raises(ValueError, match="frame 99 outside 0..4"):
        process.wait()
    assert not (tmp_path / "bad.png").exists()
    assert not process.draw(arguments)      # one job per process; the caller then draws itself

    killed = ReportProcess()
    arguments["frames_to_show"] = [0]
    assert killed.draw(arguments)
    os.kill(killed.pid, 9)
    assert killed.wait() is False            # no answer: the caller draws the report itself

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    refused = ReportProcess()                # no process to spare: nothing to hand over, drawn in-process
    assert refused.pid is None and not refused.draw(arguments)
    refused.close()
    monkeypatch.undo()

    idle = ReportProcess()
    pid = idle.pid
    idle.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)          # already reaped
    idle.close()                             # twice is harmless


def test_shown_slices_are_named_by_the_analysis_levels():
    """The report names a slice as the table does: by the analysis's AHA levels when given (the
    blood-pool rule alone could call an apex-first series' apical slice basal)."""
    from CardiacAISegLib.report import representative_slices

    lab = np.zeros((3, 20, 20), np.uint8)
    for k, r in enumerate((3, 5, 7)):   # blood pool grows with k: the area rule says k = 2 is basal
        lab[k, 10 - r:10 + r, 10 - r:10 + r] = 2
        lab[k, 11 - r:9 + r, 11 - r:9 + r] = 1
    assert representative_slices(lab) == [(2, "basal"), (1, "mid"), (0, "apical")]
    levels = {0: "basal", 1: "mid", 2: "apical"}   # the affine says otherwise: it wins
    assert representative_slices(lab, levels) == [(0, "basal"), (1, "mid"), (2, "apical")]
    assert representative_slices(lab, {0: "basal"}) == [(2, "basal"), (1, "mid"), (0, "apical")]   # incomplete: area rule


def test_volume_curve_of_one_frame_marks_no_es():
    """One 3D volume: its own ED and no ES (the tables say n/a); the curve said "ES 296 mL"."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    study = Study(np.zeros((1, 2, 4, 4), np.float32), affine_from_spacing((1.0, 1.0, 8.0)), kind="cine")
    study.ed_frame = study.es_frame = 0
    ax = Figure().subplots()
    report.draw_volume_curve(ax, study, [120.0])
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("ED 120 mL") for t in texts) and not any(t.startswith("ES") for t in texts), texts
    ax = Figure().subplots()
    report.draw_volume_curve(ax, Study(np.zeros((2, 2, 4, 4), np.float32), affine_from_spacing((1.0, 1.0, 8.0)),
                                       kind="cine", ed_frame=0, es_frame=1), [120.0, 50.0])
    assert any(t.get_text().startswith("ES 50 mL") for t in ax.texts)


def test_report_names_ed_es_rows_and_states_the_key_measures():
    """The report had images and a bullseye but no number a reader looks for first (EF, mass),
    and its rows of slices did not say which is ED and which ES; the bullseye drew wall
    thickness with 2 decimals where every table has 1."""
    from CardiacAISegLib.measures import format_value

    analysis = _cine_analysis()
    c = analysis.cine
    arguments = report.report_arguments("unused.png", analysis)
    assert arguments["frame_names"] == {c["ed_frame"]: "ED", c["es_frame"]: "ES"}
    rows = {r["key"]: r for r in analysis.table_rows()}
    first = arguments["summary"][0]
    for key, name in (("lv_edv_ml", "LV EDV"), ("lv_esv_ml", "ESV"), ("lv_ef_pct", "EF"), ("lv_mass_g", "mass")):
        assert f"{name} {format_value(rows[key])} {rows[key]['unit']}" in first, first
    assert arguments["value_format"] == "{:.1f}"
    # one frame: ED measures only, no ES row name, no ES value
    one = _cine_analysis()
    one.study.images = one.study.images[:1]
    one.labels = {0: one.labels[0]}
    one.study.ed_frame = one.study.es_frame = None
    one.run()
    assert one.cine["es_frame"] is None
    arguments = report.report_arguments("unused.png", one)
    assert arguments["frame_names"] == {0: "ED"} and arguments["frames_to_show"] == [0]
    assert "LV EDV" in arguments["summary"][0] and "ESV" not in arguments["summary"][0] and "EF" not in arguments["summary"][0]


def test_report_counts_frames_from_1_as_the_input_does(tmp_path, monkeypatch):
    """Probe 73: an ACDC patient's ED (Info.cfg frame 1) was "ED · frame 0" in the report."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    report.draw_volume_curve(ax, Study(np.zeros((3, 2, 4, 4), np.float32), affine_from_spacing((1.0, 1.0, 8.0)),
                                       kind="cine", ed_frame=0, es_frame=2), [120.0, 80.0, 50.0])
    texts = [t.get_text() for t in ax.texts]
    assert "ED 120 mL (frame 1)" in texts and "ES 50 mL (frame 3)" in texts, texts
    titles, set_title = [], Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text), set_title(ax, text, *a, **k))[1])
    analysis = _cine_analysis()
    report.write_analysis_report(tmp_path / "report.png", analysis)
    ed, es = analysis.cine["ed_frame"], analysis.cine["es_frame"]
    assert any(t.startswith(f"ED · frame {ed + 1} · ") for t in titles), titles
    assert any(t.startswith(f"ES · frame {es + 1} · ") for t in titles), titles


def test_what_mbf_rests_on_is_in_the_report_and_the_table():
    """Probe 73: MBF from the LV's own blood signal and from signal read as linear in Gd was
    called approximate in results.json's warnings only; the report said "QC: pass (1 note(s) in
    results.json)" and results.csv nothing. A stress+rest bullseye was titled "MBF"."""
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom

    study, _ = make_perfusion_phantom(seed=3, noise=0.005)
    study.units = "signal"
    with_aif = Analysis(study, study.labels).run()
    summary = report.summary_lines(with_aif)[0]
    assert "MBF assumes: signal intensity read as linear in Gd" in summary, summary
    assert "SIGNAL_UNITS" in report.qc_line(with_aif.qc)
    assert any(r.get("key") == "qc_SIGNAL_UNITS" for r in with_aif.table_rows())
    study.provenance = {**(study.provenance or {}), "aif_source": "lv_blood_pool"}
    from_lv = Analysis(study, study.labels).run()
    summary = report.summary_lines(from_lv)[0]
    assert "MBF approximate: AIF from the LV blood pool" in summary, summary
    rest, _ = make_perfusion_phantom(seed=4, noise=0.005)
    paired = Analysis(make_perfusion_phantom(seed=3, noise=0.005)[0], study.labels,
                      rest=Analysis(rest, rest.labels)).run()
    assert paired.bullseye_label == "Stress MBF (mL/min/g)"
    assert report.bullseye_scale(paired.bullseye_label) == report.bullseye_scale("MBF (mL/min/g)")
