"""De-identification of our VL Photographic images for research: DICOM PS3.15 Annex E, the
Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal
Information option (Modified Dates by default, Full Dates on request).

What happens to each attribute (Table E.1-1 actions; anything not named here is removed, which
the profile allows — so an attribute added to the builder later is dropped until it is listed):

- kept (not identifying): image pixel and compression attributes, the ICC profile, SOP Class,
  Image Type, Modality, Manufacturer, model and software versions, Series/Instance Number,
  Patient Orientation, Image Laterality, Anatomic Region Sequence (its codes only), Pixel
  Spacing, Burned In Annotation and Recognizable Visual Features;
- U: Study, Series and SOP Instance UIDs (and the Media Storage SOP Instance UID, and the
  Referenced SOP Instance UID of the Source Image Sequence) become keyed pseudonyms;
- Z/D: Patient ID becomes the patient's keyed pseudonym (``ANON`` + 16 characters), Patient's
  Name ``ANON^`` + the same 16, Study ID a keyed 8-character code of the study; Birth Date,
  Sex, Accession Number and Referring Physician's Name become empty;
- X: Issuer of Patient ID, Admission ID, institution and department, study/series/derivation
  descriptions, image comments, every private attribute;
- dates (Study, Series, Content, Acquisition Date, Acquisition DateTime): Modified Dates
  option — moved back by the patient's keyed shift of whole days (365 to 3651), so intervals
  between one patient's studies are kept; times of day are kept; Timezone Offset From UTC
  and the offset of date-times are removed. Full Dates option: kept as they are.

Pseudonyms are HMAC-SHA256 of the original under the export's secret: stable within one export
(two studies of one patient get the same Patient ID, a derived image keeps pointing at its
source), unlinkable across exports and irreversible without the secret. UIDs are ``2.25.`` +
a 128-bit value (never under the organisation's UID root, which would name the institution).

The encapsulated pixel data of a photo is copied byte for byte: nothing is decoded or
re-encoded. A video clip's MP4 has its video packets copied, as they are, into a new MP4
without audio and without the container's metadata or creation times (which would keep the
real recording date under the Modified Dates option); its Cine and Multi-frame attributes
(frame count and timing) are kept. Burned-in
text and faces are not cleaned (no Clean Pixel Data or Clean Recognizable Visual Features
option): :func:`inspect` tells the caller, which excludes or flags such images.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.sequence import Sequence

from app.pipeline.dicom.builder import code_item, file_meta
from app.pipeline.dicom.values import da
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE
from app.pipeline.video import UnreadableVideoError, remux_mp4

DCM = "DCM"
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 365, 3651

KEEP = frozenset({
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "Modality", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "SeriesNumber", "InstanceNumber",
    "PatientOrientation", "ImageLaterality", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns", "PixelSpacing",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "BurnedInAnnotation",
    "RecognizableVisualFeatures", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "ICCProfile", "PixelData",
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "CineRate",
    "RecommendedDisplayFrameRate", "EffectiveDuration",
})
EMPTY = frozenset({"PatientBirthDate", "PatientSex", "AccessionNumber",
                   "ReferringPhysicianName"})
DATES = frozenset({"StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"})
TIMES = frozenset({"StudyTime", "SeriesTime", "ContentTime", "AcquisitionTime"})
DATETIMES = frozenset({"AcquisitionDateTime"})
UIDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})


class NotDeidentifiable(ValueError):
    """The bytes are not a DICOM object this step can de-identify (no PHI in the message)."""


@dataclass(frozen=True)
class Screening:
    """What the image itself may reveal: burned-in text (``None``: not stated, treated as
    yes) and recognizable features such as a face (``None``: not stated, treated as yes)."""

    burned_in_annotation: bool | None
    recognizable_visual_features: bool | None

    @property
    def may_show_text(self) -> bool:
        return self.burned_in_annotation is not False

    @property
    def may_show_face(self) -> bool:
        return self.recognizable_visual_features is not False


@dataclass(frozen=True)
class Deidentified:
    """One de-identified object: its Part 10 bytes and pseudonymous UIDs."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str


