"""Untrusted video clips → a checked MP4 that DICOM may encapsulate (PS3.5 8.2.7–8.2.11).

PS3.5 lets MPEG-4 AVC/H.264 and HEVC/H.265 bit streams be encapsulated in an MP4 container
(ISO/IEC 14496-12/-14) or an MPEG-2 transport stream, the whole container as one fragment, with
Transfer Syntaxes that depend on the stream's profile and level:

- H.264 High (or its subsets Main and Constrained Baseline), level ≤ 4.1 → ``.4.102``
  (we never choose the BD-compatible ``.4.103``, a narrower subset of ``.4.102``);
  level 4.2 → ``.4.104`` (High Profile / Level 4.2 for 2D video);
- HEVC Main, level ≤ 5.1 → ``.4.107``; HEVC Main 10, level ≤ 5.1 → ``.4.108``;

each 4:2:0 with square pixels. A clip that fits is kept **as recorded**: an MP4 with only its
video track is encapsulated byte for byte; otherwise (a QuickTime ``.mov``, or audio to drop)
its video packets are copied, never decoded, into a new MP4. Anything else (VP8/VP9 WebM, a
level too high, 4:2:2…) must be re-encoded to H.264 (:func:`reencode_h264`), which is costly and
belongs in a background job.

Portrait phone clips: phones record the sensor's landscape picture and a display matrix (the
``tkhd`` matrix of MP4/QuickTime, FFmpeg's display-matrix side data) that turns it upright.
The matrix is part of the stream's parameters, which the remux copies with the packets
(FFmpeg ≥ 6.1 copies coded side data), and the re-encode writes it again: the stored MP4 plays
upright. Rows and Columns hold the coded picture's size (what the bit stream holds, as PS3.5
asks of encapsulated video), not the displayed one; :attr:`ClipInfo.rotation` says how the
picture is turned, and the still made from the first picture (:func:`poster_jpeg`) is turned
upright.

Memory: PyAV reads the file through its own buffers and one packet at a time; nothing here
holds more than one packet (or one decoded frame when re-encoding) of a clip.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.error
import av.stream
import av.video.stream
import numpy as np
from PIL import Image

H264_HIGH_41 = "1.2.840.10008.1.2.4.102"
H264_HIGH_42_2D = "1.2.840.10008.1.2.4.104"
HEVC_MAIN_51 = "1.2.840.10008.1.2.4.107"
HEVC_MAIN10_51 = "1.2.840.10008.1.2.4.108"

VIDEO_MEDIA_TYPES = ("video/mp4", "video/quicktime", "video/webm")

_H264_PROFILES = frozenset({"High", "Main", "Constrained Baseline"})
_QUICKTIME_BRAND = "qt  "
_AUDIO_KEPT_IN_MP4 = frozenset({"aac", "mp3", "mp2"})  # PS3.5 8.2.12, MP4 column
_PLAIN_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands", "creation_time",
                         "encoder"})
"""Container metadata that tells nothing but the file's type and time: a clip with any other
tag (location, device, user data) is copied into a new MP4 without it, as a photo loses its
EXIF."""
MAX_REENCODED_SIDE = 1920  # H.264 level 4.1/4.2 allow 1080p: larger clips are scaled to fit


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                          b"msf1", b"avif", b"avis"})  # ISO BMFF brands of still images
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska / WebM


def sniff_video(head: bytes) -> str | None:
    """The video media type the leading bytes announce: ``video/webm`` for an EBML header,
    ``video/quicktime`` or ``video/mp4`` for an ISO BMFF ``ftyp`` box whose brand is no still
    image (HEIC/AVIF share the box); None for anything else. Reads at most 12 bytes."""
    if head.startswith(_EBML):
        return "video/webm"
    if head[4:8] == b"ftyp" and head[8:12] not in _HEIF_BRANDS:
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    return None


class UnreadableVideoError(ValueError):
    """The bytes are no video clip we can read (corrupt, truncated, no video track); the
    message says why, in words for a user."""


class ClipTooLongError(UnreadableVideoError):
    """A clip longer than the allowed duration."""


@dataclass(frozen=True)
class ClipInfo:
    """What the container and the stream headers say about a clip's video track.

    ``transfer_syntax`` is the DICOM Transfer Syntax its bit stream fits, or None when it must
    be re-encoded; ``frames`` is counted from the demuxed packets, ``frame_rate`` is the
    average rate, ``duration_s`` the video track's length.
    """

    media_type: str
    codec: str
    profile: str | None
    level: int | None
    pixel_format: str
    width: int
    height: int
    frames: int
    frame_rate: Fraction
    duration_s: float
    has_audio: bool
    audio_codec: str | None
    as_recorded: bool  # an MP4 holding the video track alone: encapsulated byte for byte
    transfer_syntax: str | None
    make: str | None = None
    model: str | None = None
    software: str | None = None
    recorded: datetime | None = None  # the container's creation time, when it has one
    rotation: int = 0
    """Degrees counter-clockwise the display matrix turns the coded picture to show it
    (FFmpeg's ``av_display_rotation_get``: -90 for a phone held upright); 0 without one."""

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) as a player shows the clip, after :attr:`rotation`."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    @property
    def frame_time_ms(self) -> float:
        """Nominal time between frames in milliseconds (PS3.3 Frame Time)."""
        return 1000 / float(self.frame_rate)


