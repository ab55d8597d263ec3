"""Wrapping an H.264 clip as a Video Photographic Image vs ``cp`` + fsync of the same file.

One real 1080p H.264 clip is encoded first (PyAV, from a real wound photo panned across the
frame, with an AAC track); then, on one core, in the same run and on the same disk:
ours as recorded (probe every packet + the first frame, write the DICOM object streaming the
MP4, fsync file and folder), ours with the audio dropped (the video packets copied into a new
MP4 first), and ``cp`` of the file plus the fsync our 2xx implies. Also reports the peak
Python heap and the growth of the process's peak RSS while wrapping, against the clip's size,
and what the worker's re-encode of a 1080p30 VP8 WebM (a browser's MediaRecorder clip, made
the same way, ``REENCODE_SECONDS`` long) to H.264 costs per second of clip.
Usage: .venv/bin/python bench/bench_video.py [SECONDS] [REPEATS]   (defaults: 30 s, 5)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from common import REPO, TESTDATA, median_ms, pin_one_core, table
from PIL import Image

from app.durable import fsync_dir
from app.pipeline.dicom.builder import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo
from app.pipeline.dicom.uids import uid_from_uuid
from app.pipeline.dicom.video import write_video_photo
from app.pipeline.video import probe, reencode_h264, remux_mp4

PHOTO = TESTDATA / "wounds" / "images" / "fuseg_train_0011.png"
WIDTH, HEIGHT, RATE = 1920, 1080, 30
REENCODE_SECONDS = 5
# (codec, container, options, bit rate): a phone's H.264, or a browser's VP8 (realtime speed)
CODECS = {"h264": ("libx264", "mp4", {"preset": "ultrafast", "profile": "high",
                                      "x264-params": "log-level=0"}, 16_000_000),
          "vp8": ("libvpx", "webm", {"deadline": "realtime", "cpu-used": "8"}, 4_000_000)}


def make_clip(path: Path, seconds: int, *, audio: bool, codec: str = "h264") -> None:
    """A 1080p30 clip of ``seconds`` near a phone's (H.264, 16 Mbit/s asked) or a browser's
    (VP8 WebM, 4 Mbit/s) bit rate: the photo panned 12 pixels a frame, with a sensor-like
    noise the encoder must spend bits on."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((WIDTH * 2, HEIGHT)))
    noise = np.random.default_rng(0).integers(-6, 7, (4, HEIGHT, WIDTH, 3), dtype=np.int16)
    frames = seconds * RATE
    encoder, container, options, bit_rate = CODECS[codec]
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(encoder, rate=RATE, options=options)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = bit_rate
        sound = out.add_stream("aac", rate=48000) if audio else None
        for i in range(frames):
            x = i * 12 % WIDTH
            pixels = np.clip(photo[:, x:x + WIDTH] + noise[i % 4], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, RATE)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            for start in range(0, 48000 * seconds - 1023, 1024):
                block = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
                block.sample_rate, block.pts = 48000, start
                for packet in sound.encode(block):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)


def durable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    fsync_dir(path.parent)


def ours(source: Path, out: Path, work: Path) -> None:
    """What intake does with a clip, streaming to a file: probe, remux if needed, wrap, fsync."""
    clip = probe(source, max_seconds=600)
    payload = source
    if not clip.as_recorded:
        payload = work / "video.mp4"
        remux_mp4(source, payload)
    with out.open("wb") as f:
        write_video_photo(clip, payload, f, PatientInfo("BENCH", "BENCH"),
                          StudyInfo(uid_from_uuid(uuid.uuid4()), datetime.now().astimezone()),
                          SeriesInfo(uid_from_uuid(uuid.uuid4()), 5),
                          InstanceInfo(uid_from_uuid(uuid.uuid4()), 1))
    durable(out)


def cp(source: Path, out: Path) -> None:
    subprocess.run(["cp", str(source), str(out)], check=True)
    durable(out)


def memory(source: Path) -> None:
    """In a fresh process: print the peak Python heap (bytes) and the growth of the peak RSS
    (KiB) while :func:`ours` wraps ``source``."""
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        ours(source, Path(tmp) / "c.dcm", Path(tmp))
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(heap_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)


def main() -> None:
    if sys.argv[1:2] == ["--memory"]:
        memory(Path(sys.argv[2]))
        return
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        work = Path(tmp)
        video_only, with_audio = work / "video-only.mp4", work / "with-audio.mp4"
        make_clip(video_only, seconds, audio=False)
        make_clip(with_audio, seconds, audio=True)
        webm = work / "browser.webm"
        make_clip(webm, REENCODE_SECONDS, audio=False, codec="vp8")
        pin_one_core()
        times: dict[str, list[float]] = {k: [] for k in ("asis", "remux", "cp", "reencode")}
        for _ in range(repeats):
            for key, run in (("asis", lambda: ours(video_only, work / "a.dcm", work)),
                             ("remux", lambda: ours(with_audio, work / "b.dcm", work)),
                             ("cp", lambda: cp(video_only, work / "copy.mp4"))):
                t0 = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reencode_h264(webm, work / "reencoded.mp4")
            times["reencode"].append(time.perf_counter() - t0)
        heap_peak, rss_growth = (int(v) for v in subprocess.run(
            [sys.executable, __file__, "--memory", str(with_audio)], check=True,
            capture_output=True, text=True).stdout.split())
        size = video_only.stat().st_size
        clip = probe(video_only)
    cp_ms = median_ms(times["cp"])
    print(f"1080p30 H.264 ({clip.profile}, level {clip.level}) clip, {seconds} s, "
          f"{size / 2**20:.1f} MiB; {repeats} repeats, one core\n")
    print(table(["path", "median ms", "MB/s", "ratio to cp + fsync"], [
        [label, f"{median_ms(times[key]):.0f}", f"{size / median_ms(times[key]) / 1e3:.0f}",
         f"{median_ms(times[key]) / cp_ms:.2f}"]
        for key, label in (("asis", "ebiw: probe + wrap as recorded + fsync"),
                           ("remux", "ebiw: probe + copy video packets (audio dropped) + wrap"),
                           ("cp", "cp + fsync of the same file"))]))
    print(f"\nwhile wrapping (remux path): peak Python heap {heap_peak / 2**20:.1f} MiB, "
          f"peak RSS growth {rss_growth / 1024:.1f} MiB, clip {size / 2**20:.1f} MiB")
    print(f"worker's re-encode of a {REENCODE_SECONDS} s 1080p30 VP8 WebM to H.264 (crf 20, "
          f"veryfast): median {median_ms(times['reencode']) / 1e3:.1f} s, "
          f"{median_ms(times['reencode']) / 1e3 / REENCODE_SECONDS:.2f} s per clip-second")


if __name__ == "__main__":
    main()
