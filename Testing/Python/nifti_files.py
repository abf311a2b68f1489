"""NIfTI files written as the tests need them, shared by the test modules."""
import numpy as np


def write_nifti(path, data_xyzt, affine, frame_s=None, dtype=np.float32):
    """``data_xyzt`` (NIfTI's i, j, k[, t] order) as a NIfTI of ``dtype``; ``frame_s`` None: no
    time unit and nibabel's 1-step (what ITK writers store when they do not know the timing), else
    that step in seconds."""
    import nibabel as nib

    data = np.asarray(data_xyzt).astype(dtype)
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    if frame_s is not None:
        image.header.set_xyzt_units("mm", "sec")
        zooms = list(image.header.get_zooms())
        zooms[3] = frame_s
        image.header.set_zooms(zooms)
    nib.save(image, str(path))
    return path
