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


def make_clip(path: Path, *, frames: int = 45, size: tuple[int, int] = (320, 240),
              audio: bool = False) -> Path:
    """Encode ``frames`` frames (the photo panned a little each frame, so the stream has real
    motion) at 30 fps into ``path``, whose suffix picks codec and container; with ``audio``,
    an AAC (MP4/MOV) or Opus (WebM) tone track of the same length."""
    codec, fmt, options = KINDS[path.suffix]
    width, height = size
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((width + frames, height)))
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=RATE, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if path.suffix == ".mov":
            video.codec_tag = "hvc1"
        sound = out.add_stream("libopus" if fmt == "webm" else "aac", rate=48000) \
            if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:, i:i + width]),
                                               format="rgb24")
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
