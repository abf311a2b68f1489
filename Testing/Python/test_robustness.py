"""No tracebacks, no leftovers: signals, concurrent runs, odd output folders, huge headers, bugs.

Signals and concurrency are tested on real processes (``python -m CardiacAISegLib.cli``) on a
cine phantom with its label map (no network). Every failing run must end with one ``error:``
line (or ``cancelled``), a meaningful exit code, no ``.cardiacaiseg-*`` staging folder, and an
output folder that is either absent or complete.
"""
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_dicom

from CardiacAISegLib import cli, memory_check, outputs
from CardiacAISegLib.outputs import OUTPUT_FILES
from CardiacAISegLib.errors import CardiacInputError, OutputLockedError

CLI = [sys.executable, "-m", "CardiacAISegLib.cli"]
GIB = 1024 ** 3
FACTOR = memory_check.PIPELINE_FACTOR


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A cine phantom written by `cardiacaiseg phantom` (image + ACDC label map)."""
    d = tmp_path_factory.mktemp("phantom")
    done = subprocess.run(CLI + ["phantom", "--kind", "cine", "--out", str(d)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return d / "cine.nii.gz", d / "cine_labels.nii.gz"


def _analyze_cmd(phantom, out, *extra):
    image, labels = phantom
    return CLI + ["analyze", str(image), "--labels", str(labels), "--out", str(out), "--quiet", *extra]


def _staging(out):
    return [n for n in os.listdir(out) if n.startswith(outputs.STAGE_PREFIX)] if out.is_dir() else []


def _wait_for(predicate, proc, timeout=120):
    """Poll until ``predicate()`` or the process ends; True when the predicate came true first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out")


def _assert_absent_or_complete(out):
    if not out.exists():
        return
    names = set(os.listdir(out))
    assert not {n for n in names if n.startswith(".cardiacaiseg")}, names
    assert set(OUTPUT_FILES) <= names, f"half-written output folder: {sorted(names)}"


def _error_lines(err):
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------- signals (processes)
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_while_writing_leaves_no_staging(phantom, tmp_path, sig, code):
    """Stopped while its staging folder exists: the staging folder goes, the out folder too."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_analyze_cmd(phantom, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hit = _wait_for(lambda: bool(_staging(out)), proc)
    if hit:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert hit, f"the run ended before writing: {err}"
    assert proc.returncode == code, err
    assert "cancelled" in err and "Traceback" not in err, err
    assert not _staging(out)
    assert not out.exists(), f"the run created {out} and must remove it when stopped: {os.listdir(out)}"


def test_sigterm_while_loading_removes_the_folder_it_created(phantom, tmp_path):
    out = tmp_path / "new" / "out"
    proc = subprocess.Popen(_analyze_cmd(phantom, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hit = _wait_for(lambda: (out / outputs.LOCK_NAME).exists(), proc)
    if hit:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert hit, err
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not (tmp_path / "new").exists(), "folders the run created stay behind"


def test_sigterm_keeps_old_outputs_of_a_forced_run(phantom, tmp_path):
    """--force stopped while writing: the previous outputs are still there, unchanged."""
    out = tmp_path / "out"
    first = subprocess.run(_analyze_cmd(phantom, out), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    proc = subprocess.Popen(_analyze_cmd(phantom, out, "--force"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hit = _wait_for(lambda: bool(_staging(out)), proc)
    if hit:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert hit, err
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


def test_two_runs_on_one_folder(phantom, tmp_path):
    """The second run is refused at once, naming the lock; the first completes."""
    out = tmp_path / "out"
    first = subprocess.Popen(_analyze_cmd(phantom, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: (out / outputs.LOCK_NAME).exists(), first)
    second = subprocess.run(_analyze_cmd(phantom, out), capture_output=True, text=True, timeout=300)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2, second.stderr
    line = _error_lines(second.stderr)
    assert str(out) in line and "another cardiacaiseg run" in line and outputs.LOCK_NAME in line
    assert f"pid {first.pid}" in line
    _assert_absent_or_complete(out)
    assert set(os.listdir(out)) == set(OUTPUT_FILES) | {"segmentation_es.seg.nrrd"}


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    """SIGKILL cannot run cleanup; the kernel still drops the lock, so it is never stale."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom CardiacAISegLib.outputs import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with outputs.output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with outputs.output_lock(out):
        assert (out / outputs.LOCK_NAME).read_text().strip() == str(os.getpid())
    assert os.listdir(out) == []  # the lock file is gone with the lock