class Pseudonyms:
    """Keyed pseudonyms for one export. Guarantees: the same input always gives the same
    output under one key; without the key an output reveals nothing about its input."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the pseudonym key must be at least 32 bytes")
        self._key = key

    def _mac(self, domain: str, *parts: str) -> bytes:
        message = "\x00".join((domain, *parts)).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.<int>`` of a UUID (RFC 9562 version 8, custom) made of the keyed hash."""
        raw = bytearray(self._mac("uid", original)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def _code(self, length: int, domain: str, *parts: str) -> str:
        return base64.b32encode(self._mac(domain, *parts)).decode()[:length]

    def patient(self, patient_id: str, issuer: str) -> str:
        """The patient's pseudonym: ``ANON`` + 16 base32 characters (a Patient ID)."""
        return f"ANON{self._code(16, 'patient', issuer, patient_id)}"

    def study_id(self, study_uid: str) -> str:
        """A Study ID (SH) for the study: 8 base32 characters."""
        return self._code(8, "study-id", study_uid)

    def day_shift(self, patient_id: str, issuer: str) -> int:
        """Whole days this patient's dates move back (365 to 3651)."""
        value = int.from_bytes(self._mac("shift", issuer, patient_id)[:4], "big")
        return MIN_SHIFT_DAYS + value % (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1)


@contextmanager
def _refusing_damage() -> Iterator[None]:
    """Any error inside, other than :class:`NotDeidentifiable`, raised as one: pydicom parses
    values only when they are used (and checks them again when writing), raising many types for
    damaged input."""
    try:
        yield
    except NotDeidentifiable:
        raise
    except Exception as exc:
        raise NotDeidentifiable(f"not a readable DICOM file ({type(exc).__name__})") from exc


def _read(data: bytes) -> Dataset:
    with _refusing_damage():
        return pydicom.dcmread(io.BytesIO(data))


def _flag(ds: Dataset, keyword: str) -> bool | None:
    value = str(ds.get(keyword, "") or "").upper()
    return {"YES": True, "NO": False}.get(value)


def inspect(data: bytes) -> Screening:
    """Burned In Annotation and Recognizable Visual Features of an object (header only)."""
    ds = _read(data)
    with _refusing_damage():
        return Screening(_flag(ds, "BurnedInAnnotation"),
                         _flag(ds, "RecognizableVisualFeatures"))


def _shift_date(value: str, days: int) -> str:
    return da(datetime.strptime(value[:8], "%Y%m%d").date() - timedelta(days=days))


def _shift_datetime(value: str, days: int) -> str:
    """A DT moved back by ``days``; its UTC offset (``&ZZXX``) is dropped."""
    local = value.split("+")[0].split("-")[0]
    return _shift_date(local, days) + local[8:] if len(local) >= 8 else ""


def _codes(sequence: Sequence) -> Sequence:
    """A code sequence reduced to its codes (value, scheme, meaning) and nothing else."""
    return Sequence([code_item(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)
                     for c in sequence])


def _source_images(ds: Dataset, uid: Callable[[str], str]) -> Sequence | None:
    """The Source Image Sequence with each referenced instance's pseudonymous UID."""
    if "SourceImageSequence" not in ds:
        return None
    items = []
    for old in ds.SourceImageSequence:
        item = Dataset()
        item.ReferencedSOPClassUID = old.ReferencedSOPClassUID
        item.ReferencedSOPInstanceUID = uid(old.ReferencedSOPInstanceUID)
        if "PurposeOfReferenceCodeSequence" in old:
            item.PurposeOfReferenceCodeSequence = _codes(old.PurposeOfReferenceCodeSequence)
        items.append(item)
    return Sequence(items)


def _clean_clip(pixel_data: bytes) -> bytes:
    """A video object's encapsulated Pixel Data with its MP4 rebuilt around the same video
    packets, without audio, metadata or creation times (:func:`remux_mp4`)."""
    fragments = list(generate_fragments(pixel_data))[1:]  # after the Basic Offset Table
    with tempfile.TemporaryDirectory(prefix="ebiw-deid-") as work:
        recorded, clean = Path(work) / "recorded.mp4", Path(work) / "clean.mp4"
        recorded.write_bytes(b"".join(fragments))
        try:
            remux_mp4(recorded, clean)
        except UnreadableVideoError as exc:
            raise NotDeidentifiable("the video clip cannot be read") from exc
        return encapsulate([clean.read_bytes()], has_bot=False)


def deidentify(data: bytes, pseudonyms: Pseudonyms, *, retain_dates: bool) -> Deidentified:
    """De-identify one VL Photographic image or Video Photographic clip (see the module
    documentation).

    Guarantees: every private attribute and every attribute not on the lists above is gone;
    Patient Identity Removed is ``YES``; De-identification Method (Code Sequence) names the
    Basic Profile and the dates option used, and Longitudinal Temporal Information Modified says
    ``MODIFIED`` or ``UNMODIFIED``; a photo's encapsulated Pixel Data is byte-identical to the
    input's, a clip's video packets are.
    Raises only :class:`NotDeidentifiable` for bytes that are not such an object.
    """
    source = _read(data)
    with _refusing_damage():
        return _deidentified(source, pseudonyms, retain_dates)


def _deidentified(source: Dataset, pseudonyms: Pseudonyms, retain_dates: bool) -> Deidentified:
    if "PixelData" not in source or "SOPInstanceUID" not in source:
        raise NotDeidentifiable("not an image object")
    patient = (str(source.get("PatientID", "")), str(source.get("IssuerOfPatientID", "")))
    alias = pseudonyms.patient(*patient)
    shift = 0 if retain_dates else pseudonyms.day_shift(*patient)
    out = Dataset()
    for element in source:
        keyword = element.keyword
        if element.tag.is_private or not keyword:
            continue
        if keyword == "AnatomicRegionSequence":
            out.AnatomicRegionSequence = _codes(element.value)
        elif keyword in KEEP:
            out.add(element)
        elif keyword in UIDS:
            out.add_new(element.tag, "UI", pseudonyms.uid(str(element.value)))
        elif keyword == "PatientID":
            out.PatientID = alias
        elif keyword == "PatientName":
            out.PatientName = f"ANON^{alias.removeprefix('ANON')}"
        elif keyword == "StudyID":
            out.StudyID = pseudonyms.study_id(str(source.get("StudyInstanceUID", "")))
        elif keyword in EMPTY:
            out.add_new(element.tag, element.VR, "")
        elif keyword == "AcquisitionContextSequence":
            out.AcquisitionContextSequence = Sequence()  # Type 2: kept, and kept empty
        elif keyword in DATES | TIMES | DATETIMES:
            value = str(element.value or "")
            if value and keyword in DATES:
                value = value if retain_dates else _shift_date(value, shift)
            elif value and keyword in DATETIMES:
                value = value if retain_dates else _shift_datetime(value, shift)
            out.add_new(element.tag, element.VR, value)
        elif keyword == "TimezoneOffsetFromUTC" and retain_dates:
            out.add(element)
    sources = _source_images(source, pseudonyms.uid)
    if sources is not None:
        out.SourceImageSequence = sources
    out.PatientIdentityRemoved = "YES"
    option = FULL_DATES if retain_dates else MODIFIED_DATES
    out.DeidentificationMethod = ["DICOM PS3.15 E.1 Basic Profile",
                                  "Retain Long. Full Dates" if retain_dates
                                  else "Retain Long. Modified Dates"]
    out.DeidentificationMethodCodeSequence = Sequence([code_item(BASIC_PROFILE[0], DCM,
                                                                 BASIC_PROFILE[1]),
                                                       code_item(option[0], DCM, option[1])])
    out.LongitudinalTemporalInformationModified = "UNMODIFIED" if retain_dates else "MODIFIED"
    if out.SOPClassUID == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE:
        out.PixelData = _clean_clip(out.PixelData)
    out.file_meta = file_meta(out.SOPClassUID, out.SOPInstanceUID,
                              source.file_meta.TransferSyntaxUID)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return Deidentified(buffer.getvalue(), str(out.StudyInstanceUID),
                        str(out.SeriesInstanceUID), str(out.SOPInstanceUID))

