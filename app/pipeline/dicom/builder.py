"""Build DICOM VL Photographic Image objects (Part 10 bytes) from a prepared JPEG.

The JPEG is encapsulated as it is (Transfer Syntax JPEG Baseline, Photometric YBR_FULL_422), so
a phone photo keeps its own bitstream. The output is a pure function of the inputs: no clock, no
randomness, so a retried upload rebuilds the very same bytes.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache

from PIL import ImageCms
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit, VLPhotographicImageStorage

from app.pipeline.decode import PhotoInfo, PreparedPhoto
from app.pipeline.dicom.codes import SNOMED, BodySite, Laterality
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID
from app.pipeline.dicom.values import da, dt, tm

VL_PHOTOGRAPHIC_IMAGE_STORAGE = VLPhotographicImageStorage
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


_INPUT_CLASS = b"scnr"
_RELABELLED_CLASSES = (b"scnr", b"mntr", b"spac")
"""Matrix/TRC or AToB0-based RGB profiles whose tags make a valid Input profile as they are
(ICC.1:2010 8.3 and 8.4 require the same tags of a three-component Input and Display
profile; a ColorSpace profile has AToB0 and BToA0, more than an Input profile needs)."""


def input_profile(profile: bytes | None) -> bytes:
    """``profile`` (an image's ICC profile) as an ICC Input Device profile of the same colour
    transform, as PS3.3 C.11.15.1.1 requires of a presentation state's profile.

    Guarantees: an RGB profile of the Input, Display or ColorSpace class with an XYZ or Lab
    connection space comes back with its class signature (header bytes 12-15) ``scnr`` and,
    when it had one, its Profile ID (bytes 84-99, ICC.1:2010 7.2.18) recomputed; any other
    profile, unreadable bytes, or none give littleCMS's sRGB so relabelled (what a viewer
    assumes for such pixels).
    """
    if profile is not None:
        try:
            parsed = ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile
        except (OSError, ValueError):
            parsed = None
        if (parsed is not None and parsed.xcolor_space.strip() == "RGB"
                and parsed.connection_space.strip() in ("XYZ", "Lab")
                and profile[12:16] in _RELABELLED_CLASSES):
            return _relabelled(profile)
    return _relabelled(srgb_profile())


def _relabelled(profile: bytes) -> bytes:
    """``profile`` with the Input class signature and, if it carried one, its Profile ID
    recomputed (MD5 of the profile with flags, rendering intent and ID zeroed)."""
    data = bytearray(profile)
    data[12:16] = _INPUT_CLASS
    if any(data[84:100]):
        blank = bytearray(data)
        blank[44:48] = bytes(4)
        blank[64:68] = bytes(4)
        blank[84:100] = bytes(16)
        data[84:100] = hashlib.md5(bytes(blank), usedforsecurity=False).digest()
    return bytes(data)


def code_item(code: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence item (PS3.3 Basic Code Sequence Macro): value, scheme, meaning."""
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def recognizable(series: SeriesInfo, instance: InstanceInfo) -> bool:
    if instance.recognizable_visual_features is not None:
        return instance.recognizable_visual_features
    if series.body_site is None:
        return True  # unknown site: say what is safest for privacy
    return _RECOGNIZABLE.search(series.body_site.meaning.lower()) is not None


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, *,
              implementation_uid: str = IMPLEMENTATION_CLASS_UID) -> FileMetaDataset:
    """The File Meta Information of a Part 10 file we write (PS3.10 7.1): the object's SOP
    Class and Instance, its transfer syntax, and this implementation's Class UID and Version
    Name (pydicom adds the group length and version when saving)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(implementation_uid)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def patient_module(ds: Dataset, patient: PatientInfo) -> None:
    """Patient Module (PS3.3 C.7.1.1): name, ID and its issuer, birth date, sex (Type 2 ones
    empty when unknown)."""
    ds.PatientName = patient.name or ""
    ds.PatientID = patient.id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = da(patient.birth_date) if patient.birth_date else ""
    ds.PatientSex = patient.sex or ""


def general_study_module(ds: Dataset, study: StudyInfo) -> None:
    """General Study Module (PS3.3 C.7.2.1): the session as a study; Study ID is the last 8
    digits of the Study UID unless given."""
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = da(study.started)
    ds.StudyTime = tm(study.started)
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id or study.uid.replace(".", "")[-8:]
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.description


def patient_study_module(ds: Dataset, study: StudyInfo) -> None:
    """Patient Study Module (PS3.3 C.7.2.2): the encounter as Admission ID, when known."""
    if study.admission_id:
        ds.AdmissionID = study.admission_id


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


def general_series_module(ds: Dataset, study: StudyInfo, series: SeriesInfo) -> None:
    """General Series Module (PS3.3 C.7.3.1): modality XC, the series dated as its study, and
    the Request Attributes Sequence when the study fulfils a worklist step. Its Laterality
    condition is met by Image Laterality (VL Image)."""
    ds.Modality = MODALITY
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDate = da(study.started)
    ds.SeriesTime = tm(study.started)
    if series.description:
        ds.SeriesDescription = series.description
    if study.requested_procedure_id or study.scheduled_step_id:
        ds.RequestAttributesSequence = Sequence([_request_attributes(study)])


def general_equipment_module(ds: Dataset, info: PhotoInfo, series: SeriesInfo) -> None:
    """General Equipment Module (PS3.3 C.7.5.1): the camera (make, model, its software after
    ours) and the institution and department."""
    ds.Manufacturer = info.make or ""
    if series.institution:
        ds.InstitutionName = series.institution
    if series.department:
        ds.InstitutionalDepartmentName = series.department
    if info.model:
        ds.ManufacturerModelName = info.model
    ds.SoftwareVersions = [v for v in (SOFTWARE_VERSION, info.software) if v]


def general_acquisition_module(ds: Dataset, info: PhotoInfo) -> None:
    """General Acquisition Module (PS3.3 C.7.10.1): when the photo was taken, if it says."""
    if info.acquired is not None:
        ds.AcquisitionDateTime = dt(info.acquired)


def _general_image_module(ds: Dataset, photo: PreparedPhoto, study: StudyInfo,
                          series: SeriesInfo, instance: InstanceInfo) -> None:
    """General Image Module (PS3.3 C.7.6.1): number, content date and time (the photo's own,
    else the study's), comments, what the pixels may show, and the lossy compression the
    phone applied (ratio of the 8-bit RGB size to the JPEG's)."""
    content = photo.info.acquired or study.started
    ds.InstanceNumber = instance.number
    ds.PatientOrientation = ""
    ds.ContentDate = da(content)
    ds.ContentTime = tm(content)
    if instance.comments:
        ds.ImageComments = instance.comments
    ds.BurnedInAnnotation = "YES" if instance.burned_in_annotation else "NO"
    ds.RecognizableVisualFeatures = "YES" if recognizable(series, instance) else "NO"
    ds.LossyImageCompressionRatio = f"{photo.width * photo.height * 3 / len(photo.jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def _general_reference_module(ds: Dataset, derivation: Derivation | None) -> None:
    """General Reference Module (PS3.3 C.12.4): for a DERIVED image, how it was made and
    from which instance."""
    if derivation is None:
        return
    ds.DerivationDescription = derivation.description
    source = Dataset()
    source.ReferencedSOPClassUID = derivation.source_sop_class_uid
    source.ReferencedSOPInstanceUID = derivation.source_sop_instance_uid
    source.PurposeOfReferenceCodeSequence = Sequence([code_item(
        "121322", "DCM", "Source image for image processing operation")])
    ds.SourceImageSequence = Sequence([source])


def _image_pixel_module(ds: Dataset, photo: PreparedPhoto) -> None:
    """Image Pixel Module (PS3.3 C.7.6.3) but Pixel Data, which :func:`build_vl_photo`
    appends encapsulated: 8-bit YBR_FULL_422, as a baseline JPEG holds it."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = photo.height
    ds.Columns = photo.width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def acquisition_context_module(ds: Dataset) -> None:
    """Acquisition Context Module (PS3.3 C.7.6.14): Type 2, sent empty."""
    ds.AcquisitionContextSequence = Sequence()


def vl_image_module(ds: Dataset, series: SeriesInfo, instance: InstanceInfo) -> None:
    """VL Image Module (PS3.3 C.8.12.1): ORIGINAL or DERIVED, lossy, the body site and its
    laterality (U when none was given: intake requires R, L or B for paired sites), and the
    pixel spacing at the chart plane when the colour chart gave it.

    The Anatomic Region Sequence is Type 1C, required when Number of Frames is present and
    Specimen Description Sequence absent: a still photo may go without a body site, a video
    may not, and no anatomic-region context group has a code for an unknown one. Called
    after the Multi-frame Module, this raises ValueError for a multi-frame image whose series
    has no body site rather than write an invalid object."""
    ds.ImageType = ["DERIVED" if instance.derivation else "ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "01"
    if series.body_site is not None:
        site = series.body_site
        ds.AnatomicRegionSequence = Sequence([code_item(site.code, SNOMED, site.meaning)])
    elif "NumberOfFrames" in ds and "SpecimenDescriptionSequence" not in ds:
        raise ValueError("a multi-frame VL image needs its anatomic region (PS3.3 C.8.12.1): "
                         "the series has no body site")
    ds.ImageLaterality = series.laterality or Laterality.UNPAIRED
    if instance.pixel_spacing_mm:
        spacing = f"{instance.pixel_spacing_mm:.6g}"
        ds.PixelSpacing = [spacing, spacing]


def _icc_profile_module(ds: Dataset, info: PhotoInfo) -> None:
    """ICC Profile Module (PS3.3 C.11.15): the photo's own profile, else sRGB, as the Input
    Device profile C.11.15.1.1 requires (:func:`input_profile`)."""
    ds.ICCProfile = input_profile(info.icc_profile)


def sop_common_module(ds: Dataset, study: StudyInfo, instance: InstanceInfo,
                       sop_class_uid: str = VL_PHOTOGRAPHIC_IMAGE_STORAGE) -> None:
    """SOP Common Module (PS3.3 C.12.1): the SOP Class (VL Photographic Image Storage unless
    given), UTF-8 text, and the study's UTC offset when it has one."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = instance.sop_uid
    if study.started.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = study.started.strftime("%z")


def build_vl_photo(photo: PreparedPhoto, patient: PatientInfo, study: StudyInfo,
                   series: SeriesInfo, instance: InstanceInfo,
                   *, implementation_uid: str = IMPLEMENTATION_CLASS_UID) -> bytes:
    """Wrap ``photo`` as a VL Photographic Image Storage Part 10 file and return its bytes.

    Guarantees: the modules of the VL Photographic Image IOD (PS3.3 A.33.4) that we fill,
    each by one function below; JPEG Baseline transfer syntax with ``photo.jpeg`` as the
    single fragment, unchanged; the photo's own ICC profile (sRGB when it has none); Lossy
    Image Compression ``01``; deterministic output for the same inputs.
    """
    ds = Dataset()
    patient_module(ds, patient)
    general_study_module(ds, study)
    patient_study_module(ds, study)
    general_series_module(ds, study, series)
    general_equipment_module(ds, photo.info, series)
    general_acquisition_module(ds, photo.info)
    _general_image_module(ds, photo, study, series, instance)
    _general_reference_module(ds, instance.derivation)
    _image_pixel_module(ds, photo)
    acquisition_context_module(ds)
    vl_image_module(ds, series, instance)
    _icc_profile_module(ds, photo.info)
    sop_common_module(ds, study, instance)
    ds.file_meta = file_meta(VL_PHOTOGRAPHIC_IMAGE_STORAGE, instance.sop_uid, JPEGBaseline8Bit,
                             implementation_uid=implementation_uid)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # Pixel Data (7FE0,0010) is the last element: append it encapsulated by hand, so the
    # megabytes of JPEG are copied once instead of through pydicom's element writers.
    return b"".join((buf.getvalue(), *encapsulated_pixel_data(photo.jpeg)))


PIXEL_DATA_ELEMENT = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
"""Pixel Data's element header, explicit VR little endian, undefined length (encapsulated)."""


def encapsulated_pixel_data(frame: bytes) -> tuple[bytes, ...]:
    """Explicit VR little endian Pixel Data with one fragment (PS3.5 A.4), as byte chunks.

    Guarantees: an empty Basic Offset Table item, one item holding ``frame`` padded to even
    length, and the sequence delimiter — what pydicom's ``encapsulate`` produces.
    """
    head, tail = fragment_framing(len(frame))
    return head[:len(PIXEL_DATA_ELEMENT)], head[len(PIXEL_DATA_ELEMENT):], frame, tail


def fragment_framing(length: int) -> tuple[bytes, bytes]:
    """The bytes before and after a single fragment of ``length`` bytes in encapsulated Pixel
    Data (PS3.5 A.4): element header, empty Basic Offset Table, item header; then the pad to
    even length and the sequence delimiter. Lets a large fragment be streamed between them."""
    return (
        PIXEL_DATA_ELEMENT
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE000, length + length % 2),
        b"\x00" * (length % 2) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),
    )
