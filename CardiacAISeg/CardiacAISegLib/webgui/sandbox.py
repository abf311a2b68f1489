"""The data folder of the web GUI: every path the page sends must lie inside it.

The browser is a remote client. It names files by text; the server resolves that text against
the data folder the user chose when starting ``cardiacaiseg gui`` and refuses anything that
ends up outside it, whatever the route: ``..``, an absolute path, a symbolic link pointing
out, or a detached header (MetaImage ``ElementDataFile``, NRRD ``data file``) that names a data
file elsewhere. Pure Python, no trame: unit-testable on its own.
"""
import os
from pathlib import Path

from ..errors import CardiacInputError

# How far the file chooser looks, and how much it lists: enough for a study folder tree,
# bounded so a huge data folder cannot stall the page; a folder of more files than
# FOLDER_FILES_MAX (a DICOM series or exam) is listed as the folder.
LIST_DEPTH = 3
LIST_MAX = 400
FOLDER_FILES_MAX = 40
CHECK_MAX = 20000
_DETACHED = (".mhd", ".nhdr")


class DataFolder:
    """The one folder the page may read from and write into."""

    def __init__(self, root):
        root_path = Path(os.path.expanduser(os.fspath(root)))
        if not root_path.is_dir():
            raise CardiacInputError(root, "data folder not found (give an existing folder with --data)")
        self.root = root_path.resolve()

    def __repr__(self):
        return f"DataFolder({str(self.root)!r})"

    def contains(self, path):
        """True when ``path`` (already resolved) is the root or lies below it."""
        path = Path(path)
        return path == self.root or self.root in path.parents

    def _refuse(self, text):
        return CardiacInputError(text, f"outside the data folder {self.root}: the web GUI reads and writes only inside it")

    def resolve(self, text, must_exist=True):
        """The absolute, symlink-free path of ``text`` (relative to the root, or absolute).

        Raises ``CardiacInputError`` when it is empty, lies outside the data folder (after
        following links) or, with ``must_exist``, does not exist.
        """
        text = "" if text is None else str(text).strip()
        if not text:
            raise CardiacInputError("<path>", "no file or folder given")
        if "\x00" in text:
            raise CardiacInputError(repr(text), "not a valid path")
        p = Path(os.path.expanduser(text))
        if not p.is_absolute():
            p = self.root / p
        resolved = p.resolve()
        if not self.contains(resolved):
            raise self._refuse(text)
        if must_exist and not resolved.exists():
            raise CardiacInputError(text, "file or folder not found in the data folder")
        return resolved

    def resolve_input(self, text):
        """``resolve`` for something a reader will open, plus the reader's own reach: links
        inside a folder and the data files of detached headers must stay inside too."""
        path = self.resolve(text)
        self.check_reach(path, text)
        return path

    def resolve_output(self, text):
        """A folder to write into: inside the data folder, created by the writer if missing;
        an existing path must be a folder."""
        path = self.resolve(text, must_exist=False)
        if path.exists() and not path.is_dir():
            raise CardiacInputError(text, "exists and is not a folder")
        return path

    def relative(self, path):
        """``path`` as the page shows it: relative to the root, '/'-separated ('.' for the root)."""
        rel = Path(path).resolve().relative_to(self.root).as_posix()
        return rel or "."

    def check_reach(self, path, text=None):
        """Refuse ``path`` if reading it would read a file outside the data folder."""
        text = text or str(path)
        path = Path(path)
        if path.is_dir():
            seen = 0
            for folder, dirs, files in os.walk(path, followlinks=False):
                for name in dirs + files:
                    seen += 1
                    if seen > CHECK_MAX:
                        return
                    entry = Path(folder) / name
                    if entry.is_symlink() and not self.contains(entry.resolve()):
                        raise self._refuse(f"{text} ({self.relative_text(entry)} links outside)")
                    if name.lower().endswith(_DETACHED) and entry.is_file():
                        self._check_header(entry, text)
        elif path.name.lower().endswith(_DETACHED):
            self._check_header(path, text)

    def shown(self, path):
        """A path an error names, as the page names its files (relative to the data folder; the
        readers' absolute server paths beside the typed ones confused, probe 63); anything
        else (a field, a path outside) as it is."""
        try:
            return self.relative(path) if path is not None and Path(str(path)).is_absolute() else path
        except (ValueError, OSError):
            return path

    def relative_text(self, entry):
        try:
            return entry.relative_to(self.root).as_posix()
        except ValueError:
            return str(entry)

    def _check_header(self, header, text):
        for target in detached_data_files(header):
            if not self.contains(target.resolve()):
                raise self._refuse(f"{text} (its header names the data file {target})")

    def listing(self, depth=LIST_DEPTH, limit=LIST_MAX, folder_files=FOLDER_FILES_MAX):
        """Relative paths of folders ('name/') and files under the root, sorted, hidden
        entries and links that leave the folder left out. Returns (entries, truncated,
        collapsed).

        Folders come first: a DICOM export is opened as its folder, and one exam's 800-1300
        files listed one by one filled the list before the next exam's folder appeared (probe
        87). A folder of more than ``folder_files`` files, most of them named as DICOM files
        are (no extension, .dcm, .ima), is listed as the folder alone (its files can still be
        typed); ``collapsed`` names those folders. At most ``CHECK_MAX`` entries are looked at."""
        folders, files, collapsed, truncated = [], [], [], False
        seen = 0

        def visible(entry):
            if entry.name.startswith("."):
                return False
            return not (entry.is_symlink() and not self.contains(Path(entry.path).resolve()))

        def walk(folder, level):
            nonlocal seen, truncated
            if seen > CHECK_MAX:
                truncated = True
                return
            try:
                items = sorted((e for e in os.scandir(folder) if visible(e)), key=lambda e: e.name.lower())
            except OSError:
                return
            seen += len(items)
            here = [e for e in items if e.is_file()]
            if (len(here) > folder_files and folder != self.root
                    and sum(_dicom_like(e.name) for e in here) >= 0.8 * len(here)):
                collapsed.append(Path(folder).relative_to(self.root).as_posix() + "/")
            else:
                files.extend(Path(e.path).relative_to(self.root).as_posix() for e in here)
            for e in items:
                if e.is_dir():
                    folders.append(Path(e.path).relative_to(self.root).as_posix() + "/")
                    if level + 1 < depth and not e.is_symlink():
                        walk(e.path, level + 1)

        walk(self.root, 0)
        entries = folders[:limit]
        entries += files[:max(0, limit - len(entries))]
        truncated = truncated or len(folders) + len(files) > limit
        entries.sort(key=str.lower)
        return entries, truncated, [c for c in collapsed if c in entries]


