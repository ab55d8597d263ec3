"""VL Photographic objects from real photos: dciodvfy clean, and what dciodvfy does not check."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, JPEGBaseline8Bit

from app.pipeline.decode import prepare_for_dicom
from app.pipeline.dicom.builder import (
    IMPLEMENTATION_VERSION_NAME,
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    Derivation,
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    build_vl_photo,
    encapsulated_pixel_data,
    input_profile,
    srgb_profile,
)
from app.pipeline.dicom.codes import body_site, body_sites
from app.pipeline.dicom.deid import Pseudonyms, deidentify
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID, derived_uuid, uid_from_uuid
from tests.conftest import CHARTS, dicom_validate

HIGHDICOM_SRGB = Path(hd.__file__).parent / "_icc_profiles" / "sRGB_v4_ICC_preference.icc"

PHOTOS = ["oycq_data_iphone.jpg", "jarrelscy_203438.jpg", "oycq_data_xiaomi.jpg",
          "karnehen_cam2_cc.jpg", "luimoli_d65.jpg", "qiu_passport.jpg", "qiu_digitalsg.png"]
SESSION = uuid.UUID("6f1c2a8e-4b7d-4c1e-9a57-0d3b2f1e8c90")
STARTED = datetime(2026, 11, 27, 9, 30, 5, tzinfo=timezone(timedelta(hours=1)))
PATIENT = PatientInfo("MRN0001", "HOSP-A", "TEST^ALICE", date(1970, 1, 1), "F")
STUDY = StudyInfo(uid_from_uuid(SESSION), STARTED, admission_id="ENC-42")
FOREARM = body_site("14975008")


def series(**changes: object) -> SeriesInfo:
    values: dict[str, object] = {
        "uid": uid_from_uuid(derived_uuid(SESSION, "series:original")), "number": 1,
        "body_site": FOREARM, "laterality": "L", "department": "Wound care",
        "institution": "General Hospital"}
    values.update(changes)
    return SeriesInfo(**values)  # type: ignore[arg-type]


def build(name: str, number: int = 1, role: str = "original",
          **instance: object) -> tuple[bytes, bytes]:
    data = (CHARTS / name).read_bytes()
    photo = prepare_for_dicom(data)
    sop = uid_from_uuid(uuid.uuid5(SESSION, f"{role}:{name}"))
    return build_vl_photo(photo, PATIENT, STUDY, series(
        uid=uid_from_uuid(derived_uuid(SESSION, f"series:{role}")),
        number=1 if role == "original" else 2),
                          InstanceInfo(sop, number, **instance)), photo.jpeg  # type: ignore[arg-type]


def test_real_photos_pass_dciodvfy_with_no_errors_and_no_warnings(tmp_path: Path) -> None:
    files = []
    for number, name in enumerate(PHOTOS, start=1):
        data, _ = build(name, number)
        files.append(tmp_path / f"{name}.dcm")
        files[-1].write_bytes(data)
    errors, warnings, output = dicom_validate(*files)
    assert (errors, warnings) == (0, 0), output


def test_attributes_dciodvfy_does_not_check() -> None:
    data, jpeg = build("oycq_data_xiaomi.jpg")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.SOPClassUID == VL_PHOTOGRAPHIC_IMAGE_STORAGE and ds.Modality == "XC"
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 5
    # The phone's bitstream is the one fragment, unchanged.
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert frames[0][: len(jpeg)] == jpeg and len(frames[0]) - len(jpeg) <= 1
    assert (ds.Rows, ds.Columns) == (3072, 4096)
    # Identification and context.
    assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == (
        "MRN0001", "HOSP-A", "TEST^ALICE")
    assert ds.PatientBirthDate == "19700101" and ds.PatientSex == "F"
    assert ds.AdmissionID == "ENC-42" and ds.AccessionNumber == ""
    assert ds.StudyInstanceUID == uid_from_uuid(SESSION)
    assert ds.StudyDate == "20261127" and ds.StudyTime == "093005"
    assert ds.TimezoneOffsetFromUTC == "+0100"
    assert ds.InstitutionalDepartmentName == "Wound care"
    assert ds.InstitutionName == "General Hospital"
    region = ds.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (
        "14975008", "SCT", "Forearm")
    assert ds.ImageLaterality == "L"
    assert ds.BurnedInAnnotation == "NO" and ds.RecognizableVisualFeatures == "NO"
    # Acquisition time and device from EXIF (Xiaomi writes its UTC offset).
    assert ds.AcquisitionDateTime.startswith("20251014185550.786")
    assert ds.AcquisitionDateTime.endswith("+0800")
    assert ds.ContentDate == "20251014"
    # The camera's profile, as the Input Device profile PS3.3 C.11.15.1.1 requires.
    camera = prepare_for_dicom((CHARTS / "oycq_data_xiaomi.jpg").read_bytes()).info.icc_profile
    assert camera is not None and device_class(camera) == "mntr"
    assert ds.ICCProfile == input_profile(camera) != camera
    assert device_class(ds.ICCProfile) == "scnr"


def test_device_from_exif_and_icc_fallback() -> None:
    data, _ = build("jarrelscy_203438.jpg")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("Samsung", "GT-I9100")
    assert ds.ICCProfile == input_profile(srgb_profile())  # the photo has none: sRGB
    iphone = pydicom.dcmread(io.BytesIO(build("oycq_data_iphone.jpg")[0]))
    assert b"Display P3" in bytes(iphone.ICCProfile).replace(b"\x00", b"")
    assert device_class(iphone.ICCProfile) == "scnr"


def test_pixels_decode_to_the_photo() -> None:
    data, _ = build("luimoli_d65.jpg")
    ds = pydicom.dcmread(io.BytesIO(data))
    ours = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    reference = np.asarray(Image.open(CHARTS / "luimoli_d65.jpg").convert("RGB"))
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 1.5


def test_output_is_deterministic() -> None:
    assert build("qiu_passport.jpg")[0] == build("qiu_passport.jpg")[0]


def test_label_photo_and_derived_instance(tmp_path: Path) -> None:
    label, _ = build("sio_classic.jpg", 1, burned_in_annotation=True)
    original = pydicom.dcmread(io.BytesIO(label))
    derived, _ = build("sio_classic.jpg", 2, "normalized", derivation=Derivation(
        original.SOPInstanceUID, "Colour normalized from the chart; CIEDE2000 mean 1.9"),
        pixel_spacing_mm=0.25)
    ds = pydicom.dcmread(io.BytesIO(derived))
    assert original.BurnedInAnnotation == "YES"
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ds.DerivationDescription.startswith("Colour normalized")
    assert [float(v) for v in ds.PixelSpacing] == [0.25, 0.25]
    (tmp_path / "derived.dcm").write_bytes(derived)
    (tmp_path / "label.dcm").write_bytes(label)
    errors, warnings, output = dicom_validate(tmp_path / "derived.dcm", tmp_path / "label.dcm")
    assert (errors, warnings) == (0, 0), output


@pytest.mark.parametrize("changes", [{"laterality": None}, {"body_site": None},
                                     {"department": None, "institution": None}])
def test_optional_context_can_be_absent(tmp_path: Path, changes: dict[str, object]) -> None:
    photo = prepare_for_dicom((CHARTS / "sio_classic.jpg").read_bytes())
    data = build_vl_photo(photo, PatientInfo("X", "Y"), STUDY, series(**changes),
                          InstanceInfo(uid_from_uuid(uuid.uuid4()), 1))
    (tmp_path / "a.dcm").write_bytes(data)
    errors, warnings, output = dicom_validate(tmp_path / "a.dcm")
    assert (errors, warnings) == (0, 0), output
    ds = pydicom.dcmread(io.BytesIO(data))
    if changes.get("body_site", FOREARM) is None:
        assert "AnatomicRegionSequence" not in ds and ds.RecognizableVisualFeatures == "YES"
    assert ds.ImageLaterality == (changes.get("laterality", "L") or "U")


def test_uids() -> None:
    u = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert uid_from_uuid(u) == f"2.25.{u.int}"
    assert uid_from_uuid(u, "1.2.826.0.1.3680043.10.999") .startswith("1.2.826.0.1.3680043.10.999.")
    assert len(uid_from_uuid(uuid.UUID(int=2**128 - 1), "1.2.3.4.5.6.7.8.9.10.11.12.13")) <= 64
    assert derived_uuid(u, "a") == derived_uuid(u, "a") != derived_uuid(u, "b")
    with pytest.raises(ValueError):
        uid_from_uuid(u, "1." * 25 + "1")


def test_body_site_table_is_snomed_with_sensitive_flags() -> None:
    sites = body_sites()
    assert len(sites) > 200
    assert body_site("14975008").meaning == "Forearm" and not body_site("14975008").sensitive
    assert all(s.code.isdigit() for s in sites.values())
    sensitive = {s.meaning for s in sites.values() if s.sensitive}
    assert "Breast" in sensitive and "Skin of nasolabial fold" not in sensitive
    assert body_site("14975008").paired and not body_site("818981001").paired  # abdomen


def test_hand_encapsulation_reads_back_with_pydicom() -> None:
    for frame in (b"\xff\xd8odd\xff\xd9", b"\xff\xd8even!\xff\xd9"):
        chunks = encapsulated_pixel_data(frame)
        value = b"".join(chunks[1:])
        assert value.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # sequence delimiter
        frames = list(pydicom.encaps.generate_frames(value, number_of_frames=1))
        assert frames[0].rstrip(b"\x00") == frame


def test_builder_and_deidentification_write_one_file_meta_naming_ebiw_capture() -> None:
    """Both writers' File Meta Information name the object, its transfer syntax and this
    implementation (its own Implementation Class UID, not pydicom's)."""
    data, _ = build("luimoli_d65.jpg")
    anonymous = deidentify(data, Pseudonyms(b"k" * 32), retain_dates=False).data
    for written in (data, anonymous):
        ds = pydicom.dcmread(io.BytesIO(written))
        meta = ds.file_meta
        assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (
            ds.SOPClassUID, ds.SOPInstanceUID)
        assert meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID != \
            PYDICOM_IMPLEMENTATION_UID
        assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME


def profile_id(profile: bytes) -> bytes:
    """The Profile ID as ICC.1:2010 7.2.18 defines it: MD5 of the profile with the flags,
    rendering intent and ID fields zeroed."""
    blank = bytearray(profile)
    blank[44:48], blank[64:68], blank[84:100] = bytes(4), bytes(4), bytes(16)
    return hashlib.md5(bytes(blank), usedforsecurity=False).digest()


def device_class(profile: bytes) -> str:
    return str(ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.device_class).strip()


def test_a_display_or_colour_space_profile_becomes_an_input_profile_of_the_same_transform(
) -> None:
    display = srgb_profile()  # littleCMS's sRGB: class mntr, no Profile ID
    assert device_class(display) == "mntr"
    relabelled = input_profile(display)
    assert device_class(relabelled) == "scnr"
    assert relabelled[:12] + relabelled[16:] == display[:12] + display[16:]

    # The ICC's own sRGB v4 (class spac) carries a Profile ID: recomputed after relabelling.
    reference = HIGHDICOM_SRGB.read_bytes()
    assert reference[84:100] == profile_id(reference) != bytes(16)
    relabelled = input_profile(reference)
    assert device_class(relabelled) == "scnr"
    assert relabelled[84:100] == profile_id(relabelled) != reference[84:100]
    assert relabelled[:12] + relabelled[16:84] == reference[:12] + reference[16:84]
    assert input_profile(relabelled) == relabelled  # an Input profile stays as it is


@pytest.mark.parametrize("profile", [
    None, b"not a profile",
    ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()])
def test_a_profile_that_cannot_describe_rgb_pixels_gives_srgb(profile: bytes | None) -> None:
    assert input_profile(profile) == input_profile(srgb_profile())
