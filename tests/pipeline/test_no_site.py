"""A capture session without a body site: every object we write for it either passes dciodvfy
or is refused. PS3.3 C.8.12.1 makes the VL Image Module's Anatomic Region Sequence Type 1C,
required when Number of Frames is present (and no Specimen Description Sequence): the still
photo may go without it, the clip may not, and no anatomic-region context group has a code
for an unknown region, so the clip writer refuses; the SR of the photo's measurements and a
KOS rejecting it have no such condition and pass."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from app.pipeline.decode import prepare_for_dicom
from app.pipeline.dicom.builder import InstanceInfo, build_vl_photo
from app.pipeline.dicom.kos import RejectionInfo, RejectionReason, build_rejection_note
from app.pipeline.dicom.sr import MeasuredLine, build_measurement_report
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID
from app.pipeline.dicom.video import write_video_photo
from app.pipeline.geometry import calibrate_photo
from app.pipeline.video import probe
from tests.clips import make_clip
from tests.conftest import CHARTS, dicom_validate
from tests.pipeline.test_dicom import PATIENT, STUDY, series
from tests.pipeline.test_sr import INFO
from tests.pipeline.test_video import INSTANCE

NO_SITE = series(body_site=None, laterality=None)
WHEN = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def photo() -> tuple[bytes, bytes]:
    """A real chart photo of the site-less session (Part 10 bytes) and its JPEG."""
    prepared = prepare_for_dicom((CHARTS / "jtvd_classic_02.jpg").read_bytes())
    return build_vl_photo(prepared, PATIENT, STUDY, NO_SITE,
                          InstanceInfo("2.25.21", 1)), prepared.jpeg


def test_the_still_photo_passes_without_an_anatomic_region(photo: tuple[bytes, bytes],
                                                           tmp_path: Path) -> None:
    (tmp_path / "photo.dcm").write_bytes(photo[0])
    errors, warnings, out = dicom_validate(tmp_path / "photo.dcm")
    assert (errors, warnings) == (0, 0), out
    assert "AnatomicRegionSequence" not in pydicom.dcmread(tmp_path / "photo.dcm")


def test_the_clip_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4")
    out = io.BytesIO()
    with pytest.raises(ValueError, match=r"anatomic region \(PS3.3 C.8.12.1\)"):
        write_video_photo(probe(source), source, out, PATIENT, STUDY,
                          series(uid="2.25.22", number=6, body_site=None), INSTANCE)
    assert out.getvalue() == b""


def test_the_sr_of_its_measurements_passes(photo: tuple[bytes, bytes], tmp_path: Path) -> None:
    source = pydicom.dcmread(io.BytesIO(photo[0]), stop_before_pixels=True)
    cal = calibrate_photo(photo[1])
    ends = ((200, 300), (1300, 1800))
    report = build_measurement_report(
        source, [MeasuredLine(ends, cal.length_mm(*ends))], [], INFO)
    (tmp_path / "sr.dcm").write_bytes(report)
    errors, warnings, out = dicom_validate(tmp_path / "sr.dcm", iod="Comprehensive3DSR",
                                           decode=False)
    assert (errors, warnings) == (0, 0), out
    assert "Finding Site" not in str(pydicom.dcmread(tmp_path / "sr.dcm").ContentSequence)


def test_a_kos_rejecting_it_passes(photo: tuple[bytes, bytes], tmp_path: Path) -> None:
    rejected = pydicom.dcmread(io.BytesIO(photo[0]), stop_before_pixels=True)
    note = build_rejection_note([rejected], RejectionReason.QUALITY, RejectionInfo(
        series_uid="2.25.26", series_number=99, sop_uid="2.25.27", observer="nurse",
        device_uid=IMPLEMENTATION_CLASS_UID, content_datetime=WHEN))
    (tmp_path / "kos.dcm").write_bytes(note)
    errors, warnings, out = dicom_validate(tmp_path / "kos.dcm",
                                           iod="KeyObjectSelectionDocument", decode=False)
    assert (errors, warnings) == (0, 0), out