def test_signals_are_held_while_writers_run():
    """Inside deferred_signals a SIGTERM waits for the next checkpoint instead of unwinding C++."""
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(outputs.Terminated):
        with outputs.deferred_signals() as checkpoint:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now; it only recorded the signal
            steps.append("after the signal")
            checkpoint()
            steps.append("after the checkpoint")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
def test_a_run_started_with_a_signal_ignored_keeps_ignoring_it(phantom, tmp_path, ignored):
    """A run under ``nohup`` ignores SIGHUP, a shell script's background job SIGINT. The handlers
    that hold signals while outputs are written turned them back on: closing the terminal
    cancelled a nohup run (exit 129, probe 57). Sent that signal all through the run, it now
    finishes and writes its results."""
    if not hasattr(signal, ignored):
        pytest.skip(f"no {ignored} on this platform")
    sig = getattr(signal, ignored)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "CardiacAISegLib.cli", "analyze", str(phantom[0]), "--labels",
                             str(phantom[1]), "--out", str(out), "--quiet"],
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sent = 0
    while proc.poll() is None:
        proc.send_signal(sig)
        sent += 1
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-500:]
    assert sent > 10 and (out / "results.json").is_file()


# ------------------------------------------------------------------------------ output folders
def _run(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_output_under_dev_null(phantom, capsys):
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", "/dev/null/out", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    assert "/dev/null/out" in line and "cannot create output folder" in line and "/dev/null is not a folder" in line
    assert "Errno" not in line


def test_output_folder_name_too_long_or_a_dangling_link(phantom, tmp_path, capsys):
    """--out with a 300-character name ended with exit 1 (an OSError from Path.exists), and --out
    a symbolic link whose target is gone read "File exists" (probe 57). Both exit 2 naming the
    path and why."""
    long = tmp_path / ("x" * 300)
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", long, "--quiet"])
    assert rc == 2 and "cannot be an output folder: File name too long" in _error_lines(err)
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone")
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", link, "--quiet"])
    line = _error_lines(err)
    assert rc == 2 and f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in line, line


def test_os_errors_of_other_commands_read_as_file_and_reason(capsys):
    """phantom --out /dev/null/x: "<path>: <reason>", not "[Errno 20] ...", and no traceback."""
    rc, err = _run(capsys, ["phantom", "--out", "/dev/null/x"])
    assert rc == 1
    assert _error_lines(err) == "error: /dev/null/x: Not a directory"


def test_output_under_a_file(phantom, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", f / "sub" / "out", "--quiet"])
    assert rc == 2
    assert f"{f} is not a folder" in _error_lines(err)
    assert f.read_text() == "mine"


def test_force_where_results_json_is_a_folder(phantom, tmp_path, capsys):
    """--force replaces output files; a folder in an output's place is refused, nothing is mixed."""
    out = tmp_path / "out"
    (out / "results.json").mkdir(parents=True)
    (out / "results.json" / "keep.txt").write_text("user data")
    (out / "report.png").write_bytes(b"old report")
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", out, "--force", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    assert str(out / "results.json") in line and "is a folder" in line
    assert sorted(os.listdir(out)) == ["report.png", "results.json"]
    assert (out / "report.png").read_bytes() == b"old report"
    assert (out / "results.json" / "keep.txt").read_text() == "user data"


def test_replace_outputs_is_all_or_nothing(tmp_path, monkeypatch):
    """A move that fails half-way puts the old outputs back and takes the new ones out."""
    out, stage = tmp_path / "out", tmp_path / "out" / ".cardiacaiseg-x"
    stage.mkdir(parents=True)
    old = {"results.json": b"old json", "results.csv": b"old csv", "segmentation_es.seg.nrrd": b"old es"}
    for n, b in old.items():
        (out / n).write_bytes(b)
    for n in ("results.json", "results.csv", "report.png"):
        (stage / n).write_bytes(b"new " + n.encode())
    real_replace = os.replace
    moved_in = []

    def failing_replace(src, dst):
        if Path(src).parent == stage:
            if len(moved_in) == 2:
                raise OSError(28, "No space left on device")
            moved_in.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        outputs.replace_outputs(stage, out, ("results.json", "results.csv", "segmentation_es.seg.nrrd"))
    monkeypatch.undo()
    assert len(moved_in) == 2
    assert {n: (out / n).read_bytes() for n in os.listdir(out) if not n.startswith(".")} == old

    paths = outputs.replace_outputs(stage, out, ("results.json", "results.csv", "segmentation_es.seg.nrrd"))
    assert sorted(paths) == ["report.png", "results.csv", "results.json"]
    # the stale ES segmentation of the old run does not stay beside the new outputs
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["report.png", "results.csv", "results.json"]
    assert (out / "results.json").read_bytes() == b"new results.json"


# ------------------------------------------------------------------------------- huge headers
def _nifti_header_only(path, shape, version=1):
    """A NIfTI whose header claims ``shape`` (float32) with no pixel data behind it."""
    import nibabel as nib

    hdr = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\x00" * 4  # header + extension flag, no voxels
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name, shape, version", [
    ("huge.nii", (65535, 65535, 100), 2),      # NIfTI-1 dims are int16: 65535 needs NIfTI-2
    ("huge.nii.gz", (32767, 32767, 100), 1),
    ("huge4d.nii.gz", (512, 512, 400, 100), 1),
])
def test_nifti_header_claiming_terabytes(tmp_path, capsys, name, shape, version):
    f = _nifti_header_only(tmp_path / name, shape, version)
    rc, err = _run(capsys, ["analyze", f, "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    image = np.prod(shape, dtype=np.int64) * 4
    assert f"{f}: too large for this machine" in line, line
    assert f"a {image / GIB:.1f} GiB image" in line and f"would need about {image * FACTOR / GIB:.1f} GiB" in line, line
    assert "MemoryError" not in err
    assert not (tmp_path / "out").exists()


def test_input_that_would_not_fit_a_6_gib_cap(tmp_path, capsys, monkeypatch):
    """The issue's case: a 1.26 GB (float32) series on a machine with 6 GiB free is refused up front."""
    shape = (256, 256, 16, 300)  # x, y, slices, frames: 1.26 GB as float32
    f = _nifti_header_only(tmp_path / "long.nii.gz", shape)
    monkeypatch.delenv(memory_check.LIMIT_ENV, raising=False)
    monkeypatch.setattr(memory_check, "available_bytes", lambda: 6 * GIB)
    rc, err = _run(capsys, ["analyze", f, "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    image = np.prod(shape) * 4
    assert f"a {image / GIB:.1f} GiB image" in line and f"about {image * FACTOR / GIB:.1f} GiB" in line
    assert "6.0 GiB is available" in line


def test_dicom_rows_65535(tmp_path, capsys):
    """A DICOM folder whose headers claim 65535 x 65535 images (the pixel data are tiny)."""
    import pydicom

    d = tmp_path / "dicom"
    d.mkdir()
    for i in range(3):
        write_dicom(d / f"{i}.dcm", ipp=(0, 0, 8 * i), instance=i + 1)
        ds = pydicom.dcmread(d / f"{i}.dcm")
        ds.Rows = ds.Columns = 65535
        ds.save_as(d / f"{i}.dcm")
    rc, err = _run(capsys, ["analyze", d, "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    need = 3 * 65535 * 65535 * 4 * FACTOR / GIB
    assert f"{d}: too large" in line and f"would need about {need:.1f} GiB" in line and "0.dcm" in line, line


def test_metaimage_header_claiming_274_gb(tmp_path, capsys):
    f = tmp_path / "big.mhd"
    f.write_text("ObjectType = Image\nNDims = 4\nDimSize = 4096 4096 128 32\nElementType = MET_SHORT\n"
                 "ElementSpacing = 1 1 8 1\nElementDataFile = big.raw\n")
    (tmp_path / "big.raw").write_bytes(b"\x00" * 64)
    rc, err = _run(capsys, ["analyze", f, "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    assert f"would need about {4096 * 4096 * 128 * 32 * 4 * FACTOR / GIB:.1f} GiB" in _error_lines(err)


def test_nrrd_header_claiming_terabytes(tmp_path, capsys):
    f = tmp_path / "big.nhdr"
    f.write_text("NRRD0004\ntype: float\ndimension: 4\nsizes: 20 40000 40000 30\nkinds: list domain domain domain\n"
                 "encoding: raw\nendian: little\ndata file: big.raw\n")
    rc, err = _run(capsys, ["analyze", f, "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    assert f"would need about {20 * 40000 * 40000 * 30 * 4 * FACTOR / GIB:.1f} GiB" in _error_lines(err)


def test_limit_from_the_environment_applies_to_real_sizes(phantom, tmp_path, capsys, monkeypatch):
    """The estimate is the image's true float32 size: a memory limit just below its need refuses the phantom."""
    import nibabel as nib

    image = phantom[0]
    true_bytes = int(np.prod(nib.load(str(image)).shape)) * 4
    assert memory_check.estimate_bytes(image) == (true_bytes, image)
    monkeypatch.setenv(memory_check.LIMIT_ENV, str(true_bytes * FACTOR * 0.99 / GIB))
    rc, err = _run(capsys, ["analyze", image, "--labels", phantom[1], "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    assert f"{image}: too large" in _error_lines(err) and memory_check.LIMIT_ENV in err
    monkeypatch.setenv(memory_check.LIMIT_ENV, str(true_bytes * FACTOR * 1.01 / GIB))
    memory_check.check_input_size(image)  # just enough: no error
    monkeypatch.setenv(memory_check.LIMIT_ENV, "lots")
    with pytest.raises(CardiacInputError, match="positive number of GiB"):
        memory_check.limit_bytes()


def test_dicom_estimate_matches_the_real_series(shared_data):
    """Sunnybrook: 240 images of 256 x 256 -> 240 * 256 * 256 * 4 bytes, from headers only."""
    folder = shared_data / "sunnybrook" / "SC-HF-I-1_dicom"
    n_files = len([f for f in folder.iterdir() if f.suffix == ".dcm"])
    need, _ = memory_check.estimate_bytes(folder)
    assert need == n_files * 256 * 256 * 4


# ------------------------------------------------------------------------- the outer guard
def test_device_cuda_without_cuda(phantom, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, err = _run(capsys, ["analyze", phantom[0], "--out", tmp_path / "out", "--device", "cuda", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    assert line.startswith("error: --device:") and "CUDA" in line and "--device cpu" in line
    assert not (tmp_path / "out").exists()


def test_unforeseen_exception_in_a_reader_names_the_file(phantom, tmp_path, capsys, monkeypatch):
    """An exception no reader converted still ends as one line naming the file being read."""
    from CardiacAISegLib.readers import volume

    def broken(data):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(volume, "nifti_to_kji", broken)
    rc, err = _run(capsys, ["analyze", phantom[0], "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    line = _error_lines(err)
    assert line == f"error: {phantom[0]}: cannot be read (IndexError: tuple index out of range) (run with --debug for the traceback)"
    assert not (tmp_path / "out").exists()


def test_os_error_in_a_reader_names_the_file(phantom, tmp_path, capsys, monkeypatch):
    from CardiacAISegLib.readers import volume

    def unreadable(data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(volume, "nifti_to_kji", unreadable)
    rc, err = _run(capsys, ["analyze", phantom[0], "--out", tmp_path / "out", "--quiet"])
    assert rc == 2
    assert _error_lines(err).startswith(f"error: {phantom[0]}: cannot be read (Permission denied)")


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_exception_one_line_exit_1(phantom, tmp_path, capsys, monkeypatch, debug):
    from CardiacAISegLib import analysis

    def bug(self, *a, **k):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(analysis.Analysis, "run", bug)
    argv = ["analyze", phantom[0], "--labels", phantom[1], "--out", tmp_path / "out", "--quiet"]
    rc, err = _run(capsys, (["--debug"] if debug else []) + argv)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == ["error: ZeroDivisionError: float division by zero" + ("" if debug else " (run with --debug for the traceback)")]
    assert ("Traceback" in err) == debug
    assert not (tmp_path / "out").exists()


def test_debug_after_the_command(phantom, tmp_path, capsys, monkeypatch):
    from CardiacAISegLib import analysis

    monkeypatch.setattr(analysis.Analysis, "run", lambda self, *a, **k: 1 / 0)
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", tmp_path / "out", "--quiet", "--debug"])
    assert rc == 1 and "Traceback" in err


def test_memory_error_is_one_clear_line(phantom, tmp_path, capsys, monkeypatch):
    from CardiacAISegLib import analysis

    def out_of_memory(self, *a, **k):
        raise MemoryError()

    monkeypatch.setattr(analysis.Analysis, "run", out_of_memory)
    rc, err = _run(capsys, ["analyze", phantom[0], "--labels", phantom[1], "--out", tmp_path / "out", "--quiet"])
    assert rc == 1
    line = _error_lines(err)
    assert "out of memory" in line and str(phantom[0]) in line
