"""What a worker holds while it delivers: a claim, leased rows of one study for one destination.

A claim is made and recorded by :mod:`.worker` under its ``token``; the senders
(:mod:`.pacs`, :mod:`.emr`) only read it and answer one :data:`Results` entry per row they
attempted (``None``: sent; a :class:`GatewayError`: why not). They never write outbox rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.gateways.errors import GatewayError


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    sop_uid: str
    version: int
    attempts: int


@dataclass(frozen=True)
class Claim:
    """Rows of one study for one destination, leased to one worker under ``token``."""

    token: str
    destination: str
    kind: str
    study_uid: str
    rows: tuple[ClaimedRow, ...]


Results = dict[int, GatewayError | None]
"""Per claimed row id, what sending it did: ``None`` (sent) or the error; a row absent was not
attempted."""

@dataclass(frozen=True)
class Job:
    """A worker's own job (re-encoding a staged clip, say): ``run`` does the claimed rows'
    work and answers one :data:`Results` entry per row, as a sender does; its claims are
    leased for ``lease_seconds`` (longer than the work may take, or a second worker takes it
    over meanwhile)."""

    run: Callable[[Claim], Results]
    lease_seconds: float
