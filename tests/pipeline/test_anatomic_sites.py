"""The body-site table the app ships equals the DICOM standard's context groups in pydicom.

Run this file as a script to regenerate ``app/pipeline/dicom/anatomic_sites.py`` after a
pydicom upgrade changes the groups.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.pipeline.dicom import anatomic_sites

TARGET = Path(anatomic_sites.__file__)
HEADER = '''"""SNOMED CT concepts of DICOM CID 4029 *Dermatology Anatomic Site* and CID 4031 *Common
Anatomic Region* (PS3.16), in the standard's order, as (code value, code meaning).

Generated from pydicom's context-group tables by ``python tests/pipeline/test_anatomic_sites.py``
(whose test checks that it still equals them), so that a worker does not load pydicom's whole
concept dictionary (about 16 MB per process) to look up a body site.
"""

'''


def from_pydicom() -> dict[str, tuple[tuple[str, str], ...]]:
    from pydicom.sr.codedict import codes

    return {name: tuple((c.value, c.meaning) for c in getattr(codes, name).concepts.values()
                        if c.scheme_designator == "SCT")
            for name in ("CID4029", "CID4031")}


def render() -> str:
    groups = from_pydicom()
    return HEADER + "\n".join(
        f"{name}: tuple[tuple[str, str], ...] = (\n" + "".join(f"    {row!r},\n" for row in rows)
        + ")\n" for name, rows in groups.items())


def test_shipped_table_equals_pydicoms_context_groups() -> None:
    groups = from_pydicom()
    assert groups["CID4029"] == anatomic_sites.CID4029
    assert groups["CID4031"] == anatomic_sites.CID4031
    assert len(groups["CID4029"]) > 100 and len(groups["CID4031"]) > 50


if __name__ == "__main__":
    TARGET.write_text(render())
    sys.exit(0)
