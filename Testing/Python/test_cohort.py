"""`cardiacaiseg batch` on real Dask: a LocalCluster, and a `dask scheduler` + `dask worker`
started here on 127.0.0.1; a corrupt study becomes an error row, a killed worker loses no
finished row and `--resume` runs only the missing studies.

Studies: cine phantoms with their true label maps, ACDC patients with their _gt labels (skipped
when ../shared/data is absent), and a truncated NIfTI. No network runs (labels are given), so
the file stays within a couple of minutes on two shared cores.
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.outputs import OUTPUT_FILES
from CardiacAISegLib.cohort import ROW_FILE, ModelPreload, load_cohort, measures_of, models_needed, read_manifest
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.phantoms.phantom import write_phantom

MYOCARDIAL_DENSITY = 1.05
ACDC = ("patient001", "patient002")


def _flat_leaves(section):
    """{key: value} of the cine measures of a results.json section (the measures table's keys)."""
    from CardiacAISegLib.measures import CINE_KEYS

    return {k: section[k] for k in CINE_KEYS if k in section}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_manifest(path, rows):
    columns = ["study", "path", "labels", "ref_lv_mass_g", "ref_lv_edv_ml", "site"]
    for r in rows:   # other columns, in the order they are met
        columns += [c for c in r if c not in columns]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Phantoms (truth), ACDC patients (reference masses from their own _gt), a truncated NIfTI, and a manifest."""
    root = tmp_path_factory.mktemp("cohort")
    truths = {}
    rows = []
    for name, seed in (("phantom_a", 1), ("phantom_b", 2)):
        _, _, truth = write_phantom("cine", root / name, seed=seed)
        truths[name] = truth
        rows.append({"study": name, "path": f"{name}/cine.nii.gz", "labels": f"{name}/cine_labels.nii.gz",
                     "ref_lv_mass_g": f"{MYOCARDIAL_DENSITY * truth['voxel_myo_ml'][truth['ed_frame']] + 3:.3f}",
                     "ref_lv_edv_ml": f"{truth['voxel_lv_ml'][truth['ed_frame']] - 2:.3f}", "site": "synthetic"})
    # a study QC sends to review: phantom_a with its myocardium erased from the label maps
    # (MYO_MISSING_MID_ED/ES, LV mass out of range); with the default --reports flagged it is the
    # one phantom that gets a report.png
    import nibabel as nib

    labels = nib.load(str(root / "phantom_a" / "cine_labels.nii.gz"))
    no_myo = np.asarray(labels.dataobj).copy()
    no_myo[no_myo == 2] = 0   # ACDC convention: 2 = myocardium
    nib.save(nib.Nifti1Image(no_myo, labels.affine, labels.header), str(root / "phantom_a" / "labels_no_myo.nii.gz"))
    rows.append({"study": "phantom_review", "path": "phantom_a/cine.nii.gz", "labels": "phantom_a/labels_no_myo.nii.gz",
                 "ref_lv_edv_ml": rows[0]["ref_lv_edv_ml"], "site": "synthetic"})   # a third EDV pair, flagged
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "acdc"
    acdc = [p for p in ACDC if (shared / p).is_dir()]
    for p in acdc:
        rows.append({"study": p, "path": str(shared / p), "labels": "study", "site": "acdc"})
    data = (root / "phantom_a" / "cine.nii.gz").read_bytes()
    (root / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])   # an interrupted copy
    rows.append({"study": "corrupt", "path": "corrupt.nii.gz", "labels": "phantom_a/cine_labels.nii.gz", "site": "broken"})
    _write_manifest(root / "cohort.csv", rows)
    return {"root": root, "manifest": root / "cohort.csv", "truths": truths, "acdc": acdc, "rows": rows, "shared": shared}


@pytest.fixture(scope="module")
def local_run(cohort):
    """`cardiacaiseg batch` on a LocalCluster with one worker process, run once for the tests below."""
    out = cohort["root"] / "out_local"
    t0 = time.time()
    status = cli.main(["batch", str(cohort["manifest"]), "--out", str(out), "--workers", "1", "--quiet"])
    return {"status": status, "out": out, "seconds": time.time() - t0,
            "table": {r["study"]: r for r in _read_csv(out / "cohort.csv")}}


def test_manifest_resolves_paths_and_reference_columns(cohort):
    specs = read_manifest(cohort["manifest"])
    assert [s.study for s in specs] == [r["study"] for r in cohort["rows"]]
    a = specs[0]
    assert a.input == str(cohort["root"].resolve() / "phantom_a" / "cine.nii.gz")
    assert a.options["labels"] == str(cohort["root"].resolve() / "phantom_a" / "cine_labels.nii.gz")
    assert a.extra["ref_lv_mass_g"] == pytest.approx(float(cohort["rows"][0]["ref_lv_mass_g"]))
    assert a.extra["site"] == "synthetic"
    if cohort["acdc"]:
        assert next(s for s in specs if s.study == cohort["acdc"][0]).options["labels"] == "study"   # the keyword is not a path


def test_folder_of_studies(tmp_path):
    """One study per subfolder or image file; other files, hidden entries and the output folder are not studies."""
    (tmp_path / "patient_a").mkdir()
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "c.seq.nrrd").write_bytes(b"")
    (tmp_path / "d.nhdr").write_text("NRRD0004\n")   # a detached header is the study, its data file is not
    (tmp_path / "d.raw").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "out").mkdir()
    specs = load_cohort(tmp_path, {"labels": "study"}, exclude=[tmp_path / "out"])
    assert [(s.study, Path(s.input).name) for s in specs] == [("b", "b.nii.gz"), ("c", "c.seq.nrrd"), ("d", "d.nhdr"),
                                                             ("patient_a", "patient_a")]
    assert all(s.options == {"labels": "study"} for s in specs)
    (tmp_path / "b").mkdir()   # b/ and b.nii.gz would share the output folder b/
    with pytest.raises(CardiacInputError, match="same folder 'b'"):
        load_cohort(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CardiacInputError, match="holds no studies"):
        load_cohort(empty)


def test_manifest_errors_name_the_file_and_problem(tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("study,file\nx,a.nii.gz\n")
    assert cli.main(["batch", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {bad}: manifest has no 'path' column (columns: study, file)" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "none.csv: not found" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    good = tmp_path / "good.csv"
    good.write_text("path\na.nii.gz\n")
    (tmp_path / "a.nii.gz").write_bytes(b"x")   # a manifest whose paths all miss is refused first
    assert cli.main(["batch", str(good), "--out", str(tmp_path / "a_file")]) == 2
    assert "a_file: output path exists and is not a folder" in capsys.readouterr().err   # the lock, as for analyze
    assert cli.main(["batch", str(good), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers: 0: give at least 1 worker" in capsys.readouterr().err
    bad.write_text("study,path\nx,a.nii.gz\nx,b.nii.gz\n")
    with pytest.raises(CardiacInputError, match="same folder 'x'"):
        read_manifest(bad)
    bad.write_text("study,path\nP001,a.nii.gz\np001,b.nii.gz\n")   # one folder on macOS, Windows, most shares
    with pytest.raises(CardiacInputError, match="same folder 'p001' \\(and 'P001': one folder where case does not count\\)"):
        read_manifest(bad)
    for reserved in ("cohort.csv", "Cohort_Report.png"):   # the cohort's own files in the output folder
        bad.write_text(f"study,path\nok,a.nii.gz\n{reserved},b.nii.gz\n")
        assert cli.main(["batch", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert f"study '{reserved}'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    bad.write_text("path,dt\na.nii.gz,fast\n")
    with pytest.raises(CardiacInputError, match=r"m.csv line 2: column 'dt': 'fast' is not a number"):
        read_manifest(bad)
    bad.write_text("path,dt\na.nii.gz,nan\n")    # parsed as a float, it became one error row later
    with pytest.raises(CardiacInputError, match=r"m.csv line 2: column 'dt': 'nan' is not a finite number"):
        read_manifest(bad)
    # a decimal comma unquoted: one cell more than the header (an AttributeError ended the batch)
    bad.write_text("path,density\na.nii.gz,1.05\nb.nii.gz,1,10\n")
    assert cli.main(["batch", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "m.csv line 3: 3 cells, the header has 2" in capsys.readouterr().err
    # 'ring' and 'study' are label choices for the rest series too, not file names
    bad.write_text("path,kind,rest,rest_labels\na.nii.gz,perfusion,r.nii.gz,ring\n")
    assert read_manifest(bad)[0].options["rest_labels"] == "ring"
    assert not (tmp_path / "o").exists()   # refused before any cluster or folder


def test_local_cluster_isolates_the_corrupt_study(cohort, local_run, capsys):
    assert local_run["status"] == 1   # error rows are recorded, and the exit status says some studies failed
    table, out = local_run["table"], local_run["out"]
    assert list(table) == [r["study"] for r in cohort["rows"]]   # manifest order
    bad = table["corrupt"]
    assert bad["status"] == "error"
    assert "corrupt.nii.gz" in bad["error"] and "truncated" in bad["error"]
    assert bad["lv_edv_ml"] == ""
    assert not (out / "corrupt" / "results.json").exists()
    row = json.loads((out / "corrupt" / ROW_FILE).read_text())
    assert row["status"] == "error" and "Traceback" in row["traceback"]
    assert table["phantom_review"]["status"] == "qc-review"
    assert "MYO_MISSING_MID_ED" in table["phantom_review"]["qc_codes"].split(";")
    for name in ["phantom_a", "phantom_b", "phantom_review"] + cohort["acdc"]:
        results = json.loads((out / name / "results.json").read_text())
        expect = "ok" if results["qc"]["status"] == "pass" else "qc-review"
        assert table[name]["status"] == expect
        # --reports flagged (the default): a report.png for the studies QC sends to review only
        expect_files = OUTPUT_FILES if expect == "qc-review" else tuple(p for p in OUTPUT_FILES if p != "report.png")
        assert sorted(p for p in OUTPUT_FILES if (out / name / p).is_file()) == sorted(expect_files), name
        assert ("writing_report" in results["timing_s"]) == (expect == "qc-review"), name
        assert table[name]["qc_codes"] == ";".join(f["code"] for f in results["qc"]["flags"])
        assert table[name]["segmentation"].startswith("labels: ") and table[name]["model_sha256"] == ""
        assert float(table[name]["time_total_s"]) > 0 and table[name]["worker"].startswith("tcp://127.0.0.1:")
        assert 0 < float(table[name]["time_cpu_s"]) < 60, name
    for name, truth in cohort["truths"].items():
        ed = truth["ed_frame"]
        assert table[name]["status"] == "ok"
        assert float(table[name]["lv_edv_ml"]) == pytest.approx(truth["voxel_lv_ml"][ed], rel=1e-5)
        assert float(table[name]["lv_mass_g"]) == pytest.approx(MYOCARDIAL_DENSITY * truth["voxel_myo_ml"][ed], rel=1e-5)
        assert table[name]["site"] == "synthetic"


def test_reports_option_decides_which_studies_get_report_png(cohort, tmp_path):
    """--reports none|flagged|all on a study QC sends to review (the ok studies: local_run above);
    a bad value is refused before any folder or cluster."""
    from CardiacAISegLib import analyze
    from CardiacAISegLib.cohort import StudySpec, run_cohort

    image, no_myo = cohort["root"] / "phantom_a" / "cine.nii.gz", cohort["root"] / "phantom_a" / "labels_no_myo.nii.gz"
    for reports, expect in (("none", False), ("flagged", True), ("all", True)):
        analysis, _ = analyze.run(str(image), tmp_path / reports, labels=str(no_myo), reports=reports)
        assert analysis.qc["status"] == "review"
        assert (tmp_path / reports / "report.png").is_file() == expect, reports
        assert (tmp_path / reports / "results.json").is_file()
    # a run without a report into a folder that has one: the old report.png goes with the old results
    analyze.run(str(image), tmp_path / "all", labels=str(no_myo), reports="none", force=True)
    assert not (tmp_path / "all" / "report.png").exists()
    with pytest.raises(CardiacInputError, match=r"--reports: 'some': accepted are all, flagged, none"):
        run_cohort([StudySpec("a", str(image))], tmp_path / "x", reports="some")
    assert not (tmp_path / "x").exists()


def test_parquet_matches_results_json_exactly(cohort, local_run):
    import pyarrow.parquet as pq

    t = pq.read_table(local_run["out"] / "cohort.parquet").to_pylist()
    assert [r["study"] for r in t] == list(local_run["table"])
    by = {r["study"]: r for r in t}
    assert by["corrupt"]["status"] == "error" and by["corrupt"]["lv_edv_ml"] is None
    for name in ["phantom_a", "phantom_b"] + cohort["acdc"]:
        results = json.loads((local_run["out"] / name / "results.json").read_text())
        leaves = _flat_leaves(results["cine"])
        assert leaves, name
        for key, value in leaves.items():   # every stable key of results.json, bit for bit
            assert by[name][key] == value, (name, key)
        assert by[name]["time_load_s"] == results["timing_s"]["load"]
    assert by["phantom_a"]["ref_lv_mass_g"] == pytest.approx(float(cohort["rows"][0]["ref_lv_mass_g"]))


@pytest.mark.parametrize("study", ACDC[:1])
def test_cohort_keys_identical_to_analyze(cohort, local_run, tmp_path, study):
    """The same study through `analyze`: every key of its results.csv (measures.MEASURES) is a cohort column, same value."""
    if study not in cohort["acdc"]:
        pytest.skip("ACDC data not found in ../shared/data")
    out = tmp_path / "single"
    assert cli.main(["analyze", str(cohort["shared"] / study), "--labels", "study", "--out", str(out), "--quiet"]) in (0, None)
    csv_rows = _read_csv(out / "results.csv")
    expect = measures_of(csv_rows)          # results.csv's keys and values, QC rows aside
    row = local_run["table"][study]
    header = list(row)
    assert expect and set(expect) <= set(header)
    for key, value in expect.items():
        if value is None:
            assert row[key] == "", key
        else:
            assert float(row[key]) == pytest.approx(value, rel=1e-5), key
    assert {k for k in header if k.startswith("wall_thickness")} == {r["key"] for r in csv_rows if r["key"].startswith("wall_thickness")}


def test_cohort_report_png(local_run):
    import matplotlib.image as mpimg

    img = mpimg.imread(local_run["out"] / "cohort_report.png")
    assert img.ndim == 3 and img.shape[0] > 500 and img.shape[1] > 800   # three rows: distributions, Bland-Altman, correlation
    assert float(np.std(img[..., :3])) > 0.05


def test_model_preload_keeps_the_model_by_sha256(cohort, monkeypatch):
    """Studies without labels need the task's default model; the worker plugin loads it into the per-process cache."""
    from CardiacAISegLib.models import registry

    specs = read_manifest(cohort["manifest"])
    assert models_needed(specs) == []   # every study has labels: no worker loads a network
    unlabelled = [s for s in specs if s.study == "phantom_a"]
    unlabelled[0].options.pop("labels")
    name = registry.default_model("cine")
    unlabelled[0].options["kind"] = "cine"
    assert models_needed(unlabelled) == [name]
    # without a kind the reader decides from the images: either kind's model may be needed
    unlabelled[0].options.pop("kind")
    assert models_needed(unlabelled) == sorted({name, registry.default_model("perfusion")})
    monkeypatch.setenv("CARDIACAISEG_THREADS", "")   # restored after the test: the plugin sets it for its process
    monkeypatch.delenv("CARDIACAISEG_THREADS")
    ModelPreload([name], threads=1).setup()
    assert os.environ["CARDIACAISEG_THREADS"] == "1"   # a worker's share of the cores, before the session is made
    held = list(registry._CACHE.values())
    loaded = registry.load_model(name)
    assert any(loaded is m for m in held)   # the next study finds the module the plugin loaded
    assert len(registry._CACHE) == len(held)   # and loads nothing more


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc malloc tuning")
def test_relax_malloc_trim_stops_page_faults_under_a_nannys_setting():
    """A worker that a `dask worker` nanny started with MALLOC_TRIM_THRESHOLD_=65536 maps and unmaps
    every array over 128 kB; after ModelPreload's relax_malloc_trim, freed arrays are reused."""
    code = ("import sys, resource, numpy as np\n"
            "from CardiacAISegLib.cohort import relax_malloc_trim\n"
            "done = relax_malloc_trim() if sys.argv[1] == 'relax' else False\n"
            "np.ones(1 << 18)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(200):\n"
            "    np.ones(1 << 18)   # 2 MB, freed at once\n"
            "print(done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")

    def faults(mode, trim):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        env.update({"MALLOC_TRIM_THRESHOLD_": "65536"} if trim else {})
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    done, nanny = faults("keep", trim=True)
    assert not done and nanny > 200 * 256   # each 2 MB array mapped afresh: a fault per 4 kB page (512 each here)
    done, relaxed = faults("relax", trim=True)
    assert done and relaxed < nanny / 20
    done, _ = faults("relax", trim=False)
    assert not done   # no nanny setting (a LocalCluster of batch, an analyze process): glibc's own adaptive rule stays


def test_forkserver_preload_starts_no_thread_or_native_runtime():
    """The LocalCluster's workers are forked from a process that imported FORKSERVER_PRELOAD: none of
    those modules may start a thread or load onnxruntime/torch (whose state a fork would copy)."""
    from CardiacAISegLib.cohort import FORKSERVER_PRELOAD

    code = ("import sys, threading, importlib\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "print(threading.active_count(), *sorted(m for m in ('onnxruntime', 'torch', 'vtk', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, *FORKSERVER_PRELOAD], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"], out.stdout + out.stderr
    assert "CardiacAISegLib.pipeline" in FORKSERVER_PRELOAD   # the imports a first study would pay, made once


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_dask_scheduler_worker_killed_then_resume(cohort, tmp_path):
    """A real `dask scheduler` and `dask worker` on 127.0.0.1; the worker is killed mid-run, the client stopped;
    `--resume` on a fresh worker runs only the studies without complete outputs."""
    root = cohort["root"]
    rows = [dict(r) for r in cohort["rows"]]
    for name in ("phantom_a", "phantom_b"):   # more studies (same inputs, own folders), so the kill lands mid-run
        rows.append({**rows[0 if name == "phantom_a" else 1], "study": f"{name}_again"})
    manifest = root / "cohort_sched.csv"
    _write_manifest(manifest, rows)
    out = tmp_path / "out_sched"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    logs = tmp_path / "logs"
    logs.mkdir()

    def worker(name):
        return subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--name", name, "--memory-limit", "0"],
                                stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env)

    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env)
    procs = [scheduler]
    try:
        w1 = worker("w1")
        procs.append(w1)
        batch_cmd = [sys.executable, "-m", "CardiacAISegLib.cli", "batch", str(manifest), "--out", str(out),
                     "--scheduler", address, "--quiet", "--scene", "--reports", "all"]   # each study's scene.mrb and report.png too
        first = subprocess.Popen(batch_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(first)
        rows_on_disk = lambda: [p.parent.name for p in out.glob(f"*/{ROW_FILE}")]  # noqa: E731
        # a finished study: its row and its outputs (the corrupt study's error row may come first)
        done = lambda: [n for n in rows_on_disk() if (out / n / "results.json").is_file()]  # noqa: E731
        _wait_for(lambda: done() or first.poll() is not None, 150, "the first finished study")
        w1.send_signal(signal.SIGKILL)   # the worker dies mid-run, no goodbye
        w1.wait(timeout=30)
        killed_at = time.time()
        assert first.poll() is None, first.communicate()[0]   # the client is waiting for the lost and remaining studies
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
        finished = sorted(n for n in rows_on_disk() if (out / n / "results.json").is_file())
        assert 1 <= len(finished) < len(rows) - 1, finished   # some finished, the rest did not
        # the stopped batch still wrote its table: every study, the unfinished ones as not run
        stopped = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
        assert list(stopped) == [r["study"] for r in rows]
        for n, r in stopped.items():
            if n not in finished and n != "corrupt":
                assert r["status"] == "error" and "rerun with --resume" in r["error"], r
        first_workers = {json.loads((out / n / ROW_FILE).read_text())["worker"] for n in finished}
        before = {n: ((out / n / "results.json").stat().st_mtime_ns, (out / n / ROW_FILE).stat().st_mtime_ns) for n in finished}

        w2 = worker("w2")
        procs.append(w2)
        resumed = subprocess.run(batch_cmd + ["--resume", "--strict"], capture_output=True, text=True, env=env, timeout=300)
        assert resumed.returncode == 3, resumed.stdout + resumed.stderr   # --strict: the corrupt study is an error row
        assert f"{len(finished)} of {len(rows)} studies already complete, {len(rows) - len(finished)} to run" in resumed.stdout
        for n, mtimes in before.items():   # the finished studies were not run again
            assert ((out / n / "results.json").stat().st_mtime_ns, (out / n / ROW_FILE).stat().st_mtime_ns) == mtimes, n
        table = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
        assert list(table) == [r["study"] for r in rows]
        assert table["corrupt"]["status"] == "error" and "truncated" in table["corrupt"]["error"]
        for r in rows:
            if r["study"] == "corrupt":
                continue
            assert table[r["study"]]["status"] in ("ok", "qc-review"), table[r["study"]]
            assert (out / r["study"] / "scene.mrb").is_file() and (out / r["study"] / "report.png").is_file()
            if r["study"] not in finished:
                assert (out / r["study"] / ROW_FILE).stat().st_mtime > killed_at   # run by the resumed batch
                assert table[r["study"]]["worker"] not in first_workers   # on the new worker, not the killed one
        # the same phantom under two names gives the same numbers
        assert table["phantom_a"]["lv_mass_g"] == table["phantom_a_again"]["lv_mass_g"]
    finally:
        for p in reversed(procs):
            _stop(p)


def test_worker_memory_limit_follows_the_largest_study(cohort, tmp_path):
    """LocalCluster workers get the libraries' share plus the largest study's measured need (memory_check)."""
    import nibabel as nib

    from CardiacAISegLib.cohort import StudySpec, worker_memory_limit
    from CardiacAISegLib.memory_check import needed_bytes

    small = StudySpec("a", str(cohort["root"] / "phantom_a" / "cine.nii.gz"))
    big_path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 16, 30), np.float32), np.eye(4)), str(big_path))
    big = StudySpec("big", str(big_path))
    base = int(1.5 * 1024 ** 3)
    assert worker_memory_limit([small], 1) >= base + needed_bytes(small.input)[0]
    assert worker_memory_limit([small, big], 1) >= base + needed_bytes(big_path)[0]
    assert worker_memory_limit([small, big], 1) > worker_memory_limit([small], 1)


