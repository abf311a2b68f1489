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


# A reader's hint for a whole exam, as a GUI reads stress and rest ("--series stress --rest EXAM"
# gave "a file of that series in the 'Study' field stress --rest /abs/path"; probe 68). A folder
# name may hold spaces: the rest's folder runs to the next flag or the end of the hint.
_STRESS_WITH_REST = re.compile(r"--series (\S+) --rest .+? --rest-series (\S+)")
# the folder ends where the readers' sentence goes on (" (left out", " gives", ";") or at the end,
# not at a ")" of its own ("Exam (2)" was cut to "Exam (2"; review of session 41)
_ROLE_WITH_REST = re.compile(r"--series (\S+) --rest (.+?)(?= \(left out| gives |;|\)$|$)")
_PYTHON_SERIES = re.compile(r" \(series= in Python: [^)]*\)")
# a series by its UID ("give --series 1.2.826... to read the copy") before one by its number: the
# number's pattern took the UID's first digit, "a file of series 1" (the localiser; probe 87)
_SERIES_UID = re.compile(r"--series (\d+(?:\.\d+)+)(?!\w|\.\d)")
_SERIES_NUMBER = re.compile(r"--series (\d+)(?!\w|\.\d)")
# "give the stress series as the input and the rest with --rest"
_WITH_REST = re.compile(r"\bwith --rest(?![\w-])")
# "give --aif FOLDER" (an unpaired AIF series): the placeholder reads wrong after a box's name
_PLACEHOLDER = re.compile(r"(?<![\w-])(--[a-z][a-z-]*) (FILE|FOLDER|PATH)\b")
# "give --kind cine" / "--kind cine contradicts": a choice, not a file, in a GUI's kind field
_GIVE_KIND = re.compile(r"\bgive --kind (cine|perfusion)\b")
_KIND_VALUE = re.compile(r"(?<![\w-])--kind (cine|perfusion)\b")
# "drop --kind to use the detected kind": a combo box is set, not dropped (probe 92)
_DROP_KIND = re.compile(r"\bdrop --kind\b")
_GIVE_CONVENTION = re.compile(r"\b(?:give|choose) --label-convention (acdc|ukbb|internal)\b")
_CONVENTION_VALUE = re.compile(r"(?<![\w-])--label-convention (acdc|ukbb|internal)\b")


def in_front_end_terms(text, fields, study_place, rest_place, keep_python=False, rest=False, rest_takes_folder=True,
                       kind_auto="its automatic choice"):
    """A reader's message (it speaks to the CLI: "choose one with --series", "give --dt") put in
    a GUI's own terms: ``fields`` {flag: what names that setting there}, ``study_place`` and
    ``rest_place`` where a file of the study's / the rest's series goes ("the 'Study' field").
    One list of phrases for the web page and the Slicer module, so that a hint the readers add
    reads right in both. ``keep_python``: keep "(series= in Python: ...)" (Slicer's console).
    ``rest``: the message is about the rest series, whose series go in ``rest_place`` (a rest
    refusal said the rest's box, then "a file of series 30 in the 'Study' field"; review of
    session 41). ``rest_takes_folder``: the rest's place reads an exam folder (the page's field
    does; the module's rest box is a node selector, where a folder cannot go). ``kind_auto``:
    the kind field's choice that leaves the kind to the data ("drop --kind" reads "set it to ...")."""
    series_place = rest_place if rest else study_place
    text = _STRESS_WITH_REST.sub(lambda m: f"a file of series {m[1]} in {study_place} and a file of series {m[2]} in "
                                           f"{rest_place}", text)
    text = _ROLE_WITH_REST.sub(lambda m: f"a file of the {m[1]} series in {study_place} and " + (
        f"{m[2]} in {rest_place}" if rest_takes_folder else f"a file of the rest series (in {m[2]}) in {rest_place}"), text)
    if not keep_python:
        text = _PYTHON_SERIES.sub("", text)
    text = _SERIES_UID.sub(lambda m: f"a file of the series with UID {m[1]} in {series_place}", text)
    text = _SERIES_NUMBER.sub(lambda m: f"a file of series {m[1]} in {series_place}", text)
    text = _WITH_REST.sub(f"in {rest_place}", text)
    text = text.replace("the files and flags", "the files and fields")
    text = _PLACEHOLDER.sub(lambda m: f"that {'folder' if m[2] == 'FOLDER' else 'file'} in {m[1]}", text)
    if "--kind" in fields:
        text = _KIND_VALUE.sub(r"--kind set to \1", _GIVE_KIND.sub(r"set --kind to \1", text))
        text = _DROP_KIND.sub(f"set --kind to {kind_auto}", text)
    if "--label-convention" in fields:
        # "give --label-convention ukbb" -> "set the 'Label values' box to ukbb" (probe 96)
        text = _CONVENTION_VALUE.sub(r"--label-convention set to \1", _GIVE_CONVENTION.sub(r"set --label-convention to \1", text))
    return with_flags_renamed(text, fields)


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
