"""What a file is, from its name or its first bytes: DICOM or not, which volume format, a
MetaImage's text header. A cheap look shared by the readers, the folder router and the memory
check (a leaf module, so the memory check needs no reader to ask)."""
import sys
from pathlib import Path

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd", ".mha")


def volume_suffix(path):
    """The format suffix of a volume file (".seq.nrrd" and ".nii.gz" whole), lower case."""
    name = Path(path).name.lower()
    for suffix in (".seq.nrrd", ".nii.gz") + VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


# Suffixes an image file may end in, longest first so that ".seq.nrrd" and ".nii.gz" go whole:
# the volume formats, Analyze's header and data, and DICOM files as scanners and PACS name them
IMAGE_FILE_SUFFIXES = (".seq.nrrd", ".nii.gz") + VOLUME_SUFFIXES + (".hdr", ".img", ".dcm", ".ima")


def image_stem(text):
    """``text`` (a file name or a path written as text) without its image file suffix: the
    study's name as the CLI, the batch and the web page give it. Text with no such suffix (a
    folder) comes back as it is."""
    lower = str(text).lower()
    for suffix in IMAGE_FILE_SUFFIXES:
        if lower.endswith(suffix):
            return str(text)[: -len(suffix)]
    return str(text)


def metaimage_fields(head):
    """``key = value`` fields of a MetaImage header (bytes), up to ElementDataFile or the binary
    data of a .mha."""
    fields = {}
    for line in head.split(b"\n"):
        text = line.decode("latin-1").strip()
        if "=" not in text:
            if text:
                break  # binary data of a .mha
            continue
        key, value = (s.strip() for s in text.split("=", 1))
        fields[key] = value
        if key == "ElementDataFile":
            break
    return fields


def looks_like_dicom(path):
    """A .dcm/.ima name, or 'DICM' at byte 128 (files without the preamble are found by the full reader)."""
    if Path(path).suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# Archives a PACS, a web viewer or a colleague hands over: the engine reads folders of files, so
# an archive is named as one, with how to unpack it, instead of "unknown file format". The first
# bytes decide (a download often loses its name's suffix); gzip is an archive only when the name
# says .tar.gz/.tgz (.nii.gz is gzip too).
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "ZIP", "unzip {name} -d {stem}"),
                  (b"7z\xbc\xaf\x27\x1c", "7-Zip", "7z x {name} -o{stem}"),
                  (b"Rar!\x1a\x07", "RAR", "unrar x {name} {stem}/"))
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def archive_kind(path):
    """(kind, how to unpack it) for an archive file (ZIP, 7-Zip, RAR, tar), else None."""
    path = Path(path)
    name = path.name.lower()
    for suffix in _TAR_SUFFIXES:
        if name.endswith(suffix):
            stem = path.name[:-len(suffix)] or "study"
            return "tar", f"mkdir {stem} && tar -xf {path.name} -C {stem}"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    for magic, kind, how in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return kind, how.format(name=path.name, stem=path.stem or "study")
    return None


# Optional packages pydicom imports only to download its own test files (pydicom.data): about
# 0.09 s of a cold run's 1.5 s (requests, certifi, tqdm; issue 14), for a feature never used here.
_PYDICOM_DOWNLOAD_EXTRAS = ("requests", "tqdm")


def import_pydicom():
    """pydicom, imported without the packages its test-data downloader would pull in.

    While pydicom is first imported, those names read as not installed (pydicom then only
    notes that downloads are unavailable); afterwards they import normally for anyone else.
    """
    if "pydicom" in sys.modules:
        return sys.modules["pydicom"]
    blocked = [name for name in _PYDICOM_DOWNLOAD_EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None   # "import name" raises ImportError
    try:
        import pydicom
        import pydicom.pixels    # the lazy submodules that reach pydicom.data, while blocked
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return pydicom