def test_resume_and_force_follow_the_manifest_rows(cohort, tmp_path):
    """--resume reran nothing whose results.json existed: a manifest row pointed at another input
    kept the old input's numbers, and a study that had failed was never tried again. --force on
    a study that now fails left its old outputs beside the error row."""
    from CardiacAISegLib.cohort import load_cohort, run_cohort

    root = cohort["root"]

    def manifest(name, a_input, a_labels, b_input="phantom_b/cine.nii.gz"):
        rows = [{"study": "s_a", "path": a_input, "labels": a_labels},
                {"study": "s_b", "path": b_input, "labels": "phantom_b/cine_labels.nii.gz"}]
        _write_manifest(root / name, rows)
        return load_cohort(root / name)

    def run(specs, **kw):
        return run_cohort(specs, tmp_path / "out", workers=1, processes=False, show_progress=False, log=lambda *a: None,
                          report=False, reports="none", **kw)

    first = run(manifest("m1.csv", "phantom_a/cine.nii.gz", "phantom_a/cine_labels.nii.gz"))
    assert first.counts["error"] == 0
    # s_a now points at phantom_b: it is run again, not kept from phantom_a
    again = run(manifest("m2.csv", "phantom_b/cine.nii.gz", "phantom_b/cine_labels.nii.gz"), resume=True)
    assert again.ran == ["s_a"] and again.skipped == ["s_b"]
    rows = {r["study"]: r for r in again.rows}
    assert rows["s_a"]["lv_edv_ml"] == pytest.approx(rows["s_b"]["lv_edv_ml"], rel=1e-9)
    # s_b now fails under --force: its old outputs go, only the error row is left
    failing = manifest("m3.csv", "phantom_b/cine.nii.gz", "phantom_b/cine_labels.nii.gz", b_input="corrupt.nii.gz")
    forced = run(failing, force=True)
    assert {r["study"]: r["status"] for r in forced.rows}["s_b"] == "error"
    assert not [n for n in OUTPUT_FILES if (tmp_path / "out" / "s_b" / n).exists()]
    # and a study whose last run failed is tried again on --resume
    assert run(failing, resume=True).ran == ["s_b"]
    # the batch's --model and --frames are part of what a study was made with: --resume with
    # another --frames runs it again (it was kept as complete, unsaid)
    assert run(failing, resume=True, frames="all").ran == ["s_a", "s_b"]
    assert run(failing, resume=True, frames="all").ran == ["s_b"]


