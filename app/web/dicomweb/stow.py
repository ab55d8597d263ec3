"""STOW-RS (PS3.18 10.5): the Store Instances response of a request's received objects.

The response is a DICOM JSON dataset (PS3.18 Table 10.5.3-2 … Store Instances Response
Module): Retrieve URL of the study, Referenced SOP Sequence (stored instances, each with its
Retrieve URL and, when its patient attributes were coerced, Warning Reason 0xB000) and Failed
SOP Sequence (each refusal with its Failure Reason). HTTP status per PS3.18 Table 10.5.3-1:
200 when every instance was stored as sent, 202 when some were stored and there are warnings
or failures, 409 when none was stored; 503 with ``Retry-After`` instead of 409 when every
refusal asks for a retry later (``Axxx``: disk full, no directory answered).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from app.workflow.dicom_intake import Received, Status

RETRY_AFTER_S = 30


def status_of(results: Sequence[Received]) -> int:
    """The HTTP status of a STOW-RS answer holding ``results`` (at least one)."""
    stored = [r for r in results if r.stored]
    if not stored:
        retry_later = all(0xA700 <= r.status <= 0xA7FF for r in results)
        return 503 if retry_later else 409
    return 200 if all(r.status == Status.SUCCESS for r in results) else 202


def response_dataset(results: Sequence[Received], base: str,
                     study_uid: str | None) -> dict[str, Any]:
    """The Store Instances Response as DICOM JSON; ``base`` is the DICOMweb root URL and
    ``study_uid`` the study of the request's URL (else the one study stored, if one)."""
    ds = Dataset()
    studies = {r.study_uid for r in results if r.stored}
    target = study_uid or (studies.pop() if len(studies) == 1 else None)
    if target:
        ds.RetrieveURL = f"{base}/studies/{target}"
    referenced, failed = [], []
    for result in results:
        item = Dataset()
        item.ReferencedSOPClassUID = result.sop_class_uid
        item.ReferencedSOPInstanceUID = result.sop_uid
        if result.stored:
            item.RetrieveURL = (f"{base}/studies/{result.study_uid}/series/"
                                f"{result.series_uid}/instances/{result.sop_uid}")
            if result.status != Status.SUCCESS:
                item.WarningReason = int(result.status)
            referenced.append(item)
        else:
            item.FailureReason = int(result.status)
            failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    return ds.to_json_dict()


def warnings(results: Sequence[Received], host: str) -> list[str]:
    """``Warning`` header values (RFC 7234 299) naming each distinct reason of a refusal or
    warning, with its status (and the keywords of coerced attributes); no patient data."""
    seen = dict.fromkeys((r.status, r.reason + (": " + ", ".join(r.coerced) if r.coerced
                                                else ""))
                         for r in results if r.status != Status.SUCCESS)
    return [f'299 {host} "{status:04X}: {reason}"' for status, reason in seen]
