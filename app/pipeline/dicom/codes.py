"""Coded values: body sites (SNOMED CT), laterality, image source.

Body sites come from the DICOM standard's context groups (PS3.16) CID 4029 *Dermatology
Anatomic Site* and CID 4031 *Common Anatomic Region*, SNOMED CT concepts only, as pydicom ships
them (`anatomic_sites`, a copy checked against pydicom by the tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from app.pipeline.dicom.anatomic_sites import CID4029, CID4031

SNOMED = "SCT"
SNOMED_FHIR_SYSTEM = "http://snomed.info/sct"

# Sites whose photos are sensitive: viewing is restricted (issue: capture app, sensitive flag).
_SENSITIVE = re.compile(r"\b(genital|anus|anal|perine|breast|areola|nipple|labi(um|a)|clitoris"
                        r"|penis|scrot|vulva|urethral|buttock|gluteal|groin|inguinal|pubic"
                        r"|perianal)")

# Paired structures: a photo of one needs its side (R, L or B). Word match on the meaning.
_PAIRED = re.compile(r"\b(arm|forearm|hand|finger|thumb|digit|leg|foot|toe|knee|thigh|ankle|wrist"
                     r"|elbow|shoulder|hip|ear|eye|eyelid|eyebrow|cheek|breast|nipple|areola"
                     r"|axilla|buttock|gluteal|groin|inguinal|heel|sole|palm|calf|limb|extremity"
                     r"|temple|nail|helix|pinna|antitragus|tragus|concha|clavicle|scapula|humerus"
                     r"|femur|tibia|fibula|patella|calcaneus|antecubital|popliteal|malleolus"
                     r"|labium|canthus|ala|iliac|lung|kidney|orbit|cornea|iris|retina|sclera"
                     r"|parotid|submandibular|temporomandibular|sacroiliac|acromioclavicular"
                     r"|sternoclavicular|tarsal|mastoid|zygoma|temporal|(pre|post)auricular"
                     r"|auditory canal|intertragal|optic canal|nasolabial|rib|ilium|ureter"
                     r"|supraclavicular|infraclavicular|side of|lateral portion|triangle of neck)")

class Laterality(StrEnum):
    """DICOM Image Laterality (0020,0062)."""

    RIGHT = "R"
    LEFT = "L"
    BOTH = "B"
    UNPAIRED = "U"


LATERALITY = tuple(side.value for side in Laterality)
"""The Image Laterality codes as plain strings (for ``in`` on any value, and for choices)."""

PAIRED_SIDES = (Laterality.RIGHT, Laterality.LEFT, Laterality.BOTH)
"""The sides a photo of a paired structure must name."""

LATERALITY_SNOMED: dict[str, tuple[str, str]] = {Laterality.RIGHT: ("24028007", "Right"),
                     Laterality.LEFT: ("7771000", "Left"),
                     Laterality.BOTH: ("51440002", "Right and left")}


@dataclass(frozen=True)
class BodySite:
    """A SNOMED CT anatomic site as DICOM and FHIR code it."""

    code: str
    meaning: str
    sensitive: bool
    paired: bool


@cache
def body_sites() -> dict[str, BodySite]:
    """All selectable body sites by SNOMED CT code, dermatology sites first."""
    sites: dict[str, BodySite] = {}
    for code, meaning in (*CID4029, *CID4031):
        if code not in sites:
            sites[code] = BodySite(code, meaning, _SENSITIVE.search(meaning.lower()) is not None,
                                   _PAIRED.search(meaning.lower()) is not None)
    return sites


def body_site(code: str) -> BodySite:
    """The body site for a SNOMED CT code; ``KeyError`` if it is not in our table."""
    return body_sites()[code]