def test_resume_runs_a_study_whose_input_was_replaced_in_place(cohort, tmp_path):
    """Probe 83: --resume compared the manifest's paths and options only: an image and its labels
    replaced in place by another heart's kept the old heart's numbers, unsaid."""
    import shutil

    from CardiacAISegLib.cohort import load_cohort, run_cohort

    root, data = cohort["root"], tmp_path / "data"
    data.mkdir()
    for name in ("s_a", "s_b"):
        shutil.copy(root / "phantom_a" / "cine.nii.gz", data / f"{name}.nii.gz")
        shutil.copy(root / "phantom_a" / "cine_labels.nii.gz", data / f"{name}_labels.nii.gz")
    _write_manifest(data / "m.csv", [{"study": n, "path": f"{n}.nii.gz", "labels": f"{n}_labels.nii.gz"}
                                     for n in ("s_a", "s_b")])

    def run(**kw):
        return run_cohort(load_cohort(data / "m.csv"), tmp_path / "out", workers=1, processes=False, show_progress=False,
                          log=lambda *a: None, report=False, reports="none", **kw)

    first = run()
    shutil.copy(root / "phantom_b" / "cine_labels.nii.gz", data / "s_b_labels.nii.gz")   # only the labels: another heart's
    again = run(resume=True)
    assert again.ran == ["s_b"] and again.skipped == ["s_a"]
    edv = {r["study"]: r["lv_edv_ml"] for r in again.rows}
    assert edv["s_a"] == first.rows[0]["lv_edv_ml"]
    fresh = run_cohort(load_cohort(data / "m.csv"), tmp_path / "fresh", workers=1, processes=False, show_progress=False,
                       log=lambda *a: None, report=False, reports="none")
    assert edv["s_b"] == {r["study"]: r["lv_edv_ml"] for r in fresh.rows}["s_b"] != edv["s_a"]   # the new labels' numbers
    assert run(resume=True).ran == []   # unchanged since: kept
    # a row written before file stamps were recorded is judged on its input and options (review:
    # the first --resume after the upgrade ran every study again)
    row_file = tmp_path / "out" / "s_a" / "cohort_row.json"
    row = json.loads(row_file.read_text())
    del row["spec"]["files"]
    row_file.write_text(json.dumps(row))
    assert run(resume=True).ran == []
    (data / ".DS_Store").write_bytes(b"x")   # a file browser's, in a folder input's tree: no change of input
    from CardiacAISegLib.cohort import file_stamp

    assert file_stamp(data) == file_stamp(data) and file_stamp(data)[0] == len([p for p in data.iterdir()
                                                                                if not p.name.startswith(".")])


