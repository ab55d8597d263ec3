"""Small seed inputs for the fuzz harnesses (made on the fly: nothing binary is committed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def image_seeds() -> dict[str, bytes]:
    """One tiny image per accepted format and JPEG flavour (baseline, progressive, rotated)."""
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    seeds: dict[str, bytes] = {}
    for name, fmt, kwargs in [
            ("baseline.jpg", "JPEG", {"quality": 80}),
            ("progressive.jpg", "JPEG", {"quality": 80, "progressive": True}),
            ("image.png", "PNG", {}), ("image.tiff", "TIFF", {}),
            ("image.webp", "WEBP", {"quality": 80})]:
        out = io.BytesIO()
        image.save(out, fmt, **kwargs)
        seeds[name] = out.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoded and encoded again
    exif[0x010F] = "Phone"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80, exif=exif.tobytes())
    seeds["rotated.jpg"] = out.getvalue()
    grey = io.BytesIO()
    image.convert("LA").save(grey, "PNG")
    seeds["grey-alpha.png"] = grey.getvalue()
    return seeds


WRISTBAND_SEEDS = (
    "15182881", "MRN:00123456", "00123456^^^HOSP-A^MR", "(8018)951234567890123456",
    "\x1d8018951234567890123456", "]C18018951234567890123456", "00123456|ENC1001",
    "PID=00123456;ENC=ENC1001", "A1234567", "",
)


def write_corpus(folder: Path, seeds: dict[str, bytes] | None = None,
                 texts: tuple[str, ...] = ()) -> Path:
    """Fill ``folder`` with the seeds (files) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (seeds or {}).items():
        (folder / name).write_bytes(data)
    for i, text in enumerate(texts):
        (folder / f"text-{i}").write_bytes(b"\x00" + text.encode())
    return folder