def _dicom_like(name):
    """A file name as DICOM exports write them: no extension (IM00001, a UID), .dcm, .ima, or a
    number after the dot (a UID's last part)."""
    suffix = Path(name).suffix.lower()
    return suffix in ("", ".dcm", ".ima", ".dicom") or suffix[1:].isdigit()


def detached_data_files(header):
    """Data files a MetaImage (.mhd) or NRRD (.nhdr) header points at (absolute Paths)."""
    header = Path(header)
    try:
        with open(header, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return []
    lines = head.decode("latin-1", "replace").splitlines()
    found = []
    if header.name.lower().endswith(".mhd"):
        for n, line in enumerate(lines):
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "ElementDataFile":
                continue
            value = value.strip()
            if value.upper() == "LOCAL":
                break
            if value.upper().startswith("LIST"):
                found += [v.strip() for v in lines[n + 1:] if v.strip()]
            else:
                # "pattern min max step" lists: the folder of the pattern is what matters.
                found.append(value.split()[0] if "%" in value else value)
            break
    else:
        for n, line in enumerate(lines):
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if not sep or key not in ("data file", "datafile"):
                continue
            value = value.strip()
            if value.upper().startswith("LIST"):
                found += [v.strip() for v in lines[n + 1:] if v.strip()]
            else:
                found.append(value.split()[0] if "%" in value else value)
            break
    out = []
    for name in found:
        p = Path(name)
        out.append(p if p.is_absolute() else header.parent / p)
    return out
