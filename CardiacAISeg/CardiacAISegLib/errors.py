"""Errors that name the file and the problem, so a user can act on them."""
import re

# An `analyze` flag in a message ("give --dt"): the readers speak to the CLI; the batch, the
# rest series and the web GUI name the same setting their own way.
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)(?![\w-])")


def flags_named(text):
    """The `analyze` flags ``text`` names, in order, each once ("--dt", "--series")."""
    return list(dict.fromkeys(_FLAG.findall(text)))


def with_flags_renamed(text, names):
    """``text`` with each flag found in ``names`` ({"--dt": "--rest-dt"}) replaced; others kept."""
    return _FLAG.sub(lambda m: names.get(m.group(1), m.group(1)), text)


class CardiacInputError(ValueError):
    """Bad input: a file that cannot be read, wrong dimensions, missing tags, NaNs, ...

    ``str(err)`` is always ``"<path>: <problem>"`` so the CLI, the Slicer module and the
    browser GUI can show it as it is.
    """

    def __init__(self, path, problem):
        self.path = str(path) if path is not None else "<input>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputExistsError(FileExistsError):
    """An output would overwrite the user's files; pass force=True / --force to allow it."""


class CancelledError(RuntimeError):
    """Long work (loading, inference, training) was cancelled by the user."""


class OutputLockedError(CardiacInputError):
    """Another run holds the output folder's lock (``outputs.output_lock``)."""