def test_a_study_blamed_for_a_dead_worker_runs_again_alone(cohort, tmp_path, monkeypatch):
    """Probe 83: Dask blames every task a dying worker held. A study queued behind the one that
    crashed its worker got "Attempted to run task ... on 4 different workers, but all those
    workers died" as its error row without having run. Each blamed study now runs again alone;
    the one that still kills its worker gets an error row naming its input."""
    from types import SimpleNamespace

    from distributed import KilledWorker

    from CardiacAISegLib import cohort as cohort_module

    root = cohort["root"]
    _write_manifest(tmp_path / "m.csv", [{"study": n, "path": str(root / "phantom_a" / "cine.nii.gz"),
                                          "labels": str(root / "phantom_a" / "cine_labels.nii.gz")}
                                         for n in ("crashy", "bystander", "other")])
    real, log = cohort_module.run_study, tmp_path / "calls.txt"   # a file: Dask runs a pickled copy of the function

    def dying(spec, *args, **kwargs):   # crashy kills its worker each time; the bystander went down with it once
        with open(log, "a") as f:
            f.write(spec.study + "\n")
        if spec.study == "crashy" or (spec.study == "bystander" and log.read_text().split().count("bystander") == 1):
            raise KilledWorker(f"cardiacaiseg-{spec.study}", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(cohort_module, "run_study", dying)
    run = cohort_module.run_cohort(cohort_module.load_cohort(tmp_path / "m.csv"), tmp_path / "out", workers=1, processes=False,
                                   show_progress=False, log=lambda *a: None, report=False, reports="none")
    rows, calls = {r["study"]: r for r in run.rows}, log.read_text().split()
    assert rows["bystander"]["status"] == "ok" and rows["other"]["status"] == "ok", (calls, rows)
    assert rows["crashy"]["status"] == "error" and calls.count("crashy") == 2 and calls.count("other") == 1
    assert rows["crashy"]["error"].startswith(str(root / "phantom_a" / "cine.nii.gz") + ": the worker process died")
    assert "different workers" not in rows["crashy"]["error"]


def test_manifest_density_and_rest_columns_reach_the_analysis(tmp_path):
    """A row's density and rest series were carried into the table as text: "density 1.10" beside
    a mass at 1.05, a "rest" path beside no MPR (probe round 14)."""
    from CardiacAISegLib.cohort import run_study

    _, _, truth = write_phantom("cine", tmp_path / "cine", seed=1)
    write_phantom("perfusion", tmp_path / "stress", seed=3, noise=0.003)
    write_phantom("perfusion", tmp_path / "rest", seed=8, stress=False, noise=0.003)
    _write_manifest(tmp_path / "m.csv", [
        {"study": "dense", "path": "cine/cine.nii.gz", "labels": "cine/cine_labels.nii.gz", "density": "1.10"},
        {"study": "mpr", "path": "stress/perfusion.nii.gz", "kind": "perfusion", "labels": "stress/perfusion_labels.nii.gz",
         "aif": "stress/aif.csv", "rest": "rest/perfusion.nii.gz", "rest_labels": "rest/perfusion_labels.nii.gz",
         "rest_aif": "rest/aif.csv"}])
    specs = {s.study: s for s in read_manifest(tmp_path / "m.csv")}
    assert specs["dense"].options["density"] == pytest.approx(1.10) and "density" not in specs["dense"].extra
    assert specs["mpr"].options["rest"] == str(tmp_path.resolve() / "rest" / "perfusion.nii.gz")
    dense = run_study(specs["dense"], tmp_path / "out")
    assert dense["measures"]["lv_mass_g"] == pytest.approx(1.10 * truth["voxel_myo_ml"][truth["ed_frame"]], rel=1e-6)
    mpr = run_study(specs["mpr"], tmp_path / "out")
    assert mpr["status"] != "error" and 1.0 < mpr["measures"]["mpr_global"] < 6.0, mpr
    # which files each series came from, and the units the semi-quantitative values are in
    assert mpr["series"] == "perfusion" and mpr["rest_series"] == "perfusion" and mpr["image_units"] in ("signal", "gd_mmol_l")
    assert mpr["measures"]["rest_global_mbf_ml_min_g"] > 0
    _write_manifest(tmp_path / "bad.csv", [{"path": "cine/cine.nii.gz", "density": "heavy"}])
    with pytest.raises(CardiacInputError, match="'density': 'heavy' is not a number"):
        read_manifest(tmp_path / "bad.csv")


def test_cohort_report_draws_what_the_cohort_measured(tmp_path):
    """A perfusion cohort's report drew three empty cine panels (EF, EDV, mass: "no values") and
    said nothing of its MBF; a reference column naming no measure vanished without a word."""
    import matplotlib.image as mpimg

    from CardiacAISegLib.cohort_report import distributions, uncompared_references, write_cohort_report

    rng = np.random.default_rng(0)
    perfusion = [{"study": f"p{i}", "status": "ok", "global_mbf_ml_min_g": float(v), "rest_global_mbf_ml_min_g": 1.0,
                  "mpr_global": float(v), "relative_upslope_global": 0.1, "ref_global_mbf_ml_min_g": float(v) + 0.1,
                  "ref_lvmass": 100.0}
                 for i, v in enumerate(rng.uniform(2, 4, 6))]
    assert [k for k, _ in distributions(perfusion)] == ["global_mbf_ml_min_g", "rest_global_mbf_ml_min_g", "mpr_global"]
    assert dict(distributions(perfusion))["global_mbf_ml_min_g"] == "Global MBF (mL/min/g)"
    cine = [{"study": "c0", "status": "ok", "lv_ef_pct": 55.0, "lv_edv_ml": 150.0, "lv_mass_g": 120.0, "ref_lv_mass_g": 118.0}]
    assert [k for k, _ in distributions(cine + perfusion)] == ["lv_ef_pct", "lv_mass_g", "global_mbf_ml_min_g",
                                                                "rest_global_mbf_ml_min_g"]
    assert [k for k, _ in distributions([{"study": "e", "status": "ok"}])] == ["lv_ef_pct", "lv_edv_ml", "lv_mass_g"]
    skipped = dict(uncompared_references(cine + perfusion))
    assert set(skipped) == {"ref_lvmass", "ref_lv_mass_g"}
    assert "no column of the cohort table" in skipped["ref_lvmass"] and "fewer than 3 studies" in skipped["ref_lv_mass_g"]
    path = write_cohort_report(perfusion, tmp_path / "cohort_report.png")
    img = mpimg.imread(path)
    assert img.shape[0] > 700   # distributions, Bland-Altman and correlation for ref_global_mbf_ml_min_g


def _report_titles(rows, path, monkeypatch):
    """The panel titles cohort_report.png is drawn with."""
    from matplotlib.figure import Figure

    from CardiacAISegLib.cohort_report import write_cohort_report

    titles, save = [], Figure.savefig

    def recording(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    write_cohort_report(rows, path)
    return titles


def test_cohort_statistics_are_over_the_studies_whose_qc_passed(tmp_path, monkeypatch):
    """Probe 83: the cohort report's medians, n and Bland-Altman counted a study flagged for review
    (a wrong slice spacing: mass 319.6 g): median mass 168.5 for 155.7 over the six that passed,
    bias 39.0 g for 13.6, and nothing said. They are now over the QC-pass studies, and the panel
    says how many flagged studies it left out; a panel with only flagged studies says so."""
    masses = [150.0, 155.0, 156.4, 160.0, 170.0, 140.0]
    rows = [{"study": f"s{i}", "status": "ok", "lv_mass_g": m, "lv_ef_pct": 55.0, "lv_edv_ml": 150.0,
             "ref_lv_mass_g": m - 10 + i} for i, m in enumerate(masses)]
    rows.append({"study": "bad", "status": "qc-review", "lv_mass_g": 319.6, "lv_ef_pct": 50.0, "lv_edv_ml": 300.0,
                 "ref_lv_mass_g": 160.0})
    rows.append({"study": "p", "status": "qc-review", "global_mbf_ml_min_g": 2.45})   # only flagged studies have MBF
    titles = _report_titles(rows, tmp_path / "cohort_report.png", monkeypatch)
    mass = next(t for t in titles if t.startswith("LV mass") and "median" in t)
    assert f"median {np.median(masses):.1f}\n(n=6 QC pass; 1 QC review left out)" in mass, titles
    ba = next(t for t in titles if "bias" in t)
    diffs = np.array(masses) - np.array([m - 10 + i for i, m in enumerate(masses)])
    assert f"bias {diffs.mean():.2f}" in ba and "n=6 QC pass; 1 QC review left out" in ba, ba
    mbf = next(t for t in titles if t.startswith("Global MBF"))
    assert "median 2.45\n(n=1, all QC review)" in mbf, titles
    corr = next(t for t in titles if "r = " in t)
    assert "nan" not in corr and "n=6 QC pass" in corr, corr


def test_batch_says_which_reference_columns_it_cannot_compare(tmp_path, capsys):
    write_phantom("cine", tmp_path / "a", seed=1)
    _write_manifest(tmp_path / "m.csv", [{"study": "a", "path": "a/cine.nii.gz", "labels": "a/cine_labels.nii.gz",
                                          "ref_lv_mas_g": "120"}])
    assert cli.main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "manifest column ref_lv_mas_g is not compared in the cohort report: 'lv_mas_g' is no column" in err


def test_batch_errors_name_the_manifest_column_for_an_analyze_flag():
    """A batch study's error said "give --dt or --aif": a manifest has dt and aif columns, no flags."""
    from CardiacAISegLib.cohort import _error_message

    message = _error_message(CardiacInputError("perf.nii.gz", "no frame interval in the file: give --dt or --aif"))
    assert message.endswith("give --dt or --aif (in a batch: the manifest's dt, aif columns)")
    message = _error_message(CardiacInputError("exam", "2 perfusion series: choose one with --series; --force to replace"))
    assert message.endswith("(in a batch: the manifest's series column)")   # --force is a batch flag too: left as it is
    assert _error_message(CardiacInputError("x.nii", "not a NIfTI file")) == "x.nii: not a NIfTI file"


@pytest.mark.parametrize("column,said", [("lables", "looks like a misspelt 'labels'"),
                                         ("Labels", "manifest columns are lower case; name it 'labels'"),
                                         ("dt_s", "reads as the 'dt' option with a unit in its name"),
                                         ("Path", "manifest columns are lower case; name it 'path'")])
def test_manifest_column_that_misspells_an_option_is_refused(tmp_path, column, said):
    """'lables', 'Labels', 'dt_s' were kept as columns of the user's own: the labels not used
    (the network ran), the manifest's frame interval not applied (MBF 2.47 for 1.23)."""
    m = tmp_path / "m.csv"
    first = "" if column == "Path" else "path,"
    m.write_text(f"study,{first}{column}\nx,{'' if column == 'Path' else 'a.nii.gz,'}b.nii.gz\n")
    with pytest.raises(CardiacInputError) as e:
        read_manifest(m)
    assert said in e.value.problem and f"{column!r}" in e.value.problem
    m.write_text("study,path,site,sex,age,date,scanner,series_uid,notes,group,label,unit,rest_date,studyid,frame\n"
                 "x,a.nii.gz,s,f,50,2020,GE,1.2,n,g,dcm,mm,2021,7,3\n")
    extra = read_manifest(m)[0].extra   # columns of one's own stay (a similarity cutoff refused label, unit, rest_date)
    assert extra["date"] == "2020" and extra["label"] == "dcm" and extra["rest_date"] == "2021"


def test_manifest_skips_empty_rows_and_counts_the_files_lines(tmp_path):
    """A spreadsheet's ",,," rows under the table were refused as an empty path; after blank lines
    an error named the wrong line."""
    m = tmp_path / "m.csv"
    m.write_text("study,path,dt\nx,a.nii.gz,0.5\n\n\ny,b.nii.gz,fast\n,,\n")
    with pytest.raises(CardiacInputError, match=r"m.csv line 5: column 'dt': 'fast' is not a number"):
        read_manifest(m)
    m.write_text("study,path\nx,a.nii.gz\n,\n,\n")
    assert [s.study for s in read_manifest(m)] == ["x"]


def _one_study_manifest(root, name, phantom):
    _write_manifest(root / name, [{"study": f"s_{phantom[-1]}", "path": f"{phantom}/cine.nii.gz",
                                   "labels": f"{phantom}/cine_labels.nii.gz"}])
    return root / name


def test_a_batch_does_not_replace_another_batchs_table_unasked(cohort, tmp_path):
    """A second manifest run into the first's folder replaced its table (cohort.csv listed only
    the new study, the first's left unlisted beside it), exit 0 (probe 54). Now refused; --force
    replaces it, --resume keeps what is complete."""
    from CardiacAISegLib.cohort import load_cohort, run_cohort

    root, out = cohort["root"], tmp_path / "out"

    said = []

    def run(manifest, **kw):
        return run_cohort(load_cohort(manifest), out, workers=1, processes=False, show_progress=False,
                          log=said.append, report=False, reports="none", **kw)

    run(_one_study_manifest(root, "one.csv", "phantom_a"))
    table = (out / "cohort.csv").read_text()
    second = _one_study_manifest(root, "two.csv", "phantom_b")
    with pytest.raises(CardiacInputError, match="already holds a cohort table"):
        run(second)
    assert (out / "cohort.csv").read_text() == table
    assert [r["study"] for r in run(second, force=True).rows] == ["s_b"]
    # the first manifest's study folder stays, said (probe 74: unsaid)
    assert any("1 study folder in" in m and "(s_a): left as it is, not in its table" in m for m in said), said


def test_something_in_the_way_of_the_cohort_table_is_refused_before_any_study_runs(cohort, tmp_path):
    """A folder named cohort.csv in --out was found only after every study had run and been
    replaced (probe 54)."""
    from CardiacAISegLib.cohort import load_cohort, run_cohort

    out = tmp_path / "out"
    (out / "cohort.csv").mkdir(parents=True)
    specs = load_cohort(_one_study_manifest(cohort["root"], "one.csv", "phantom_a"))

    def run():
        return run_cohort(specs, out, workers=1, processes=False, show_progress=False, log=lambda *a: None, report=False,
                          reports="none", force=True)

    with pytest.raises(CardiacInputError, match="in the way of the cohort's own file"):
        run()
    assert not (out / "s_a").exists()
    # a file where a study's folder goes: a worker's traceback and no table at all
    (out / "cohort.csv").rmdir()
    (out / "s_a").write_text("x")
    with pytest.raises(CardiacInputError, match="in the way of study 's_a'"):
        run()


def test_a_batch_refuses_an_output_folder_another_run_is_writing(cohort, tmp_path, capsys):
    """Two batches into one folder both ran and the last table to finish won (probe 54); a
    batch now takes the folder's lock, as analyze does."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom CardiacAISegLib.outputs import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        manifest = _one_study_manifest(cohort["root"], "one.csv", "phantom_a")
        assert cli.main(["batch", str(manifest), "--out", str(out), "--workers", "1", "--quiet"]) != 0
        assert "another cardiacaiseg run" in capsys.readouterr().err
        assert not (out / "s_a").exists()
    finally:
        holder.kill()
        holder.wait()


def test_resume_runs_again_the_studies_made_with_weights_since_replaced(tmp_path):
    """A cohort resumed after the extension's networks were updated (gammanet v4 -> v5 in
    session 29) kept the studies made with the old weights as complete: one table held two
    networks' numbers, unsaid. Now those studies run again and the log says why; a study made
    with the installed weights is kept."""
    from CardiacAISegLib.cohort import load_cohort, run_cohort, weights_since_changed
    from CardiacAISegLib.models.registry import get_card

    for name, seed in (("old", 1), ("new", 2)):
        write_phantom("cine", tmp_path / name, seed=seed, n_frames=6, n_slices=6)   # small: the networks run 3 times
    _write_manifest(tmp_path / "m.csv", [{"study": n, "path": f"{n}/cine.nii.gz"} for n in ("old", "new")])
    specs = load_cohort(tmp_path / "m.csv")
    logged = []

    def run(**kw):
        return run_cohort(specs, tmp_path / "out", workers=1, processes=False, show_progress=False, log=logged.append,
                          report=False, reports="none", **kw)

    assert run().counts["error"] == 0
    card = get_card("unet-light")
    results_path = tmp_path / "out" / "old" / "results.json"
    results = json.loads(results_path.read_text())
    assert results["model"]["name"] == "unet-light" and weights_since_changed(results) == []
    results["model"].update(version="3", sha256="0" * 64)   # as the previous release's network wrote it
    results_path.write_text(json.dumps(results))
    assert weights_since_changed(results) == [f"unet-light v3 -> v{card['version']}"]
    again = run(resume=True)
    assert again.ran == ["old"] and again.skipped == ["new"]
    assert any("1 study was made with networks whose weights have changed since (old: unet-light v3 -> v" in line
               for line in logged)
    assert json.loads(results_path.read_text())["model"]["sha256"] == card["weights"]["sha256"]
    # a perfusion ensemble's cine members are judged by their versions
    assert weights_since_changed({"model": {"name": "perfusion-resunet", "perfusion_segmentation": {
        "cine_model": ["unet-light"], "cine_model_version": ["3"]}}}) == [f"unet-light v3 -> v{card['version']}"]
    # ... and by the sha256 of their weights where recorded (a member re-imported with --force under
    # its version kept the old studies complete: MBF 3.40 for 3.44; probe 95); one member is
    # recorded as a value, not a list (its name was read letter by letter: no change ever found)
    version = str(card["version"])
    assert weights_since_changed({"model": {"name": "perfusion-resunet", "perfusion_segmentation": {
        "cine_model": "unet-light", "cine_model_version": version, "cine_model_sha256": "0" * 64}}}) == \
        [f"unet-light v{version} -> v{version} (other weights, same version)"]
    assert weights_since_changed({"model": {"name": "perfusion-resunet", "perfusion_segmentation": {
        "cine_model": "unet-light", "cine_model_version": version,
        "cine_model_sha256": card["weights"]["sha256"]}}}) == []


def test_a_stopped_force_batch_leaves_its_studies_to_resume(cohort, tmp_path):
    """`batch --force` stopped after its first study: its table listed the others as "not run ...
    rerun with --resume", but --resume kept their earlier outputs as complete, so the table then
    mixed the two runs (probe 54). Now the rows a --force batch will redo are marked superseded
    at its start: the stopped table lists them as not run, and --resume runs every one of them;
    the first batch's cohort_report.png, left beside the stopped table, is removed."""
    root = cohort["root"]
    rows = [dict(r) for r in cohort["rows"] if r["study"] != "corrupt"]
    for name in ("phantom_a", "phantom_b"):   # more studies, so that the stop lands mid-run
        rows.append({**rows[0 if name == "phantom_a" else 1], "study": f"{name}_more"})
    manifest = root / "cohort_force.csv"
    _write_manifest(manifest, rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "CardiacAISegLib.cli", "batch", str(manifest), "--out", str(out), "--workers", "1",
           "--quiet", "--reports", "none"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode in (0, 1), first.stdout + first.stderr
    forced_at = time.time()
    time.sleep(1.1)   # file times in whole seconds on some file systems
    forced = subprocess.Popen(cmd + ["--force"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rerun = lambda: [r["study"] for r in rows if (out / r["study"] / ROW_FILE).stat().st_mtime > forced_at  # noqa: E731
                         and "superseded" not in json.loads((out / r["study"] / ROW_FILE).read_text())]
        _wait_for(lambda: rerun() or forced.poll() is not None, 300, "the --force batch's first study")
        forced.send_signal(signal.SIGTERM)
        forced.communicate(timeout=120)
    finally:
        _stop(forced)
    done = rerun()
    assert 1 <= len(done) < len(rows), done
    assert not (out / "cohort_report.png").exists()   # the first batch's figure, of numbers the table no longer lists
    stopped = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
    for r in rows:
        if r["study"] not in done:
            assert stopped[r["study"]]["status"] == "error" and "rerun with --resume" in stopped[r["study"]]["error"]
            # their folders still hold the first batch's outputs: said so, not "no outputs" (probe 74)
            assert (out / r["study"] / "results.json").is_file()
            assert "its outputs are an earlier run's, superseded" in stopped[r["study"]]["error"]
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
    assert f"{len(done)} of {len(rows)} studies already complete, {len(rows) - len(done)} to run" in resumed.stdout
    table = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
    for r in rows:
        row = json.loads((out / r["study"] / ROW_FILE).read_text())
        assert "superseded" not in row and (out / r["study"] / ROW_FILE).stat().st_mtime > forced_at, r["study"]
        assert table[r["study"]]["status"] in ("ok", "qc-review"), table[r["study"]]


# --- probe 64: what a cohort must not do silently ---------------------------------------------------
def test_a_folder_of_dicom_files_is_one_series_not_a_cohort(tmp_path, capsys):
    """`batch` on a DICOM series folder made every file a study, each reading the whole series:
    24 identical "ok" rows (the shipped sample). Files of one series in the folder itself are
    refused; files that each hold a series of their own (enhanced multi-frame) stay a study each.
    An archive, by its name, is a study (its row says how to unpack it) unless unpacked beside
    it; a .docx (a ZIP inside) is no study; --out may not be the folder of studies."""
    import shutil

    import pydicom

    sample = Path(cli.__file__).resolve().parents[1] / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
    series = tmp_path / "series"
    shutil.copytree(sample, series)
    with pytest.raises(CardiacInputError, match=r"holds 24 DICOM files of one series itself \(.*\): a DICOM series is one "
                                                r"study.*cardiacaiseg analyze"):
        load_cohort(series)
    assert cli.main(["batch", str(series), "--out", str(tmp_path / "o")]) == 2
    assert "a DICOM series is one study" in capsys.readouterr().err and not (tmp_path / "o").exists()

    one_file_series = tmp_path / "enhanced"
    one_file_series.mkdir()
    for i, f in enumerate(sorted(sample.glob("*.dcm"))[:2]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.7777.{i + 1}"
        ds.save_as(one_file_series / f"series{i + 1}.dcm")
    assert [s.study for s in load_cohort(one_file_series)] == ["series1", "series2"]

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "p1").mkdir()
    (studies / "p1.zip").write_bytes(b"PK\x03\x04" + b"\0" * 32)     # unpacked beside it: p1/ is the study
    (studies / "p2.zip").write_bytes(b"PK\x03\x04" + b"\0" * 32)
    (studies / "protocol.docx").write_bytes(b"PK\x03\x04" + b"\0" * 32)   # a ZIP inside, no study
    (studies / "notes.txt").write_text("x")
    assert [(s.study, Path(s.input).name) for s in load_cohort(studies)] == [("p1", "p1"), ("p2.zip", "p2.zip")]
    with pytest.raises(CardiacInputError, match="is both the folder of studies and --out"):
        load_cohort(studies, exclude=[studies])


def test_manifest_with_a_column_twice_is_refused(tmp_path):
    """A repeated column kept its last cell (the network ran instead of the given labels; the
    second of two paths was measured), and an `input` column beside `path` was ignored."""
    for header, said in (("study,path,labels,labels", "column 'labels' appear"), ("study,path,path", "column 'path' appear"),
                         ("study,path,ref_lv_edv_ml,ref_lv_edv_ml", "column 'ref_lv_edv_ml' appear"),
                         ("study,path,input", "both a 'path' and an 'input' column")):
        m = tmp_path / "m.csv"
        m.write_text(header + "\n" + ",".join(["x"] + ["a.nii.gz"] * (header.count(",") - 1) + ["1"]) + "\n")
        with pytest.raises(CardiacInputError, match=said):
            read_manifest(m)


def test_study_ids_are_kept_as_written(cohort, tmp_path):
    """The table's study column held the folder name: 'UKB 1000123' became UKB_1000123 and a join
    back to the manifest lost the row; Müller_1 and Mäller_1 were one folder (M_ller_1) and refused.
    The id now stays as written, its folder in its own column; letters of any script stay."""
    from CardiacAISegLib.cohort import assemble_table, run_study

    rows = [{"study": "UKB 1000123", "path": "phantom_a/cine.nii.gz", "labels": "phantom_a/cine_labels.nii.gz"},
            {"study": "Müller_1", "path": "phantom_b/cine.nii.gz", "labels": "phantom_b/cine_labels.nii.gz"},
            {"study": "Mäller_1", "path": "corrupt.nii.gz", "labels": "phantom_a/cine_labels.nii.gz"}]
    _write_manifest(cohort["root"] / "ids.csv", rows)
    specs = read_manifest(cohort["root"] / "ids.csv")
    assert [(s.id, s.study) for s in specs] == [("UKB 1000123", "UKB_1000123"), ("Müller_1", "Müller_1"),
                                                ("Mäller_1", "Mäller_1")]
    for s in specs:
        run_study(s, tmp_path, reports="none")
    columns, table, missing, _ = assemble_table(specs, tmp_path)
    assert columns[:3] == ["study", "folder", "status"] and missing == 0
    assert [(r["study"], r["folder"], r["status"]) for r in table] == [
        ("UKB 1000123", "UKB_1000123", "ok"), ("Müller_1", "Müller_1", "ok"), ("Mäller_1", "Mäller_1", "error")]
    assert (tmp_path / "UKB_1000123" / "results.json").is_file()


def test_a_task_dask_runs_again_keeps_this_batchs_outputs(cohort, tmp_path):
    """Dask runs a finished task again when the worker holding its result dies: the second run
    refused to overwrite the first's outputs ("pass --force") and the study became an error row.
    Now this batch's row is returned as it is, outputs of this batch without a row are replaced,
    and an earlier run's outputs are still not overwritten unasked."""
    from CardiacAISegLib.cohort import run_study, study_complete

    spec = read_manifest(cohort["manifest"])[1]   # phantom_b with its labels
    first = run_study(spec, tmp_path, reports="none", batch="batch-1")
    assert first["status"] == "ok" and first["batch"] == "batch-1"
    row_file = tmp_path / spec.study / ROW_FILE
    before = row_file.stat().st_mtime_ns
    again = run_study(spec, tmp_path, reports="none", batch="batch-1")
    assert again == json.loads(row_file.read_text()) and row_file.stat().st_mtime_ns == before
    row_file.unlink()   # died after moving the outputs in, before the row
    assert not study_complete(tmp_path / spec.study, spec)   # what they were made from is unknown: run again
    rerun = run_study(spec, tmp_path, reports="none", batch="batch-1")
    assert rerun["status"] == "ok" and rerun["measures"]["lv_edv_ml"] == first["measures"]["lv_edv_ml"]
    # another batch's row is not this batch's, whatever the file times say
    assert run_study(spec, tmp_path, reports="none", batch="batch-2", force=True)["batch"] == "batch-2"
    # outside a batch (analyze's rule), outputs are still not overwritten unasked
    row_file.unlink()
    refused = run_study(spec, tmp_path, reports="none")
    assert refused["status"] == "error" and "would overwrite" in refused["error"]


def test_a_force_batch_stopped_while_dask_starts_lists_its_studies_as_not_run(cohort, tmp_path, monkeypatch):
    """Ctrl-C while the cluster started (after the rows were marked superseded) left the earlier
    table's "ok" rows and figure in place, beside rows it had superseded."""
    from CardiacAISegLib import cohort as cohort_module
    from CardiacAISegLib.cohort import run_cohort

    specs = [s for s in read_manifest(cohort["manifest"]) if s.study in ("phantom_a", "phantom_b")]
    kw = dict(workers=1, processes=False, show_progress=False, log=lambda *a: None, reports="none")
    first = run_cohort(specs, tmp_path, **kw)
    assert first.counts["ok"] == 2 and (tmp_path / "cohort_report.png").is_file()
    time.sleep(1.1)   # file times in whole seconds on some file systems

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_module, "_open_client", stopped)
    said = []
    with pytest.raises(KeyboardInterrupt):
        run_cohort(specs, tmp_path, force=True, **{**kw, "log": said.append})
    # what to do next, before the CLI's one word "cancelled" (probe 74)
    assert any("cohort.csv lists the studies not finished as not run" in m and "--resume" in m for m in said), said
    table = _read_csv(tmp_path / "cohort.csv")
    assert [(r["study"], r["status"]) for r in table] == [("phantom_a", "error"), ("phantom_b", "error")]
    assert all("rerun with --resume" in r["error"] for r in table)
    assert not (tmp_path / "cohort_report.png").exists()


def test_resume_and_force_together_are_refused(cohort, tmp_path, capsys):
    assert cli.main(["batch", str(cohort["manifest"]), "--out", str(tmp_path / "o"), "--resume", "--force"]) == 2
    assert "give one: --resume keeps the complete studies" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cohort_report_draws_values_equal_to_the_last_bits(tmp_path):
    """EF values equal but for float rounding (23.653337739590214 and ...21) ended the batch with
    "Too many bins for data range" and no summary."""
    from CardiacAISegLib.cohort_report import write_cohort_report

    rows = [{"study": f"s{i}", "status": "ok", "lv_ef_pct": 23.653337739590214 + i * 1e-15, "lv_edv_ml": 150.0,
             "lv_mass_g": 120.0 + i} for i in range(3)]
    assert write_cohort_report(rows, tmp_path / "cohort_report.png").is_file()


def test_a_stop_signal_python_swallowed_still_stops_the_batch(cohort, tmp_path, monkeypatch):
    """A SIGINT handled while a weakref callback ran (an import's module lock, as Dask starts)
    raised there, was printed as "Exception ignored" and lost: the batch ran to its end, rc 0
    (probe 64, 3n3). The signal is remembered and raised at the next step of the batch."""
    import signal as signals

    from CardiacAISegLib import cohort as cohort_module
    from CardiacAISegLib.cohort import run_cohort

    specs = [s for s in read_manifest(cohort["manifest"]) if s.study in ("phantom_a", "phantom_b")]
    real_open = cohort_module._open_client

    class Swallows:
        def __del__(self):
            os.kill(os.getpid(), signals.SIGINT)   # the handler's KeyboardInterrupt is raised here and lost

    def open_client(*args, **kwargs):
        Swallows()
        return real_open(*args, **kwargs)

    monkeypatch.setattr(cohort_module, "_open_client", open_client)
    # as in a terminal, whatever launched pytest (a shell script's background job ignores SIGINT,
    # and an ignored signal is left ignored)
    before = signals.signal(signals.SIGINT, signals.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_cohort(specs, tmp_path, workers=1, processes=False, show_progress=False, log=lambda *a: None, reports="none")
        assert signals.getsignal(signals.SIGINT) is signals.default_int_handler   # the handler is put back
    finally:
        signals.signal(signals.SIGINT, before)
    table = _read_csv(tmp_path / "cohort.csv")
    assert [(r["study"], r["status"]) for r in table] == [("phantom_a", "error"), ("phantom_b", "error")]


def test_perfusion_cohort_manifest_and_report_faults_of_probe_71(tmp_path):
    """A manifest column named like a measure ('mpr_global' of earlier values) replaced the
    measured value in the table; units 'Gd' was taken as signal intensity (analyze refuses it); a
    row written without the options it was made from was kept by --resume though its rest had
    changed; the cohort figure drew MBF from AIFs taken from the LV as any other."""
    from CardiacAISegLib.cohort import StudySpec, is_measure_key, study_complete
    from CardiacAISegLib.cohort_report import distributions

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,kind,mpr_global,age\na.nii.gz,perfusion,9.99,61\n")
    spec = read_manifest(manifest)[0]
    assert spec.extra == {"manifest_mpr_global": "9.99", "age": "61"}
    assert is_measure_key("mbf_ml_min_g_seg12") and is_measure_key("mpr_LAD") and not is_measure_key("ref_mpr_global")
    manifest.write_text("path,kind,units\na.nii.gz,perfusion,Gd\n")
    with pytest.raises(CardiacInputError, match="units 'Gd': accepted are signal and gd_mmol_l"):
        read_manifest(manifest)
    study = tmp_path / "out" / "a"
    study.mkdir(parents=True)
    (study / "results.json").write_text(json.dumps({"kind": "perfusion"}))
    (study / ROW_FILE).write_text(json.dumps({"study": "a", "status": "ok", "input": str(tmp_path / "a.nii.gz")}))
    legacy = StudySpec("a", str(tmp_path / "a.nii.gz"), {"kind": "perfusion", "rest": str(tmp_path / "r2.nii.gz")}, {})
    assert not study_complete(study, legacy)
    rows = [{"study": f"p{i}", "status": "ok", "global_mbf_ml_min_g": 2.0 + i, "rest_global_mbf_ml_min_g": 1.0,
             "mpr_global": 2.0 + i, "relative_upslope_global": 0.1, "mpri_global": 2.0,
             "qc_codes": "AIF_FROM_LV;REST_AIF_FROM_LV"} for i in range(3)]
    panels = distributions(rows)
    assert [k for k, _ in panels][:2] == ["relative_upslope_global", "mpri_global"]
    rows[0]["qc_codes"] = ""
    labels = dict(distributions(rows))
    assert labels["global_mbf_ml_min_g"].endswith("AIF from the LV in 2 of 3: approximate")


def test_what_every_study_would_fail_on_is_refused_before_the_cohort_starts(cohort, tmp_path, capsys):
    """Probe 74: `batch --model unet-lite` (a typo) or a --labels file that is not there made every
    study an error row, exit 1, and left --out holding a table (a rerun then needed --resume or
    --force). Both are refused before the cluster starts, nothing written; a row's own model stays
    that row's error."""
    manifest = _one_study_manifest(cohort["root"], "typo.csv", "phantom_a")
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("study,path\ns_a," + str(cohort["root"] / "phantom_a" / "cine.nii.gz") + "\n")
    out = tmp_path / "out"
    assert cli.main(["batch", str(unlabelled), "--out", str(out), "--model", "unet-lite", "--quiet"]) == 2
    assert "unet-lite: no such model" in capsys.readouterr().err and not out.exists()
    assert cli.main(["batch", str(unlabelled), "--out", str(out), "--labels", str(tmp_path / "nope.nii.gz"), "--quiet"]) == 2
    assert "nope.nii.gz: label file not found" in capsys.readouterr().err and not out.exists()
    # studies with labels of their own need no model: a --model for the others is not checked for them
    from CardiacAISegLib.cohort import _refuse_what_every_study_would_fail_on

    _refuse_what_every_study_would_fail_on(load_cohort(manifest), "unet-lite")
    # a remote cluster's workers have models of their own: not checked against this machine's (review)
    _refuse_what_every_study_would_fail_on(load_cohort(unlabelled), "site-net", scheduler="tcp://127.0.0.1:8786")


def test_an_earlier_cohorts_output_in_the_folder_of_studies_is_no_study(tmp_path, capsys):
    """Probe 74: `batch studies --out studies/resB` after `--out studies/resA` read resA (cohort.csv,
    study folders) as a study: an error row 'no readable images' and exit 1 though every study was ok."""
    studies = tmp_path / "studies"
    write_phantom("cine", studies / "a", seed=1, n_frames=4, n_slices=4, size=48)
    (studies / "resA" / "a").mkdir(parents=True)
    (studies / "resA" / "cohort.csv").write_text("study,status\na,ok\n")
    notes = []
    specs = load_cohort(studies, exclude=[studies / "resB"], notes=notes)
    assert [s.study for s in specs] == ["a"]
    assert notes and "resA is skipped: it holds cohort.csv" in notes[0]


def test_manifest_faults_a_spreadsheet_makes_are_named(tmp_path):
    """Probe 74: a manifest saved with ';' between cells was 'no path column (columns: study;path)',
    one saved as Latin-1 'is not a text CSV manifest', and a dt of -1 became one study's error row
    after the cluster had started (a dt of nan was refused at once)."""
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text("study;path\na;a.nii.gz\n")
    with pytest.raises(CardiacInputError, match="separated by ';'"):
        read_manifest(semicolons)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("study,path\nM\xfcller,a.nii.gz\n".encode("latin-1"))
    with pytest.raises(CardiacInputError, match=r"is not UTF-8 text \(line 2: b'\\xfc'; .* save the manifest as CSV UTF-8"):
        read_manifest(latin)
    negative = tmp_path / "negative.csv"
    negative.write_text("study,path,dt\na,a.nii.gz,-1\n")
    with pytest.raises(CardiacInputError, match=r"line 2: column 'dt': -1 must be above 0"):
        read_manifest(negative)


def test_an_output_folder_inside_a_studys_input_folder_is_refused(tmp_path):
    """Probe 74: `batch studies --out studies/a/res` wrote the cohort into study a's own folder."""
    from CardiacAISegLib.cohort import run_cohort

    studies = tmp_path / "studies"
    write_phantom("cine", studies / "a", seed=1, n_frames=4, n_slices=4, size=48)
    with pytest.raises(CardiacInputError, match="--out lies inside study 'a'"):
        run_cohort(load_cohort(studies, {"labels": "study"}), studies / "a" / "res", workers=1, processes=False,
                   show_progress=False, log=lambda *a: None, report=False, reports="none")
    assert not (studies / "a" / "res").exists()


def _interrupt_disposition(queue):
    import signal

    ModelPreload([]).setup()
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_worker_process_leaves_ctrl_c_to_the_batch():
    """Probe 74: Ctrl-C reaches every process of the terminal's group; each Dask worker process
    printed a KeyboardInterrupt traceback before the batch's own 'cancelled'. A worker process
    ignores it (the batch stops the cluster); the batch's own process keeps it."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_interrupt_disposition, args=(queue,))
    child.start()
    assert queue.get(timeout=60) is True
    child.join(30)
    ModelPreload([]).setup()   # here, in the batch's own process
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_one_input_under_two_study_ids_is_said(cohort, tmp_path):
    """Probe 74: a manifest that lists one input under two ids ran it twice, counted twice in the
    cohort's statistics, unsaid."""
    path = str(cohort["root"] / "phantom_a" / "cine.nii.gz")
    manifest = tmp_path / "twice.csv"
    manifest.write_text(f"study,path\nfirst,{path}\nagain,{path}\n")
    notes = []
    assert [s.id for s in load_cohort(manifest, notes=notes)] == ["first", "again"]
    assert notes == [f"studies 'first' and 'again' read the same input {path}: the cohort's statistics count it twice"]


def test_a_second_stop_while_the_workers_close_still_writes_the_table(cohort, tmp_path, monkeypatch):
    """Probe 91: a second Ctrl-C in the 2-3 s the workers take to stop broke off their close; the
    finally closed them again and hung, and no cohort.csv was written. The stop's own work is
    held from further signals: the workers are closed once and the table is written."""
    import signal as signals

    from CardiacAISegLib import cohort as cohort_module
    from CardiacAISegLib.cohort import run_cohort

    specs = [s for s in read_manifest(cohort["manifest"]) if s.study in ("phantom_a", "phantom_b")]
    real_open = cohort_module._open_client
    closes = []

    def open_client(*args, **kwargs):
        client, cluster = real_open(*args, **kwargs)
        real_close = cluster.close

        def close(*a, **kw):
            closes.append(1)
            if len(closes) == 1:
                os.kill(os.getpid(), signals.SIGINT)   # the user presses Ctrl-C again while it closes
                time.sleep(0.2)
            return real_close(*a, **kw)
        cluster.close = close
        return client, cluster

    def first_stop(client):
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_module, "_open_client", open_client)
    monkeypatch.setattr(cohort_module, "_dashboard", first_stop)
    before = signals.signal(signals.SIGINT, signals.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_cohort(specs, tmp_path, workers=1, processes=False, show_progress=False, log=lambda *a: None, reports="none")
    finally:
        signals.signal(signals.SIGINT, before)
    assert len(closes) == 1
    table = _read_csv(tmp_path / "cohort.csv")
    assert [(r["study"], r["status"]) for r in table] == [("phantom_a", "error"), ("phantom_b", "error")]
    assert all("rerun with --resume" in r["error"] for r in table)


def test_resume_keeps_a_study_made_with_more_outputs_and_says_why_it_runs_one_again(cohort, tmp_path):
    """Probe 91: a batch run with --scene and resumed without it ran every study again with
    nothing said, and its scene.mrb went. Outputs asked for before and not now keep the study
    complete; a study run again for other options is said, with the options."""
    from CardiacAISegLib.cohort import run_cohort

    def specs(**defaults):
        return [s for s in read_manifest(cohort["manifest"], defaults=defaults) if s.study == "phantom_b"]
    kw = dict(workers=1, processes=False, show_progress=False, reports="none")
    run_cohort(specs(scene=True), tmp_path / "a", log=lambda *a: None, **kw)
    assert (tmp_path / "a" / "phantom_b" / "scene.mrb").is_file()
    said = []
    again = run_cohort(specs(), tmp_path / "a", resume=True, log=said.append, **kw)
    assert again.skipped == ["phantom_b"] and (tmp_path / "a" / "phantom_b" / "scene.mrb").is_file(), said
    run_cohort(specs(), tmp_path / "b", log=lambda *a: None, **kw)
    said = []
    again = run_cohort(specs(scene=True), tmp_path / "b", resume=True, log=said.append, **kw)
    assert again.skipped == [] and (tmp_path / "b" / "phantom_b" / "scene.mrb").is_file()
    assert any("1 study with outputs run again, made from other options scene (phantom_b)" in m for m in said), said


def test_a_manifest_whose_paths_all_miss_is_refused_before_the_batch(tmp_path):
    """Probe 91: relative paths written from another folder than the manifest's made one error row
    per study, an empty figure and exit 1 after the cluster had started; the manifest is refused
    at once, saying where relative paths are read from. One path found: the others are the
    studies' own errors."""
    from CardiacAISegLib.cohort import load_cohort

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("study,path\na,data/a.nii.gz\nb,data/b.nii.gz\n")
    with pytest.raises(CardiacInputError, match=r"none of its 2 study paths exists \(e.g. .*lists/data/a.nii.gz\): relative "
                                                r"paths are read from the manifest's own folder"):
        load_cohort(manifest)
    manifest.write_text("study,path\na,../data/a.nii.gz\nb,../data/b.nii.gz\n")
    assert [s.study for s in load_cohort(manifest)] == ["a", "b"]


def test_a_study_over_the_study_timeout_is_an_error_row_and_the_batch_goes_on(tmp_path, capsys):
    """A study that never ends (a reader or a fit stuck on some input) held the whole cohort: no
    per-study limit. With --study-timeout each study running longer becomes an error row that
    says so, its worker process is restarted, and the batch ends with its table; --resume then
    measures them within a limit they keep."""
    from CardiacAISegLib.cli import BATCH_ERROR_EXIT

    rows = []
    for name, seed in (("first", 5), ("second", 6)):
        write_phantom("cine", tmp_path / name, seed=seed)
        rows.append({"study": name, "path": f"{name}/cine.nii.gz", "labels": f"{name}/cine_labels.nii.gz"})
    _write_manifest(tmp_path / "cohort.csv", rows)
    out = tmp_path / "out"
    t0 = time.time()
    # 50 ms: no machine reads, measures and writes a study in that time, so both are stopped
    status = cli.main(["batch", str(tmp_path / "cohort.csv"), "--out", str(out), "--workers", "1", "--study-timeout", "0.05",
                       "--quiet", "--reports", "none"])
    took = time.time() - t0
    err = capsys.readouterr().err
    assert status == BATCH_ERROR_EXIT, err
    table = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
    for name in ("first", "second"):
        assert table[name]["status"] == "error" and "did not finish within 0.05 s (--study-timeout)" in table[name]["error"]
        assert not (out / name / "results.json").exists()
    assert took < 300
    # --resume runs the timed-out studies again (no results), now within the limit
    status = cli.main(["batch", str(tmp_path / "cohort.csv"), "--out", str(out), "--workers", "1", "--resume",
                       "--study-timeout", "600", "--quiet", "--reports", "none"])
    table = {r["study"]: r for r in _read_csv(out / "cohort.csv")}
    assert status == 0 and all(table[n]["status"] in ("ok", "qc-review") for n in table), table
    with pytest.raises(SystemExit):
        cli.main(["batch", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "out2"), "--study-timeout", "-1"])


def test_the_study_timeout_is_disarmed_when_the_study_fails_on_its_error_path(tmp_path, monkeypatch):
    """run_study disarmed its --study-timeout only after a study's error was recorded: an error
    on the error path itself (a folder named report.png where --force removes the old outputs)
    left the timer armed, and it ended the worker process seconds later in the middle of the
    next study (review of session 45). The exit is caught here instead of taken."""
    import os as os_module

    from CardiacAISegLib import analyze, cohort as cohort_module

    exits = []
    monkeypatch.setattr(os_module, "_exit", lambda status: exits.append(status))

    def fails(*args, **kwargs):
        raise RuntimeError("the study failed")
    monkeypatch.setattr(analyze, "run", fails)
    spec = cohort_module.StudySpec("s", str(tmp_path / "in.nii.gz"), {})
    (tmp_path / "out" / "s" / "report.png").mkdir(parents=True)   # not removable by unlink
    with pytest.raises(OSError):
        cohort_module.run_study(spec, str(tmp_path / "out"), force=True, batch="b", timeout_s=0.3)
    time.sleep(0.8)
    assert exits == []


def _models_that_cannot_run(monkeypatch, broken, cine_default=None):
    """The registry's models named in ``broken`` have their weights missing (``verify_runnable``
    fails for them, so a perfusion ensemble whose cine member is one cannot run either);
    ``cine_default``: the cine model a user made the default (one the perfusion ensemble does not use)."""
    from CardiacAISegLib.models import registry

    verify = registry.verify_runnable
    default = registry.default_model

    def verify_runnable(card, runtime=None):
        if card["name"] in broken:
            raise CardiacInputError(f"{card['name']}/weights", f"weights of model {card['name']!r} are missing")
        return verify(card, runtime)
    monkeypatch.setattr(registry, "verify_runnable", verify_runnable)
    if cine_default:
        monkeypatch.setattr(registry, "default_model", lambda task="cine": cine_default if task == "cine" else default(task))


class _DaskStarts(Exception):
    """The batch got past its refusals to starting Dask."""


def test_a_study_without_a_kind_is_checked_against_either_kinds_model(tmp_path, monkeypatch, capsys):
    """The models check before a batch counted a study without a 'kind' (a DICOM folder, a 4D
    NIfTI: the reader decides its kind from the images) as cine. A folder of perfusion exams was
    refused because the cine model could not run, though none of them would use it; a perfusion
    model that could not run was not said at all; and with neither runnable the refusal named the
    cine model alone. Such a study fails for certain only when neither kind's model can run: then
    the batch is refused naming both, nothing written; otherwise it runs, and a note names the
    model that cannot run and the studies it leaves as error rows."""
    from CardiacAISegLib import cohort as cohort_module
    from CardiacAISegLib.cohort import StudySpec, _refuse_what_every_study_would_fail_on, run_cohort
    from CardiacAISegLib.models import registry

    cine, perfusion = registry.default_model("cine"), registry.default_model("perfusion")
    studies = tmp_path / "exams"
    for name in ("exam1", "exam2", "exam3"):
        (studies / name).mkdir(parents=True)   # DICOM folders: their kind is known once they are read
    out = tmp_path / "out"

    def started(*args, **kwargs):
        raise _DaskStarts
    monkeypatch.setattr(cohort_module, "_open_client", started)
    kindless = load_cohort(studies)
    kw = dict(processes=False, show_progress=False, reports="none")

    # the cine model a user made the default cannot run; the perfusion model (which segments key
    # images with the shipped cine networks) can: perfusion exams run
    with monkeypatch.context() as m:
        _models_that_cannot_run(m, {"gammanet"}, cine_default="gammanet")
        said = []
        with pytest.raises(_DaskStarts):
            run_cohort(kindless, tmp_path / "started", log=said.append, **kw)
        assert ("note: the cine model 'gammanet' cannot run (gammanet/weights: weights of model 'gammanet' are missing): "
                "those of the 3 without a 'kind' the reader finds cine will be error rows") in said, said
        assert not any("perfusion" in s for s in said), said
        # said to be perfusion, they need no cine model: no note
        perfusion_said = [StudySpec(s.study, s.input, {"kind": "perfusion"}) for s in kindless]
        said.clear()
        _refuse_what_every_study_would_fail_on(perfusion_said, None, log=said.append)
        assert said == []
        # said to be cine, every one fails: refused, naming the cine model
        with pytest.raises(CardiacInputError, match="^gammanet: the model every study without its own would run cannot run"):
            _refuse_what_every_study_would_fail_on([StudySpec(s.study, s.input, {"kind": "cine"}) for s in kindless], None)

    # the perfusion ensemble's own key-image member is gone: cine exams run, perfusion ones are said
    with monkeypatch.context() as m:
        _models_that_cannot_run(m, {"unet-light-keyimage"})
        said = []
        with pytest.raises(_DaskStarts):
            run_cohort(kindless, tmp_path / "started", log=said.append, **kw)
        assert said == [f"note: the perfusion model {perfusion!r} cannot run (its cine network 'unet-light-keyimage' cannot "
                        "run: unet-light-keyimage/weights: weights of model 'unet-light-keyimage' are missing): those of the "
                        "3 without a 'kind' the reader finds perfusion will be error rows"], said
        # a cohort of both kinds by its manifest: the cine studies run, the perfusion ones are said
        mixed = [StudySpec("c", "c.nii.gz", {"kind": "cine"}), StudySpec("p", "p.nii.gz", {"kind": "perfusion"}),
                 StudySpec("x", "x.nii.gz")]
        said.clear()
        _refuse_what_every_study_would_fail_on(mixed, None, log=said.append)
        assert len(said) == 1 and said[0].endswith(": 1 perfusion study and those of the 1 without a 'kind' the reader "
                                                   "finds perfusion will be error rows"), said

    # the shipped cine default is gone: the perfusion ensemble segments with it too, so no study
    # can run. Refused before the batch, naming both models, and nothing written
    with monkeypatch.context() as m:
        _models_that_cannot_run(m, {cine})
        assert cli.main(["batch", str(studies), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert (f"{cine}, {perfusion}: no study without labels or a model of its own could run: the cine model {cine!r} "
                f"cannot run: {cine}/weights: weights of model {cine!r} are missing; the perfusion model {perfusion!r} "
                f"cannot run: its cine network {cine!r} cannot run") in err, err
        assert "3 studies have no 'kind': the reader decides it from the images, cine or perfusion" in err, err
        assert not out.exists()
        # the same with no perfusion model installed at all
        m.setattr(registry, "list_models", lambda task=None, real=registry.list_models: [] if task == "perfusion" else real(task))
        with pytest.raises(CardiacInputError, match=f"^{cine}, perfusion: .*; no perfusion model is installed \\(3 studies"):
            _refuse_what_every_study_would_fail_on(kindless, None)
    # studies with labels, or with a model of their own, need none of these: not refused
    with monkeypatch.context() as m:
        _models_that_cannot_run(m, {cine})
        _refuse_what_every_study_would_fail_on([StudySpec("a", "a.nii.gz", {"labels": "study"}),
                                                StudySpec("b", "b.nii.gz", {"model": "gammanet"})], None)


def test_a_refused_force_batch_leaves_the_earlier_results_as_they_were(tmp_path, monkeypatch):
    """`batch --study-timeout S --force` on a scheduler whose workers run without a nanny is
    refused, but it had already marked the earlier run's rows superseded: a batch that never ran
    changed the results on disk, and a --resume then ran every study again. Every refusal now
    comes first. Stopped while Dask starts (no refusal), the rows are still superseded, as the
    table it writes lists the studies as not run."""
    from CardiacAISegLib import cohort as cohort_module
    from CardiacAISegLib.cohort import StudySpec, run_cohort

    out = tmp_path / "out"
    specs = [StudySpec(name, str(tmp_path / f"{name}.nii.gz"), {"labels": "study"}) for name in ("a", "b")]
    for s in specs:   # an earlier run's complete outputs
        (out / s.study).mkdir(parents=True)
        (out / s.study / "results.json").write_text("{}")
        (out / s.study / ROW_FILE).write_text(json.dumps({"study": s.study, "status": "ok", "measures": {}}))
    (out / "cohort.csv").write_text("study,status\na,ok\nb,ok\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    closed = []

    class NoNannyClient:   # `dask worker --no-nanny` workers, as the scheduler lists them
        def scheduler_info(self):
            return {"workers": {"tcp://10.0.0.7:40123": {"nanny": None}, "tcp://10.0.0.8:40123": {"nanny": None}}}

        def close(self):
            closed.append(True)

    monkeypatch.setattr(cohort_module, "_open_client", lambda *args: (NoNannyClient(), None))
    with pytest.raises(CardiacInputError, match=r"--study-timeout: 2 worker\(s\) .* run without a nanny"):
        run_cohort(specs, out, scheduler="tcp://10.0.0.7:8786", force=True, study_timeout_s=600, show_progress=False,
                   log=lambda *a: None)
    assert closed == [True]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before   # nothing written

    def stopped(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cohort_module, "_open_client", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_cohort(specs, out, scheduler="tcp://10.0.0.7:8786", force=True, study_timeout_s=600, show_progress=False,
                   log=lambda *a: None)
    # the table lists them as not run, so --resume must run them: superseded on disk
    assert all("runs this study again" in json.loads((out / s.study / ROW_FILE).read_text())["superseded"] for s in specs)
    assert all("rerun with --resume" in r["error"] for r in _read_csv(out / "cohort.csv"))
