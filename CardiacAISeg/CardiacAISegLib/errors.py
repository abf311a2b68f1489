"""Errors that name the file and the problem, so a user can act on them."""


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
