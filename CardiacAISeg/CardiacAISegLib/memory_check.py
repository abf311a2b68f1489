"""Refuse inputs too large for this machine before their pixel data are read.

A header can claim any size: NIfTI ``dim`` 65535 x 65535 x 100, DICOM ``Rows`` 65535, a 274 GB
MetaImage. Reading such a file ends in a bare ``MemoryError`` (or the kernel's OOM killer) after
minutes. Here the memory a run would need is estimated from the headers alone:

    need = float32 image bytes x PIPELINE_FACTOR

and the input is refused, naming the file and ``need``, when that is more than the memory this
process can get: the smallest of the kernel's MemAvailable, the cgroup's limit less its usage
(containers, ``systemd-run -p MemoryMax``) and ``ulimit -v`` less the address space in use.
``CARDIACAISEG_MEMORY_GIB`` (a number of GiB) replaces that limit where the user knows better.

``PIPELINE_FACTOR`` (7) is measured, not guessed: `cardiacaiseg analyze` of a 30-frame x 14-slice
256 x 256 cine (0.11 GB as float32, MetaImage, default network) peaks at 1.0 GB resident, of which
~0.25 GB is the libraries (numpy, torch, nibabel) -> ~6.8 x the image; the issue's 1.26 GB input
peaked at 8.5 GB (~7 x). The pipeline keeps the image, its resampled frames, the network input and
the report images at once; when it learns to work frame by frame this factor should drop with it.

Estimates (float32 bytes = voxels x 4):
- NIfTI / Analyze: the header's dims (nibabel reads only the header here);
- NRRD: the header's ``sizes`` (pynrrd ``read_header``);
- MetaImage: ``DimSize`` x ``ElementNumberOfChannels``;
- DICOM: ``Rows`` x ``Columns`` x ``NumberOfFrames`` per file (``stop_before_pixels``; above
  ``DICOM_HEADER_SAMPLE`` files an even sample of headers, scaled to the file count);
- a folder: the sum over its image files (DICOM found recursively).
Files whose header cannot be parsed count as unknown (0 bytes): the reader reports them.
"""
import os
from pathlib import Path

from .errors import CardiacInputError
from .readers.sniff import VOLUME_SUFFIXES, import_pydicom, looks_like_dicom, metaimage_fields, volume_suffix

GIB = 1024 ** 3
PIPELINE_FACTOR = 7
FLOAT32_BYTES = 4
LIMIT_ENV = "CARDIACAISEG_MEMORY_GIB"
# a DICOM folder with more files than this is estimated from an even sample of their headers
DICOM_HEADER_SAMPLE = 1000

# Analyze (.hdr/.img) is read by the perfusion reader; it counts here too
_VOLUME_SUFFIXES = VOLUME_SUFFIXES + (".seq.nrrd", ".hdr")


def _product(dims):
    n = 1
    for d in dims:
        d = int(d)
        if d < 0:
            return None  # a corrupt header: let the reader say so
        n *= max(d, 1)
    return n


# --- per-format header estimates (voxels, or None when unknown) -------------------------------
def _nifti_voxels(path):
    from .readers.nifti import header_shape

    shape = header_shape(path)   # the common headers without importing nibabel (issue 14)
    if shape is not None:
        return _product(shape)
    import nibabel as nib

    try:
        img = nib.load(str(path))  # header only: the data are read lazily
        return _product(img.header.get_data_shape())
    except Exception:  # not a NIfTI the header parser accepts: the reader gives the reason
        return None


def _nrrd_voxels(path):
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        return _product(header["sizes"])
    except Exception:
        return None


def _metaimage_voxels(path):
    try:
        with open(path, "rb") as f:
            fields = metaimage_fields(f.read(64 * 1024))  # the text header of a .mha precedes its binary data
    except OSError:
        return None
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return None
    n = _product(dims)
    return None if n is None else n * max(channels, 1)


_DICOM_SIZE_TAGS = ("Rows", "Columns", "NumberOfFrames")


def _dicom_voxels(path):
    pydicom = import_pydicom()
    try:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_DICOM_SIZE_TAGS))
        except pydicom.errors.InvalidDicomError:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(_DICOM_SIZE_TAGS), force=True)
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if rows is None or cols is None:
            return None
        frames = ds.get("NumberOfFrames", 1) or 1
        return _product((rows, cols, frames))
    except Exception:  # not DICOM, or a header pydicom cannot parse: the reader reports it
        return None


def file_voxels(path):
    """Voxels a single image file would give, from its header; None when unknown."""
    suffix = volume_suffix(path)
    if suffix in (".nii", ".nii.gz", ".hdr", ".img"):
        if suffix == ".img":
            path = Path(path).with_suffix(".hdr")
            if not path.is_file():
                return None
        return _nifti_voxels(path)
    if suffix in (".nrrd", ".nhdr", ".seq.nrrd"):
        return _nrrd_voxels(path)
    if suffix in (".mhd", ".mha"):
        return _metaimage_voxels(path)
    return _dicom_voxels(path)


