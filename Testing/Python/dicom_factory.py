"""Small synthetic single-frame MR DICOM files for reader and bad-input tests."""
import numpy as np


def new_dataset(sop_class, series, number, desc):
    """An empty little-endian dataset of ``sop_class`` with a fresh SOP instance UID, in ``series``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, number, desc
    return ds


def write_dicom(path, series="1.2.826.0.1.1", number=1, desc="cine", ipp=(0, 0, 0), iop=(1, 0, 0, 0, 1, 0),
                trigger=0.0, instance=1, acq_time=None, drop=(), value=0, shape=(4, 5), spacing=(1.5, 1.25),
                rescale=None):
    """One image filled with ``value``; ``drop`` removes tags to make it broken on purpose."""
    from pydicom.uid import MRImageStorage

    ds = new_dataset(MRImageStorage, series, number, desc)
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelSpacing, ds.ImageOrientationPatient, ds.ImagePositionPatient = list(spacing), list(iop), list(ipp)
    ds.TriggerTime, ds.InstanceNumber = trigger, instance
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if acq_time:
        ds.AcquisitionTime = acq_time
    for tag in drop:
        delattr(ds, tag)
    ds.PixelData = np.full(shape, value, np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
