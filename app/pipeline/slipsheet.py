"""Slip-sheet sorting: which patient each photo of a batch belongs to, from its label frames.

Pure rules on values (no I/O), used by batch import (``app.workflow.batch``):

- **Capture order.** Photos are ordered by capture time (EXIF DateTimeOriginal, as the decode
  step reads it); a photo without one keeps its place in file order, right behind the photo
  that precedes it there (it takes that photo's time, ties broken by file order). Photos
  before the first timed one in file order come first.
- **Runs.** A frame whose barcodes give exactly one wristband identifier starts that patient's
  run, or continues it when the identifier is the run's own; the frames that follow belong to
  the run until the next such frame. A frame whose barcodes give several different
  identifiers ends the run: it and the frames after it are unsorted until the next label, so
  nothing is guessed. Frames before the first label are unsorted.
- **Label frame or lesion with a label.** Both identify the patient and start (or continue) a
  run. A frame is a *label frame* (stored in the label series, or dropped by configuration)
  when its wristband barcodes cover at least a given fraction of the frame
  (:func:`label_area`, the largest symbol's bounding box over the frame's area): a slip sheet
  or wristband photographed to be read fills the frame, a label lying beside a lesion does
  not. Below that fraction the frame is a clinical photo assigned to the patient directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

Identity = tuple[str, str]
"""A wristband identifier as (MRN, issuer); the issuer is "" when the label names none."""


@dataclass(frozen=True)
class Frame:
    """One photo of a batch as the sorting sees it.

    ``order`` is its position in file order; ``acquired`` its capture time (all frames' times
    must be comparable: all aware or all naive); ``identities`` the distinct wristband
    identifiers its barcodes gave (empty: none).
    """

    key: str
    order: int
    acquired: datetime | None
    identities: tuple[Identity, ...] = ()


def capture_order(frames: Iterable[Frame]) -> list[Frame]:
    """The frames in capture order (see the module docstring); deterministic for any input
    order (ties: file order, then key)."""
    in_files = sorted(frames, key=lambda f: (f.order, f.key))
    keyed = []
    last: datetime | None = None
    for frame in in_files:
        if frame.acquired is not None:
            last = frame.acquired
        keyed.append(((last is not None, last or 0), frame.order, frame.key, frame))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def assign(frames: Iterable[Frame]) -> dict[str, Identity | None]:
    """Each frame's patient (its run's identifier) or None (unsorted), by the rules of the
    module docstring. Guarantees: every frame's key is in the result."""
    result: dict[str, Identity | None] = {}
    current: Identity | None = None
    for frame in capture_order(frames):
        distinct = set(frame.identities)
        if len(distinct) == 1:
            current = next(iter(distinct))
        elif len(distinct) > 1:
            current = None
        result[frame.key] = current
    return result


def label_area(corners: Sequence[Sequence[tuple[float, float]]], width: int,
               height: int) -> float:
    """The largest symbol's share of the frame: its outline's bounding box (clipped to the
    frame) over ``width`` × ``height``; 0.0 without symbols. Corners are in the same upright
    image of ``width`` × ``height`` pixels."""
    best = 0.0
    for outline in corners:
        if not outline:
            continue
        xs = [min(max(x, 0.0), float(width)) for x, _ in outline]
        ys = [min(max(y, 0.0), float(height)) for _, y in outline]
        best = max(best, (max(xs) - min(xs)) * (max(ys) - min(ys)) / float(width * height))
    return best