def transfer_syntax_for(codec: str, profile: str | None, level: int | None,
                        pixel_format: str, square_pixels: bool) -> str | None:
    """The Transfer Syntax a bit stream may be encapsulated with unchanged, or None.

    ``level`` is FFmpeg's ``level``: H.264 ``level_idc`` (10 × the level) and HEVC
    ``general_level_idc`` (30 × the level). Guarantees: only 8-bit (10-bit for HEVC Main 10)
    4:2:0 streams with square pixels within the levels PS3.5 names get a Transfer Syntax.
    """
    if not square_pixels or level is None or level <= 0:
        return None
    if codec == "h264" and profile in _H264_PROFILES and pixel_format in ("yuv420p",
                                                                          "yuvj420p"):
        return H264_HIGH_41 if level <= 41 else H264_HIGH_42_2D if level == 42 else None
    if codec == "hevc" and level <= 153:  # 5.1 × 30
        if profile == "Main" and pixel_format in ("yuv420p", "yuvj420p"):
            return HEVC_MAIN_51
        if profile == "Main 10" and pixel_format == "yuv420p10le":
            return HEVC_MAIN10_51
    return None


def _open_options(path: Path) -> dict[str, str]:
    """FFmpeg's options for opening ``path``. An MP4 or QuickTime file describes its streams
    in its ``moov`` box, which the demuxer reads whole wherever it lies: FFmpeg need not also
    decode frames to find their parameters (most of the cost of opening a clip)."""
    with path.open("rb") as f:
        iso_bmff = sniff_video(f.read(12)) in ("video/mp4", "video/quicktime")
    return {"probesize": "32", "analyzeduration": "0"} if iso_bmff else {}


