"""Write DICOM Video Photographic Image objects (PS3.3 A.32.7) around a checked MP4.

The MP4 (:mod:`app.pipeline.video`: as recorded, or its video packets copied into a new MP4)
is the one fragment of the encapsulated Pixel Data, with the Transfer Syntax its bit stream
fits (PS3.5 8.2.7–8.2.11). The modules a photo shares with a video (patient, study, series,
equipment, VL Image, SOP Common) are :mod:`app.pipeline.dicom.builder`'s; the ones below are
the video's own. Like a photo, the output is a pure function of its inputs.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset
from pydicom.tag import Tag

from app.pipeline.decode import PhotoInfo
from app.pipeline.dicom.builder import (
    InstanceInfo,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    acquisition_context_module,
    file_meta,
    fragment_framing,
    general_acquisition_module,
    general_equipment_module,
    general_series_module,
    general_study_module,
    patient_module,
    patient_study_module,
    recognizable,
    sop_common_module,
    vl_image_module,
)
from app.pipeline.dicom.uids import IMPLEMENTATION_CLASS_UID
from app.pipeline.dicom.values import da, tm
from app.pipeline.video import HEVC_MAIN10_51, ClipInfo

VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
COPY_CHUNK_BYTES = 1 << 20
"""The clip is copied into the output in pieces of this size: memory does not grow with it."""
_FRAME_TIME = Tag(0x0018, 0x1063)


def recording_info(clip: ClipInfo) -> PhotoInfo:
    """The clip's device and time as the shared equipment and acquisition modules read them."""
    return PhotoInfo(media_type=clip.media_type, width=clip.width, height=clip.height,
                     make=clip.make, model=clip.model, software=clip.software,
                     acquired=clip.recorded)


def _general_image_module(ds: Dataset, clip: ClipInfo, payload_size: int, study: StudyInfo,
                          series: SeriesInfo, instance: InstanceInfo) -> None:
    """General Image Module (PS3.3 C.7.6.1) for a video: number, content date and time (the
    recording's, else the study's), what the pixels may show, and the lossy compression
    (ratio of the frames as 8-bit RGB to the encapsulated clip; ISO/IEC 14496-10 or 23008-2)."""
    content = clip.recorded or study.started
    ds.InstanceNumber = instance.number
    ds.PatientOrientation = ""
    ds.ContentDate = da(content)
    ds.ContentTime = tm(content)
    if instance.comments:
        ds.ImageComments = instance.comments
    ds.BurnedInAnnotation = "YES" if instance.burned_in_annotation else "NO"
    ds.RecognizableVisualFeatures = "YES" if recognizable(series, instance) else "NO"
    ratio = clip.width * clip.height * 3 * clip.frames / max(1, payload_size)
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = "ISO_23008_2" if clip.codec == "hevc" else "ISO_14496_10"


def _cine_module(ds: Dataset, clip: ClipInfo) -> None:
    """Cine Module (PS3.3 C.7.6.5): Frame Time (the nominal interval, ms), Cine Rate and the
    Effective Duration (s) of the recording."""
    ds.FrameTime = f"{clip.frame_time_ms:.6g}"
    ds.CineRate = max(1, round(float(clip.frame_rate)))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.EffectiveDuration = f"{clip.duration_s:.6g}"


def _multi_frame_module(ds: Dataset, clip: ClipInfo) -> None:
    """Multi-frame Module (PS3.3 C.7.6.6): Number of Frames, stepped by Frame Time."""
    ds.NumberOfFrames = clip.frames
    ds.FrameIncrementPointer = _FRAME_TIME


def _image_pixel_module(ds: Dataset, clip: ClipInfo) -> None:
    """Image Pixel Module (PS3.3 C.7.6.3) but Pixel Data, as PS3.5 8.2.7–8.2.11 require for an
    MPEG-4 AVC or HEVC stream: YBR_PARTIAL_420, 8 bits (16 allocated, 10 stored for HEVC
    Main 10), Rows and Columns of the stream, no Pixel Aspect Ratio (square pixels)."""
    deep = clip.transfer_syntax == HEVC_MAIN10_51
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = clip.height
    ds.Columns = clip.width
    ds.BitsAllocated = 16 if deep else 8
    ds.BitsStored = 10 if deep else 8
    ds.HighBit = 9 if deep else 7
    ds.PixelRepresentation = 0


def write_video_photo(clip: ClipInfo, payload: Path, out: BinaryIO, patient: PatientInfo,
                      study: StudyInfo, series: SeriesInfo, instance: InstanceInfo, *,
                      implementation_uid: str = IMPLEMENTATION_CLASS_UID) -> None:
    """Write ``payload`` (an MP4 holding ``clip``'s bit stream) to ``out`` as a Video
    Photographic Image Storage Part 10 file.

    Guarantees: the modules of the Video Photographic Image IOD (PS3.3 A.32.7) that we fill,
    each by one function; ``clip.transfer_syntax`` as Transfer Syntax (ValueError when the
    clip has none: re-encode it first); the series' body site as Anatomic Region (ValueError
    when it has none, see :func:`vl_image_module`: nothing is written then); the MP4 as the
    single fragment after an empty Basic Offset Table, byte for byte; deterministic output
    for the same inputs. Memory: the header and ``COPY_CHUNK_BYTES`` of the clip at a time.
    """
    if clip.transfer_syntax is None:
        raise ValueError("the clip's bit stream has no DICOM Transfer Syntax: re-encode it")
    info = recording_info(clip)
    ds = Dataset()
    patient_module(ds, patient)
    general_study_module(ds, study)
    patient_study_module(ds, study)
    general_series_module(ds, study, series)
    general_equipment_module(ds, info, series)
    general_acquisition_module(ds, info)
    size = payload.stat().st_size
    _general_image_module(ds, clip, size, study, series, instance)
    _cine_module(ds, clip)
    _multi_frame_module(ds, clip)
    _image_pixel_module(ds, clip)
    acquisition_context_module(ds)
    vl_image_module(ds, series, instance)
    sop_common_module(ds, study, instance, VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE)
    ds.file_meta = file_meta(VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, instance.sop_uid,
                             clip.transfer_syntax, implementation_uid=implementation_uid)
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    head, tail = fragment_framing(size)
    out.write(header.getvalue())
    out.write(head)
    with payload.open("rb") as source:
        shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
    out.write(tail)