def _folder_estimate(folder, dicom=True):
    """(voxels, the largest file) summed over the image files of a folder (DICOM ones only with
    ``dicom``: the DICOM reader checks the one series it loads from the headers it parses)."""
    from itertools import islice

    total, largest, largest_n = 0, None, -1
    volumes = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and volume_suffix(f) in _VOLUME_SUFFIXES]
    not_dicom = _VOLUME_SUFFIXES + (".img", ".raw", ".zraw", ".json", ".cfg", ".csv", ".txt")

    def candidates():
        return (f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".") and volume_suffix(f) not in not_dicom)

    # like the reader, a look at the first files decides whether this is a DICOM folder at all, so
    # a wrong folder (a home directory) is not walked file by file
    dicoms = []
    if dicom and any(looks_like_dicom(f) for f in islice(candidates(), 200)):
        dicoms = sorted(f for f in candidates() if looks_like_dicom(f))
    for f in volumes:
        n = file_voxels(f) or 0
        total += n
        if n > largest_n:
            largest, largest_n = f, n
    if dicoms:
        step = max(1, len(dicoms) // DICOM_HEADER_SAMPLE)
        sample = dicoms[::step]
        sampled = 0
        for f in sample:
            n = _dicom_voxels(f) or 0
            sampled += n
            if n > largest_n:
                largest, largest_n = f, n
        total += sampled * len(dicoms) // len(sample)
    return total, largest


def estimate_bytes(path, dicom=True):
    """(bytes of the float32 image array, the file that dominates it) for a file or folder;
    DICOM files count only with ``dicom``."""
    path = Path(path)
    if path.is_dir():
        voxels, largest = _folder_estimate(path, dicom)
        return voxels * FLOAT32_BYTES, largest or path
    if not path.is_file():
        # a named pipe (a hung network share) waits for a writer: a batch sizing its workers from
        # the headers blocked every study behind it (probe 83); the reader refuses it by name
        return 0, path
    if not dicom and volume_suffix(path) not in _VOLUME_SUFFIXES + (".img",):
        return 0, path
    return (file_voxels(path) or 0) * FLOAT32_BYTES, path


# --- the limit ----------------------------------------------------------------------------------
def _read_int(path):
    try:
        text = Path(path).read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _vm_size():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_bytes():
    """Memory this process can still get (None when the system does not say)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),                  # cgroup v2
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cg_max, cg_now = _read_int(limit), _read_int(usage)
        if cg_max is not None and cg_now is not None and cg_max < 1 << 60:  # v1 says "no limit" with a huge number
            candidates.append(max(cg_max - cg_now, 0))
            break
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            candidates.append(max(soft - _vm_size(), 0))
    except (ImportError, ValueError, OSError):
        pass
    return min(candidates) if candidates else None


def limit_bytes():
    """(bytes a run may use, how that was decided); (None, ...) when unknown: then no check."""
    env = os.environ.get(LIMIT_ENV, "").strip()
    if env:
        try:
            gib = float(env)
        except ValueError:
            gib = -1.0
        if not gib > 0:
            raise CardiacInputError(LIMIT_ENV, f"expected a positive number of GiB, got {env!r}")
        return int(gib * GIB), f"{LIMIT_ENV}={env}"
    avail = available_bytes()
    return avail, "the memory available to this program"


def _gib(n):
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.0f} MiB"


def needed_bytes(path):
    """(bytes a run on ``path`` would need, the file that dominates) from headers only."""
    image, culprit = estimate_bytes(path)
    return image * PIPELINE_FACTOR, culprit


def refuse_if_too_large(path, image_bytes, culprit=None):
    """Raise CardiacInputError naming ``path`` when an image of ``image_bytes`` (float32) would need
    more memory to analyse than this process can get."""
    if image_bytes <= 0:
        return
    limit, why = limit_bytes()
    if limit is None:
        return
    need = image_bytes * PIPELINE_FACTOR
    if need > limit:
        where = "" if culprit is None or Path(culprit) == Path(path) else f" (the largest file: {culprit})"
        raise CardiacInputError(path, f"too large for this machine: its header describes a {_gib(image_bytes)} image (as float32), "
                                      f"which would need about {_gib(need)} of memory to analyse; {_gib(limit)} is "
                                      f"available ({why}){where}. Crop or split the series, or run it on a machine "
                                      f"with more memory (or set {LIMIT_ENV})")


def check_input_size(path, *more_paths, dicom=True):
    """Raise CardiacInputError naming the file when a run on it would need more memory than it can get.

    Called by ``readers.load_study`` after the existence checks and before any pixel data are
    read, with ``dicom=False``: the DICOM reader checks the series it picks from the headers it
    reads anyway (``refuse_if_too_large``), so headers are not parsed twice and the other series
    of a folder do not count. ``more_paths`` (label maps) are checked the same way; entries that
    are not paths (None, arrays) are skipped.
    """
    for p in (path, *more_paths):
        if not isinstance(p, (str, os.PathLike)) or not Path(p).exists():
            continue
        image, culprit = estimate_bytes(p, dicom)
        refuse_if_too_large(p, image, culprit)
