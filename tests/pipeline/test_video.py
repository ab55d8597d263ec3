"""Video clips → Video Photographic Image: real clips encoded in the test from a real photo,
validated with dciodvfy and read back with pydicom and PyAV."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_fragments

from app.pipeline.dicom.builder import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo
from app.pipeline.dicom.codes import body_site
from app.pipeline.dicom.deid import Pseudonyms, deidentify
from app.pipeline.dicom.video import VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, write_video_photo
from app.pipeline.video import (
    H264_HIGH_41,
    H264_HIGH_42_2D,
    HEVC_MAIN10_51,
    HEVC_MAIN_51,
    ClipInfo,
    ClipTooLongError,
    UnreadableVideoError,
    poster_jpeg,
    probe,
    reencode_h264,
    remux_mp4,
    transfer_syntax_for,
    unpadded_mp4,
)
from tests.clips import PHOTO, make_clip, upright_frame
from tests.conftest import dicom_validate

PATIENT = PatientInfo(id="00123456", issuer="LOCAL", name="DEMO^ALICE")
STUDY = StudyInfo(uid="2.25.11", started=datetime(2026, 3, 4, 10, 30, tzinfo=UTC))
SERIES = SeriesInfo(uid="2.25.12", number=5, body_site=body_site("14975008"), laterality="L")
INSTANCE = InstanceInfo(sop_uid="2.25.13", number=1)


def wrap(clip: ClipInfo, payload: Path, target: Path) -> pydicom.Dataset:
    with target.open("wb") as out:
        write_video_photo(clip, payload, out, PATIENT, STUDY, SERIES, INSTANCE)
    return pydicom.dcmread(target)


def fragment(ds: pydicom.Dataset) -> bytes:
    offsets, data = generate_fragments(ds.PixelData)  # the Basic Offset Table item, the clip
    assert offsets == b""
    return data


def test_video_only_h264_mp4_is_encapsulated_byte_for_byte(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4")
    clip = probe(source, max_seconds=60)
    assert (clip.codec, clip.profile, clip.as_recorded) == ("h264", "High", True)
    ds = wrap(clip, source, tmp_path / "clip.dcm")
    assert ds.file_meta.TransferSyntaxUID == H264_HIGH_41
    assert ds.SOPClassUID == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE and ds.Modality == "XC"
    assert (ds.Rows, ds.Columns, ds.NumberOfFrames) == (240, 320, 45)
    assert float(ds.FrameTime) == pytest.approx(1000 / 30, abs=1e-3) and ds.CineRate == 30
    assert ds.FrameIncrementPointer == 0x00181063
    assert float(ds.EffectiveDuration) == pytest.approx(1.5)
    assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.PlanarConfiguration) == (
        "YBR_PARTIAL_420", 8, 0)
    assert "PixelAspectRatio" not in ds
    assert ds.LossyImageCompressionMethod == "ISO_14496_10" and ds.LossyImageCompression == "01"
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.ImageLaterality) == ("00123456", "LOCAL", "L")
    assert ds.AnatomicRegionSequence[0].CodeValue == "14975008"
    recorded = source.read_bytes()
    assert fragment(ds) == recorded + b"\0" * (len(recorded) % 2)
    errors, warnings, out = dicom_validate(tmp_path / "clip.dcm", iod="VideoPhotographicImage",
                                           decode=False)
    assert (errors, warnings) == (0, 0), out


def test_audio_is_dropped_by_copying_the_video_packets(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", audio=True)
    clip = probe(source)
    assert clip.has_audio and clip.audio_codec == "aac" and not clip.as_recorded
    remux_mp4(source, tmp_path / "video.mp4")
    remuxed = probe(tmp_path / "video.mp4")
    assert remuxed.as_recorded and not remuxed.has_audio and remuxed.frames == 45
    ds = wrap(remuxed, tmp_path / "video.mp4", tmp_path / "clip.dcm")
    with av.open(io.BytesIO(fragment(ds))) as stored, av.open(str(source)) as original:
        assert not stored.streams.audio
        ours = [bytes(p) for p in stored.demux(video=0) if p.size]
        theirs = [bytes(p) for p in original.demux(video=0) if p.size]
        assert ours == theirs  # the bit stream as recorded
    assert dicom_validate(tmp_path / "clip.dcm", iod="VideoPhotographicImage",
                          decode=False)[0] == 0
    assert probe(source, keep_audio=True).as_recorded


def test_hevc_quicktime_is_copied_into_mp4_as_main_profile(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mov", audio=True)
    clip = probe(source)
    assert (clip.media_type, clip.codec, clip.profile) == ("video/quicktime", "hevc", "Main")
    assert clip.transfer_syntax == HEVC_MAIN_51 and not clip.as_recorded
    remux_mp4(source, tmp_path / "video.mp4")
    mp4 = probe(tmp_path / "video.mp4")
    assert mp4.media_type == "video/mp4" and mp4.as_recorded
    ds = wrap(mp4, tmp_path / "video.mp4", tmp_path / "clip.dcm")
    assert ds.file_meta.TransferSyntaxUID == HEVC_MAIN_51
    assert ds.LossyImageCompressionMethod == "ISO_23008_2" and ds.NumberOfFrames == 45
    # dicom3tools 2022 knows the H.264 transfer syntaxes but not HEVC's (.107/.108, both
    # encapsulated the same way): validate the IOD under .104 so it parses the Pixel Data.
    ds.file_meta.TransferSyntaxUID = H264_HIGH_42_2D
    ds.save_as(tmp_path / "as_h264.dcm", enforce_file_format=True)
    errors, _, out = dicom_validate(tmp_path / "as_h264.dcm", iod="VideoPhotographicImage",
                                    decode=False)
    assert errors == 0, out


def test_vp8_webm_needs_and_gets_an_h264_reencode(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.webm", audio=True)
    clip = probe(source)
    assert (clip.codec, clip.transfer_syntax) == ("vp8", None)
    with pytest.raises(ValueError, match="re-encode"):
        wrap(clip, source, tmp_path / "clip.dcm")
    reencode_h264(source, tmp_path / "h264.mp4")
    h264 = probe(tmp_path / "h264.mp4")
    assert (h264.codec, h264.transfer_syntax, h264.frames) == ("h264", H264_HIGH_41, 45)
    assert not h264.has_audio and (h264.width, h264.height) == (320, 240)
    wrap(h264, tmp_path / "h264.mp4", tmp_path / "clip.dcm")
    assert dicom_validate(tmp_path / "clip.dcm", iod="VideoPhotographicImage",
                          decode=False)[0] == 0


@pytest.mark.parametrize(("stream", "expected"), [
    (("h264", "High", 41, "yuv420p", True), H264_HIGH_41),
    (("h264", "Main", 31, "yuvj420p", True), H264_HIGH_41),
    (("h264", "High", 42, "yuv420p", True), H264_HIGH_42_2D),
    (("h264", "High", 51, "yuv420p", True), None),  # 4K: no DICOM H.264 level allows it
    (("h264", "High 4:2:2", 41, "yuv422p", True), None),
    (("h264", "Baseline", 30, "yuv420p", True), None),  # FMO/ASO: not a High subset
    (("h264", "High", 41, "yuv420p", False), None),  # non-square pixels
    (("hevc", "Main", 153, "yuv420p", True), HEVC_MAIN_51),
    (("hevc", "Main 10", 150, "yuv420p10le", True), HEVC_MAIN10_51),
    (("hevc", "Main", 156, "yuv420p", True), None),  # level 5.2
    (("vp9", "Profile 0", None, "yuv420p", True), None),
])
def test_transfer_syntax_follows_profile_and_level(stream: tuple, expected: str | None) -> None:
    assert transfer_syntax_for(*stream) == expected


def test_bad_clips_are_refused_with_a_reason(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", frames=60)
    data = source.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "photo.mp4").write_bytes(PHOTO.read_bytes())
    for bad in ("cut.mp4", "noise.mp4", "empty.mp4", "photo.mp4"):
        with pytest.raises(UnreadableVideoError):
            probe(tmp_path / bad)
    with pytest.raises(ClipTooLongError, match="more than the 1 s"):
        probe(source, max_seconds=1)


def test_container_metadata_such_as_a_location_is_not_kept(tmp_path: Path) -> None:
    """Like a photo's EXIF GPS: an MP4 that says where it was recorded is copied into a new
    MP4 without its metadata; the bit stream stays as recorded."""
    plain = make_clip(tmp_path / "plain.mp4")
    tagged = tmp_path / "tagged.mp4"
    with av.open(str(plain)) as source, av.open(str(tagged), "w", format="mp4") as out:
        out.metadata["location"] = "+48.8577+002.2950/"
        out.metadata["creation_time"] = "2026-03-04T10:30:00.000000Z"
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    clip = probe(tagged)
    assert not clip.as_recorded and clip.recorded == datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
    remux_mp4(tagged, tmp_path / "clean.mp4")
    assert b"loci" in tagged.read_bytes()  # the MP4 location box (ISO/IEC 14496-12)
    assert b"loci" not in (tmp_path / "clean.mp4").read_bytes()
    with av.open(str(tmp_path / "clean.mp4")) as clean:
        assert "location" not in clean.metadata
    assert probe(tmp_path / "clean.mp4").as_recorded


def test_a_deidentified_clip_keeps_its_frames_and_loses_audio_and_dates(
        tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", audio=True)
    dated = tmp_path / "dated.mp4"
    with av.open(str(source)) as recorded, av.open(str(dated), "w", format="mp4") as out:
        out.metadata["creation_time"] = "2026-03-04T10:30:00.000000Z"
        streams = {s.index: out.add_stream_from_template(s) for s in recorded.streams}
        for packet in recorded.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    clip = probe(dated, keep_audio=True)
    assert clip.as_recorded and clip.has_audio  # stored with its audio (EBIW_VIDEO_KEEP_AUDIO)
    wrap(clip, dated, tmp_path / "clip.dcm")
    out = deidentify((tmp_path / "clip.dcm").read_bytes(), Pseudonyms(b"k" * 32),
                     retain_dates=False)
    (tmp_path / "deid.dcm").write_bytes(out.data)
    ds = pydicom.dcmread(tmp_path / "deid.dcm")
    assert (ds.PatientID.startswith("ANON"), ds.NumberOfFrames, ds.CineRate) == (True, 45, 30)
    assert float(ds.FrameTime) == pytest.approx(1000 / 30, abs=1e-3)
    with av.open(io.BytesIO(fragment(ds))) as clean, av.open(str(dated)) as original:
        assert not clean.streams.audio and "creation_time" not in clean.metadata
        assert [bytes(p) for p in clean.demux(video=0) if p.size] == \
            [bytes(p) for p in original.demux(video=0) if p.size]
    errors, _, report = dicom_validate(tmp_path / "deid.dcm", iod="VideoPhotographicImage",
                                       decode=False)
    assert errors == 0, report


def test_the_even_length_pad_is_dropped_from_the_stored_mp4(tmp_path: Path) -> None:
    recorded = make_clip(tmp_path / "clip.mp4").read_bytes()
    for mp4 in (recorded, recorded + struct.pack(">I4sB", 9, b"free", 0)):  # even and odd
        assert unpadded_mp4(mp4 + b"\0" * (len(mp4) % 2)) == mp4
    assert unpadded_mp4(b"not an mp4\0") == b"not an mp4\0"


def _first_picture(mp4: bytes) -> tuple[int, np.ndarray]:
    """(display rotation, the first picture turned upright as a player shows it)."""
    with av.open(io.BytesIO(mp4)) as container:
        frame = next(container.decode(video=0))
        return frame.rotation, np.rot90(frame.to_ndarray(format="rgb24"),
                                        k=round(frame.rotation / 90))


@pytest.mark.parametrize(("suffix", "audio", "path"), [
    (".mp4", False, "as recorded"),  # an Android clip with its video alone
    (".mp4", True, "remuxed"),  # audio dropped: packets copied into a new MP4
    (".mov", False, "remuxed"),  # an iPhone's HEVC QuickTime
])
def test_a_portrait_phone_clip_is_stored_upright(tmp_path: Path, suffix: str, audio: bool,
                                                 path: str) -> None:
    """A phone held upright records 320×240 pictures and a display matrix of -90°: the stored
    MP4 keeps that matrix, so it plays upright (240×320), and Rows/Columns hold the coded
    size, 240 rows of 320 columns (what the bit stream holds), not the displayed one."""
    source = make_clip(tmp_path / f"portrait{suffix}", size=(320, 240), audio=audio,
                       rotation=-90)
    clip = probe(source)
    assert clip.rotation == -90 and clip.displayed_size == (240, 320)
    assert (clip.width, clip.height) == (320, 240)
    assert clip.as_recorded == (path == "as recorded")
    payload = source
    if not clip.as_recorded:
        payload = tmp_path / "remuxed.mp4"
        remux_mp4(source, payload)
    ds = wrap(clip, payload, tmp_path / "clip.dcm")
    assert (ds.Rows, ds.Columns) == (240, 320)
    stored = unpadded_mp4(fragment(ds))
    rotation, upright = _first_picture(stored)
    assert rotation == -90 and upright.shape == (320, 240, 3)
    expected = upright_frame((240, 320)).astype(float)
    assert np.abs(upright.astype(float) - expected).mean() < 6.0
    poster = np.asarray(Image.open(io.BytesIO(poster_jpeg(stored))).convert("RGB"))
    assert poster.shape == (320, 240, 3)
    assert np.abs(poster.astype(float) - expected).mean() < 6.0


def test_a_reencoded_portrait_clip_keeps_its_rotation(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "portrait.mov", size=(320, 240), rotation=-90)
    target = tmp_path / "reencoded.mp4"
    reencode_h264(source, target)
    clip = probe(target)
    assert (clip.width, clip.height, clip.rotation) == (320, 240, -90)
    rotation, upright = _first_picture(target.read_bytes())
    assert rotation == -90
    assert np.abs(upright.astype(float) - upright_frame((240, 320)).astype(float)).mean() < 6.0
