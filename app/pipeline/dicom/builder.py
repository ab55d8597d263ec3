"""Build DICOM VL Photographic Image objects (Part 10 bytes) from a prepared JPEG.

The JPEG is encapsulated as it is (Transfer Syntax JPEG Baseline, Photometric YBR_FULL_422), so
a phone photo keeps its own bitstream. The output is a pure function of the inputs: no clock, no
randomness, so a retried upload rebuilds the very same bytes.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache

from PIL import ImageCms
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, JPEGBaseline8Bit

from app.pipeline.decode import PreparedPhoto
from app.pipeline.dicom.codes import SNOMED, BodySite

VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
MODALITY = "XC"
SOFTWARE_VERSION = "ebiw-capture 0.1"
IMPLEMENTATION_VERSION_NAME = "EBIW_CAPTURE_01"

# Body sites whose photos show a face or enough of the head to recognise the patient.
_RECOGNIZABLE = re.compile(r"\b(face|facial|head|eye|ear|nose|nasi|lip|cheek|chin|forehead|eyebrow"
                           r"|eyelid|eyelash|jaw|jawline|scalp|neck|mouth|oral|tongue|entire body"
                           r"|iris|sclera|cornea|canthus|helix|pinna)\b")


@dataclass(frozen=True)
class PatientInfo:
    """Who the photo shows. ``name`` is a DICOM PN (``FAMILY^GIVEN``)."""

    id: str
    issuer: str
    name: str | None = None
    birth_date: date | None = None
    sex: str | None = None  # "F", "M" or "O"


@dataclass(frozen=True)
class StudyInfo:
    """The capture session as a DICOM study; ``started`` should carry its UTC offset."""

    uid: str
    started: datetime
    description: str = "Clinical photography"
    accession_number: str = ""
    admission_id: str | None = None
    study_id: str = ""  # empty: the last 8 digits of the Study UID (SH, needed by DICOMDIR)
    referring_physician: str = ""
    # The Modality Worklist step the study fulfils (both None: not scheduled)
    requested_procedure_id: str | None = None
    scheduled_step_id: str | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """One series: a body site seen one way (originals or colour-normalized)."""

    uid: str
    number: int
    body_site: BodySite | None = None
    laterality: str | None = None  # Image Laterality: R, L, B or U (None: U)
    department: str | None = None
    institution: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Derivation:
    """How a DERIVED image was made from its source instance (Source Image Sequence)."""

    source_sop_instance_uid: str
    description: str
    source_sop_class_uid: str = VL_PHOTOGRAPHIC_IMAGE_STORAGE


@dataclass(frozen=True)
class InstanceInfo:
    """Per-image facts; ``burned_in_annotation`` is true for wristband and label photos."""

    sop_uid: str
    number: int
    burned_in_annotation: bool = False
    recognizable_visual_features: bool | None = None  # None: decide from the body site
    derivation: Derivation | None = None
    pixel_spacing_mm: float | None = None
    comments: str | None = None


@cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (littleCMS built-in), for photos that carry none."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _da(value: date) -> str:
    return value.strftime("%Y%m%d")


def _tm(value: datetime) -> str:
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def _dt(value: datetime) -> str:
    return value.strftime("%Y%m%d") + _tm(value) + value.strftime("%z")


def _request_attributes(study: StudyInfo) -> Dataset:
    """General Series' Request Attributes Sequence item: the worklist step this fulfils, so a
    PACS or RIS can match the images to the order (PS3.3 Request Attributes Macro)."""
    item = Dataset()
    if study.accession_number:
        item.AccessionNumber = study.accession_number
    item.StudyInstanceUID = study.uid
    item.RequestedProcedureID = study.requested_procedure_id or ""
    if study.description:
        item.RequestedProcedureDescription = study.description
    item.ScheduledProcedureStepID = study.scheduled_step_id or ""
    return item


def _code_item(code: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _recognizable(series: SeriesInfo, instance: InstanceInfo) -> bool:
    if instance.recognizable_visual_features is not None:
        return instance.recognizable_visual_features
    if series.body_site is None:
        return True  # unknown site: say what is safest for privacy
    return _RECOGNIZABLE.search(series.body_site.meaning.lower()) is not None


def build_vl_photo(photo: PreparedPhoto, patient: PatientInfo, study: StudyInfo,
                   series: SeriesInfo, instance: InstanceInfo,
                   *, implementation_uid: str = PYDICOM_IMPLEMENTATION_UID) -> bytes:
    """Wrap ``photo`` as a VL Photographic Image Storage Part 10 file and return its bytes.

    Guarantees: JPEG Baseline transfer syntax with ``photo.jpeg`` as the single fragment,
    unchanged; the photo's own ICC profile (sRGB when it has none); Lossy Image Compression
    ``01``; deterministic output for the same inputs.
    """
    info = photo.info
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED" if instance.derivation else "ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE_STORAGE
    ds.SOPInstanceUID = instance.sop_uid
    started = study.started
    acquired = info.acquired
    content = acquired or started
    ds.StudyDate = _da(started)
    ds.SeriesDate = _da(started)
    ds.ContentDate = _da(content)
    ds.StudyTime = _tm(started)
    ds.SeriesTime = _tm(started)
    ds.ContentTime = _tm(content)
    if acquired is not None:
        ds.AcquisitionDateTime = _dt(acquired)
    ds.AccessionNumber = study.accession_number
    ds.Modality = MODALITY
    ds.Manufacturer = info.make or ""
    if series.institution:
        ds.InstitutionName = series.institution
    ds.ReferringPhysicianName = study.referring_physician
    if started.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = started.strftime("%z")
    ds.StudyDescription = study.description
    if series.description:
        ds.SeriesDescription = series.description
    if series.department:
        ds.InstitutionalDepartmentName = series.department
    if info.model:
        ds.ManufacturerModelName = info.model
    if instance.derivation is not None:
        ds.DerivationDescription = instance.derivation.description
        source = Dataset()
        source.ReferencedSOPClassUID = instance.derivation.source_sop_class_uid
        source.ReferencedSOPInstanceUID = instance.derivation.source_sop_instance_uid
        source.PurposeOfReferenceCodeSequence = Sequence([_code_item(
            "121322", "DCM", "Source image for image processing operation")])
        ds.SourceImageSequence = Sequence([source])
    if series.body_site is not None:
        site = series.body_site
        ds.AnatomicRegionSequence = Sequence([_code_item(site.code, SNOMED, site.meaning)])
    ds.PatientName = patient.name or ""
    ds.PatientID = patient.id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = _da(patient.birth_date) if patient.birth_date else ""
    ds.PatientSex = patient.sex or ""
    ds.SoftwareVersions = [v for v in (SOFTWARE_VERSION, info.software) if v]
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id or study.uid.replace(".", "")[-8:]
    ds.SeriesNumber = series.number
    ds.InstanceNumber = instance.number
    ds.PatientOrientation = ""
    # Image Laterality satisfies General Series' Laterality condition; U (unpaired) when the
    # caller gave none: intake requires R, L or B for paired body sites.
    ds.ImageLaterality = series.laterality or "U"
    if instance.comments:
        ds.ImageComments = instance.comments
    if study.admission_id:
        ds.AdmissionID = study.admission_id
    if study.requested_procedure_id or study.scheduled_step_id:
        ds.RequestAttributesSequence = Sequence([_request_attributes(study)])
    ds.AcquisitionContextSequence = Sequence()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = photo.height
    ds.Columns = photo.width
    if instance.pixel_spacing_mm:
        spacing = f"{instance.pixel_spacing_mm:.6g}"
        ds.PixelSpacing = [spacing, spacing]  # at the chart plane, from its known size
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "YES" if instance.burned_in_annotation else "NO"
    ds.RecognizableVisualFeatures = "YES" if _recognizable(series, instance) else "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{photo.width * photo.height * 3 / len(photo.jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.ICCProfile = info.icc_profile or srgb_profile()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = UID(implementation_uid)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # Pixel Data (7FE0,0010) is the last element: append it encapsulated by hand, so the
    # megabytes of JPEG are copied once instead of through pydicom's element writers.
    return b"".join((buf.getvalue(), *encapsulated_pixel_data(photo.jpeg)))


def encapsulated_pixel_data(frame: bytes) -> tuple[bytes, ...]:
    """Explicit VR little endian Pixel Data with one fragment (PS3.5 A.4), as byte chunks.

    Guarantees: an empty Basic Offset Table item, one item holding ``frame`` padded to even
    length, and the sequence delimiter — what pydicom's ``encapsulate`` produces.
    """
    pad = b"\x00" if len(frame) % 2 else b""
    return (
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF),
        struct.pack("<HHI", 0xFFFE, 0xE000, 0),
        struct.pack("<HHI", 0xFFFE, 0xE000, len(frame) + len(pad)),
        frame, pad,
        struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),
    )
