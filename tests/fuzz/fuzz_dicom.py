"""atheris harness: damaged DICOM Part 10 bytes → every reader of stored objects.

Run: ``.venv/bin/python tests/fuzz/fuzz_dicom.py -max_len=65536 -max_total_time=600 CORPUS_DIR``
(``tests/fuzz/test_fuzz.py`` runs it briefly from instances built from a real photo). The
readers and the errors each may raise (anything else is a crash):

- the rendering's frame reader (:func:`app.pipeline.render.stored_frame`): ``UnreadableDicomError``;
- the DICOMweb index's header reader (:func:`app.web.dicomweb.index.read_header`):
  ``UnreadableDicomError``, which its ``refresh`` logs and skips;
- de-identification (``inspect``, ``deidentify``): ``NotDeidentifiable``;
- per-destination tag morphing (``Morph.apply``): ``PermanentError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import atheris
from harness import main

with atheris.instrument_imports(include=["app"]):
    from pydicom.tag import Tag

    from app.gateways.archive.morph import Morph, MorphRule
    from app.gateways.errors import PermanentError
    from app.pipeline.dicom.deid import NotDeidentifiable, Pseudonyms, deidentify, inspect
    from app.pipeline.dicom.read import UnreadableDicomError
    from app.pipeline.render import stored_frame
    from app.web.dicomweb.index import read_header

PSEUDONYMS = Pseudonyms(b"fuzz-key-" * 4)
MORPH = Morph((MorphRule("set", Tag("InstitutionName"), "Fuzz Hospital"),
               MorphRule("prefix", Tag("StudyDescription"), "FUZZ ")))


class OneFile:
    """An archive holding one file: the input."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, _row: Any) -> bytes:
        return self.data


def _frame(data: bytes) -> None:
    assert isinstance(stored_frame(data).frame, bytes)


def _header(data: bytes) -> None:
    body, transfer_syntax = read_header(OneFile(data), None)  # type: ignore[arg-type]
    assert isinstance(body, dict) and transfer_syntax


def _deidentify(data: bytes) -> None:
    inspect(data)
    deidentify(data, PSEUDONYMS, retain_dates=False)


READERS: tuple[tuple[Callable[[bytes], None], type[Exception]], ...] = (
    (_frame, UnreadableDicomError), (_header, UnreadableDicomError),
    (_deidentify, NotDeidentifiable), (MORPH.apply, PermanentError))
"""Each reader and the one error it may raise."""


def test_one_input(data: bytes) -> None:
    """One input through each reader: a result, or that reader's own error."""
    for read, refusal in READERS:
        with contextlib.suppress(refusal):
            read(data)


if __name__ == "__main__":
    main(test_one_input)
