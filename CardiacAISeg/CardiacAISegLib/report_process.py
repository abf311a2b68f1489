"""report.png drawn by a child process that was started, and had imported matplotlib, while
the run was still loading and segmenting.

Drawing the report is the largest single step of a cold `cardiacaiseg analyze` (about 0.5 s of
1.6 s on the shipped sample, half of it importing matplotlib and loading its fonts; issue 14).
The CLI forks this process first thing, so those imports run on the second core while the main
process imports the readers, reads the images and runs the network. At the end the main process
hands over only what the report shows (``report.report_arguments``: the drawn frames' images,
labels and values, a few MB) and writes the other outputs while the child draws.

Only where ``os.fork`` is safe and cheap (Linux); elsewhere, and whenever the child is gone,
the report is drawn in the main process as before: same function, same picture. The child
reads its one job from a pipe and exits at end of file, so a main process that dies (even by
SIGKILL) leaves no orphan behind.
"""
import os
import pickle
import signal
import struct
import sys

_LENGTH = struct.Struct("<Q")


def fork_available():
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd):
    (n,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size))
    return pickle.loads(_read_exact(fd, n))


def _warm_up():
    """Import the renderer and draw a tiny figure with text: the font file and the Agg canvas
    are loaded on first use, not on import."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import report  # noqa: F401  (its module-level imports)

    fig = Figure(figsize=(1, 1), dpi=20)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, "warm", weight="bold")
    fig.savefig(io.BytesIO(), format="png")


def _child(job_fd, answer_fd):
    import gc

    # One job, then os._exit: collecting garbage during the matplotlib import and the drawing
    # would be work for nothing (tens of thousands of new objects trigger full collections).
    gc.disable()
    # The parent's handlers (deferred signals, tqdm) are not this process's: Ctrl-C in a
    # terminal reaches the whole group, and the parent cleans up the stage folder.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _warm_up()
    except Exception:   # noqa: BLE001 - the job below reports the same failure with its message
        pass
    try:
        job = _receive(job_fd)
    except EOFError:    # the parent drew the report itself, or is gone
        return
    from .report import write_report

    try:
        write_report(**job)
        _send(answer_fd, None)
    except BaseException as error:   # noqa: BLE001 - handed to the parent, which raises it
        try:   # the error itself (an OSError stays an OSError for the CLI's message), else its text
            _send(answer_fd, error)
        except Exception:   # noqa: BLE001 - not picklable
            _send(answer_fd, f"{type(error).__name__}: {error}")


class ReportProcess:
    """A child process ready to draw one report.png. ``draw(path, arguments)`` hands it the
    job; ``wait()`` returns when the file is written (raising the child's error if it failed);
    ``close()`` ends an unused or unfinished child. When the child cannot be used, ``draw`` or
    ``wait`` returns False and the caller draws in-process."""

    def __init__(self):
        self.pid = None
        self._job_w = self._answer_r = None
        self._busy = False
        self._answered = False
        if not fork_available():
            return
        job_r, job_w = os.pipe()
        answer_r, answer_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:   # no process to spare (EAGAIN, ENOMEM): the report is drawn in-process
            for fd in (job_r, job_w, answer_r, answer_w):
                os.close(fd)
            return
        if pid == 0:   # child
            code = 0
            try:
                os.close(job_w)
                os.close(answer_r)
                _child(job_r, answer_w)
            except BaseException:   # noqa: BLE001
                code = 1
            finally:
                # no atexit handlers, no flushing of buffers inherited from the parent
                os._exit(code)
        os.close(job_r)
        os.close(answer_w)
        self.pid, self._job_w, self._answer_r = pid, job_w, answer_r

    def draw(self, arguments):
        """Hand ``write_report(**arguments)`` to the child; False when there is no child to take it."""
        if self.pid is None or self._busy:
            return False
        try:
            _send(self._job_w, arguments)
        except (BrokenPipeError, OSError):
            self.close()
            return False
        self._busy = True
        return True

    def wait(self):
        """Wait for the report handed over by ``draw``: True when it is written; False when the
        child died without answering (killed, out of memory: the caller then draws the report
        itself); raises the error the child met drawing it (RuntimeError with its text when the
        error itself could not be sent)."""
        try:
            answer = _receive(self._answer_r)
            self._answered = True
        except EOFError:
            return False
        finally:
            self._busy = False
            self.close()
        if isinstance(answer, BaseException):
            raise answer
        if answer is not None:
            raise RuntimeError(f"report.png: {answer}")
        return True

    def close(self):
        """End the child (if still running) and reap it; safe to call twice."""
        if self.pid is None:
            return
        for fd in (self._job_w, self._answer_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if not self._answered:
            # unused (the run failed or wrote no report) or drawing a report nobody will move
            # into place: no reason to let it finish its imports or its picture
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
