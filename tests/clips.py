"""Real video clips for the tests, encoded with PyAV from a real wound photo: what phones and
browsers send (H.264 MP4 with AAC audio, HEVC QuickTime, VP8 WebM)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from tests.conftest import WOUNDS

PHOTO = WOUNDS / "images" / "fuseg_train_0011.png"
RATE = 30

# (codec, container format, encoder options) by file suffix
KINDS = {
    ".mp4": ("libx264", "mp4", {"preset": "veryfast", "profile": "high"}),
    ".mov": ("libx265", "mov", {"x265-params": "log-level=error"}),
    ".webm": ("libvpx", "webm", {}),
}


def upright_frame(size: tuple[int, int], shift: int = 0, frames: int = 45) -> np.ndarray:
    """The picture a viewer should see at frame ``shift`` of a clip shown at ``size``
    (width, height): the photo, panned ``shift`` pixels."""
    width, height = size
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((width + frames, height)))
    return np.ascontiguousarray(photo[:, shift:shift + width])


def make_clip(path: Path, *, frames: int = 45, size: tuple[int, int] = (320, 240),
              audio: bool = False, rotation: int = 0, codec: str | None = None) -> Path:
    """Encode ``frames`` frames (the photo panned a little each frame, so the stream has real
    motion) at 30 fps into ``path``, whose suffix picks codec (unless ``codec``) and
    container; with ``audio``, an AAC (MP4/MOV) or Opus (WebM) tone track of the same length.

    ``rotation`` records the clip as a phone does: the coded pictures are ``size`` (landscape)
    and a display matrix turns them ``rotation`` degrees counter-clockwise (-90: a phone held
    upright), so that a player shows :func:`upright_frame` of the displayed size."""
    kind_codec, fmt, options = KINDS[path.suffix]
    codec = codec or kind_codec
    width, height = size
    shown = (height, width) if rotation % 180 else size
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=RATE,
                               options=options if codec == kind_codec else {})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if codec == "libx265":
            video.codec_tag = "hvc1"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("libopus" if fmt == "webm" else "aac", rate=48000) \
            if audio else None
        for i in range(frames):
            coded = np.rot90(upright_frame(shown, i, frames), k=-(rotation // 90))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(coded), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, RATE)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = 48000 * frames // RATE
            tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 48000))
            chunk = 960
            for start in range(0, samples - chunk + 1, chunk):
                block = av.AudioFrame.from_ndarray(
                    tone[start:start + chunk].astype(np.float32).reshape(1, -1),
                    format="flt", layout="mono")
                block.sample_rate, block.pts = 48000, start
                for packet in sound.encode(block):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path
