"""Is this file DICOM? A cheap look, shared by the folder router and the memory check (a leaf
module, so neither needs the DICOM reader to ask)."""
from pathlib import Path


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
