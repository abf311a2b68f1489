"""Progress and cancellation for long work, shared by the CLI (tqdm), Slicer (Qt) and the web GUI.

A stage calls ``progress(done, total, message)``; the callback may raise ``CancelledError``
(or set the ``Progress.cancelled`` flag) to stop the work between steps.
"""
from .errors import CancelledError


class Progress:
    def __init__(self, callback=None):
        self.callback = callback
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __call__(self, done, total, message=""):
        if self.cancelled:
            raise CancelledError(message or "cancelled")
        if self.callback is not None:
            self.callback(done, total, message)
        if self.cancelled:
            raise CancelledError(message or "cancelled")


def as_progress(progress):
    """Accept None, a plain callable or a Progress."""
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)


def tqdm_progress(desc="", disable=False):
    """A Progress that drives a tqdm bar (the CLI's progress bar)."""
    from tqdm import tqdm

    bar = {"bar": None}

    def cb(done, total, message):
        if bar["bar"] is None or bar["bar"].total != total:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(total=total, desc=desc, disable=disable, leave=False)
        bar["bar"].set_postfix_str(message[:40])
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()
            bar["bar"] = None

    return Progress(cb)