@contextmanager
def _opened(path: Path) -> Iterator[av.container.InputContainer]:
    """``path`` opened for demuxing; any FFmpeg failure becomes :class:`UnreadableVideoError`."""
    try:
        container = av.open(str(path), "r", options=_open_options(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise UnreadableVideoError("the file is not a video clip we can read "
                                   "(MP4, QuickTime or WebM)") from exc
    try:
        yield container
    except av.error.FFmpegError as exc:
        raise UnreadableVideoError("the video clip is damaged or truncated") from exc
    finally:
        container.close()


def _media_type(container: av.container.InputContainer) -> str:
    names = set(container.format.name.split(","))
    if "webm" in names or "matroska" in names:
        return "video/webm"
    if "mp4" in names or "mov" in names:
        brand = str(container.metadata.get("major_brand", ""))
        return "video/quicktime" if brand == _QUICKTIME_BRAND else "video/mp4"
    raise UnreadableVideoError("the file is not an MP4, QuickTime or WebM video clip")


def _tag(metadata: dict[str, str], *keys: str) -> str | None:
    """The first of ``keys`` the container's metadata has (iPhones write com.apple.quicktime.*,
    Android and encoders the plain ones), stripped; None when none is set."""
    for key in keys:
        value = str(metadata.get(key, "")).strip()
        if value:
            return value[:64]
    return None


def _recorded(metadata: dict[str, str]) -> datetime | None:
    """When the clip was recorded, from its metadata (ISO 8601 with an offset), if it says."""
    value = _tag(metadata, "com.apple.quicktime.creationdate", "creation_time")
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise UnreadableVideoError("the file holds no video track")
    stream = container.streams.video[0]
    if stream.codec_context.width <= 0 or stream.codec_context.height <= 0:
        raise UnreadableVideoError("the video track has no picture size")
    return stream


def _rotation(frame: av.VideoFrame) -> int:
    """The display rotation of a decoded picture, rounded to a quarter turn (-90, 0, 90,
    180)."""
    quarter = round((frame.rotation or 0) / 90) % 4
    return (0, 90, 180, -90)[quarter]


def _demuxed_frames(container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream) -> tuple[int, float, int]:
    """(video packets, seconds spanned, the first picture's display rotation) read from the
    whole file, decoding only until the first picture comes out; raises
    :class:`UnreadableVideoError` when the file ends inside the track (truncated) or no
    picture decodes, so a clip whose headers parse but whose data does not is refused before
    it is stored."""
    decoder = stream.codec_context
    decoder.thread_count = 1  # one picture: frame threads would cost more than they save
    count, first, last = 0, math.inf, -math.inf
    pictures: list[av.VideoFrame] = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        count += 1
        if not pictures:
            pictures = list(decoder.decode(packet))
        if packet.pts is not None:
            first = min(first, packet.pts)
            last = max(last, packet.pts + (packet.duration or 0))
    if count == 0:
        raise UnreadableVideoError("the video track holds no frames")
    if stream.frames and count < stream.frames:
        raise UnreadableVideoError(
            f"the video clip is truncated ({count} of its {stream.frames} frames)")
    if not pictures:
        pictures = list(decoder.decode(None))
    if not pictures:
        raise UnreadableVideoError("the video clip's first frame does not decode")
    span = float((last - first) * stream.time_base) if math.isfinite(first) and \
        stream.time_base else 0.0
    return count, span, _rotation(pictures[0])


def probe(path: Path, *, max_seconds: float | None = None, keep_audio: bool = False) -> ClipInfo:
    """Read a clip's container, stream headers and every video packet (decoding only the
    first picture) and say what it is and whether DICOM can take it as it is.

    Guarantees: a returned :class:`ClipInfo` describes a clip whose first frame decodes and
    whose video packets are all present; a damaged, truncated or non-video file raises
    :class:`UnreadableVideoError`, a clip longer than ``max_seconds`` :class:`ClipTooLongError`.
    ``as_recorded`` is true only for an MP4 (not QuickTime) with nothing to drop: no track
    but the video one (or ``keep_audio`` and one AAC/MP3 audio track PS3.5 allows in MP4) and
    no container metadata but its type and time.
    Memory: one packet at a time.
    """
    with _opened(path) as container:
        media_type = _media_type(container)
        stream = _video_stream(container)
        context = stream.codec_context
        header_seconds = float(stream.duration * stream.time_base) \
            if stream.duration and stream.time_base else (container.duration or 0) / 1e6
        if max_seconds is not None and header_seconds > max_seconds:
            raise ClipTooLongError(f"the clip lasts {header_seconds:.1f} s, more than the "
                                   f"{max_seconds:g} s allowed")
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_codec = audio.codec_context.name if audio is not None else None
        others = len(container.streams) - 1 - (1 if audio is not None else 0)
        frames, span, rotation = _demuxed_frames(container, stream)
        duration = header_seconds or span
        if max_seconds is not None and duration > max_seconds:
            raise ClipTooLongError(f"the clip lasts {duration:.1f} s, more than the "
                                   f"{max_seconds:g} s allowed")
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            rate = Fraction(frames, 1) / Fraction(duration) if duration else Fraction(30)
        sar = stream.sample_aspect_ratio or context.sample_aspect_ratio
        keeps_audio = keep_audio and audio_codec in _AUDIO_KEPT_IN_MP4
        info = ClipInfo(
            media_type=media_type, codec=context.name, profile=context.profile,
            level=context.level if context.level > 0 else None,
            pixel_format=context.format.name if context.format else "",
            width=context.width, height=context.height, frames=frames,
            frame_rate=Fraction(rate), duration_s=duration,
            has_audio=audio is not None, audio_codec=audio_codec,
            as_recorded=media_type == "video/mp4" and others == 0
            and (audio is None or keeps_audio) and set(container.metadata) <= _PLAIN_TAGS,
            transfer_syntax=transfer_syntax_for(
                context.name, context.profile, context.level,
                context.format.name if context.format else "",
                sar is None or sar == 0 or sar == 1),
            make=_tag(container.metadata, "com.apple.quicktime.make", "make"),
            model=_tag(container.metadata, "com.apple.quicktime.model", "model"),
            software=_tag(container.metadata, "com.apple.quicktime.software", "software"),
            recorded=_recorded(container.metadata), rotation=rotation)
    return info


def remux_mp4(source: Path, target: Path, *, keep_audio: bool = False) -> None:
    """Copy ``source``'s video packets (and, when ``keep_audio``, its AAC/MP3 audio ones)
    unchanged into a new MP4 at ``target``: the bit stream as recorded, in the container
    PS3.5 names, without other tracks and without the source's container metadata (location,
    device, creation time), with the video track's display matrix (a portrait clip stays
    upright). Nothing is decoded; one packet at a time in memory."""
    with _opened(source) as container:
        video = _video_stream(container)
        streams: list[av.stream.Stream] = [video]
        audio = container.streams.audio[0] if container.streams.audio else None
        if keep_audio and audio is not None and audio.codec_context.name in _AUDIO_KEPT_IN_MP4:
            streams.append(audio)
        with av.open(str(target), "w", format="mp4") as output:
            mapped = {s.index: output.add_stream_from_template(s) for s in streams}
            for packet in container.demux(streams):
                if packet.dts is None:  # the flush packet
                    continue
                packet.stream = mapped[packet.stream.index]
                output.mux(packet)


def reencode_h264(source: Path, target: Path, *, crf: int = 20) -> None:
    """Decode ``source``'s video track and encode it as H.264 High, 8-bit 4:2:0, into an MP4
    at ``target`` (audio dropped), at the clip's frame rate, scaled down to fit
    ``MAX_REENCODED_SIDE`` on its longer side and to even dimensions, with the source's
    display rotation (a portrait clip stays upright, its coded size unchanged). Costly (seconds per
    second of video): run it in a background job, never while a client waits. Memory: one
    decoded frame at a time plus the encoder's lookahead."""
    with _opened(source) as container:
        video = _video_stream(container)
        width, height = video.codec_context.width, video.codec_context.height
        scale = min(1.0, MAX_REENCODED_SIDE / max(width, height))
        width, height = (max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2))
        rate = video.average_rate or video.guessed_rate or Fraction(30)
        with av.open(str(target), "w", format="mp4") as output:
            encoded = output.add_stream("libx264", rate=Fraction(rate))
            encoded.width, encoded.height, encoded.pix_fmt = width, height, "yuv420p"
            encoded.options = {"crf": str(crf), "preset": "veryfast", "profile": "high"}
            # Constant frame rate: the frames' own (possibly variable) timestamps could round
            # to the same tick of 1/rate, which the encoder refuses.
            for index, frame in enumerate(container.decode(video)):
                if index == 0 and _rotation(frame):
                    encoded.set_display_rotation(_rotation(frame))
                picture = frame.reformat(width=width, height=height, format="yuv420p")
                picture.pts, picture.time_base = index, 1 / Fraction(rate)
                for packet in encoded.encode(picture):
                    output.mux(packet)
            for packet in encoded.encode(None):
                output.mux(packet)


def poster_jpeg(mp4: bytes, *, quality: int = 95) -> bytes:
    """The clip's first picture as a baseline JPEG (8-bit sRGB-like RGB as FFmpeg converts
    the stream's YUV), turned upright as its display matrix says (as a player shows it): the
    still a viewer shows before playing and thumbnails are made from.
    Raises :class:`UnreadableVideoError` when no picture decodes."""
    try:
        with av.open(io.BytesIO(mp4), "r") as container:
            stream = _video_stream(container)
            stream.codec_context.thread_count = 1
            for frame in container.decode(stream):
                upright = np.rot90(frame.to_ndarray(format="rgb24"), k=_rotation(frame) // 90)
                out = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(upright)).save(out, "JPEG",
                                                                    quality=quality)
                return out.getvalue()
    except av.error.FFmpegError as exc:
        raise UnreadableVideoError("the video clip is damaged") from exc
    raise UnreadableVideoError("the video clip's first frame does not decode")


def unpadded_mp4(fragment: bytes) -> bytes:
    """The MP4 an encapsulated fragment holds, without the zero byte that padded it to even
    length (PS3.5 A.4): the top-level boxes are walked and a lone trailing zero after the
    last whole box is dropped; anything else is returned as it is."""
    end = 0
    while end + 8 <= len(fragment):
        size = struct.unpack_from(">I", fragment, end)[0]
        if size == 1 and end + 16 <= len(fragment):
            size = struct.unpack_from(">Q", fragment, end + 8)[0]
        if size < 8:  # 0: "to the end of the file"; smaller: not a box
            return fragment
        end += size
    return fragment[:-1] if end == len(fragment) - 1 and fragment[-1] == 0 else fragment
