"""DICOMweb STOW-RS destination (PS3.18 10.5): one multipart/related POST per batch of a study.

TLS certificates are always verified (a private CA bundle may be given, never switched off);
redirects are not followed, so credentials go only to the configured host. Outcomes: 200 and
202 store what the response does not list as failed; 408, 429 and 5xx, timeouts and failed
connections are transient; other 4xx and 3xx are permanent. A failure listed in the response's
Failed SOP Sequence is classified by its Failure Reason like a DIMSE status.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from app.gateways.archive.pacs import OutgoingInstance, dimse_status_error
from app.gateways.errors import GatewayError, PermanentError, TransientError

CONNECT_TIMEOUT_SECONDS = 5.0
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


class BearerAuth(AuthBase):
    """``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def basic_auth(username: str, password: str) -> AuthBase:
    return HTTPBasicAuth(username, password)


@dataclass
class StowRsDestination:
    """A STOW-RS endpoint: ``url`` is the DICOMweb base (``…/dicom-web``)."""

    name: str
    url: str
    auth: AuthBase | None = None
    ca_bundle: str | None = None  # None: the system's trusted CAs
    timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._local = threading.local()

    def _session(self) -> requests.Session:
        """One pooled HTTP session per thread (requests sessions are not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def store(self, study_uid: str,
              instances: Sequence[OutgoingInstance]) -> dict[str, GatewayError | None]:
        """POST the instances to ``{url}/studies/{study_uid}``; see :class:`PacsDestination`."""
        boundary = uuid.uuid4().hex
        parts = []
        for instance in instances:
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                      instance.data, b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}",
                   "Accept": "application/dicom+json"}
        try:
            response = self._session().post(
                f"{self.url}/studies/{study_uid}", data=b"".join(parts), headers=headers,
                auth=self.auth, verify=self.ca_bundle or True, allow_redirects=False,
                timeout=(CONNECT_TIMEOUT_SECONDS, self.timeout_seconds))
        except requests.exceptions.SSLError as exc:
            raise PermanentError("TLS verification of the PACS failed") from exc
        except requests.exceptions.Timeout as exc:
            raise TransientError("the PACS did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            raise TransientError("cannot connect to the PACS") from exc
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"HTTP request failed ({type(exc).__name__})") from exc
        return _outcomes(response, [i.sop_uid for i in instances])


def _outcomes(response: requests.Response,
              sop_uids: Sequence[str]) -> dict[str, GatewayError | None]:
    """Per-instance outcomes of a STOW-RS response (never reads the body into a message)."""
    code = response.status_code
    if code in (408, 429) or code >= 500:
        raise TransientError(f"HTTP {code} from the PACS")
    if code not in (200, 202, 409, 400) or (code == 400 and not _is_json(response)):
        raise PermanentError(f"HTTP {code} from the PACS")
    failed: dict[str, GatewayError] = {}
    stored: set[str] = set()
    body = _dicom_json(response)
    for item in _sequence(body, _FAILED_SOP_SEQUENCE):
        uid = _first(item, _REFERENCED_SOP_INSTANCE_UID)
        reason = _first(item, _FAILURE_REASON)
        error = dimse_status_error(int(reason)) if isinstance(reason, int) else None
        if isinstance(uid, str):
            failed[uid] = error or PermanentError(f"HTTP {code}: the PACS refused the instance")
    for item in _sequence(body, _REFERENCED_SOP_SEQUENCE):
        uid = _first(item, _REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            stored.add(uid)
    outcomes: dict[str, GatewayError | None] = {}
    for uid in sop_uids:
        if uid in failed:
            outcomes[uid] = failed[uid]
        elif uid in stored or code in (200, 202):
            outcomes[uid] = None
        else:
            outcomes[uid] = PermanentError(f"HTTP {code} from the PACS")
    return outcomes


def _is_json(response: requests.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "")


def _dicom_json(response: requests.Response) -> dict[str, Any]:
    """The response's DICOM JSON object, or ``{}`` when it has none we can read."""
    if not _is_json(response):
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    if isinstance(body, list):  # some servers wrap the dataset in an array
        body = body[0] if body and isinstance(body[0], dict) else {}
    return body if isinstance(body, dict) else {}


def _values(item: object, tag: str) -> list[Any]:
    """The values of attribute ``tag`` of a DICOM JSON object (``[]`` when absent)."""
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _sequence(item: object, tag: str) -> list[dict[str, Any]]:
    """The items of sequence ``tag`` of a DICOM JSON object."""
    return [v for v in _values(item, tag) if isinstance(v, dict)]


def _first(item: object, tag: str) -> object:
    """The first value of attribute ``tag`` of a DICOM JSON object, or None."""
    values = _values(item, tag)
    return values[0] if values else None
