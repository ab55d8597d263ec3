"""The outbox: deliveries to PACS destinations and EMR notifiers, with retries and dead letters.

By concern and by destination kind:

- :mod:`.outbox` queues rows in the transaction that accepts a photo, so an acknowledged photo
  always has its deliveries queued.
- :mod:`.worker` claims due rows under leases (exactly one worker holds a row at a time, across
  nodes), hands each claim to the sender of its kind (or to the worker's own job, for a queue
  such as :data:`REENCODE_QUEUE`) and records the outcomes under the claim's token: sent,
  retried after a capped exponential backoff with full jitter, or dead.
- :mod:`.pacs` sends a claim's archived, checked instances to a PACS destination in one batch.
- :mod:`.emr` notifies the EMR of a study (the current version always ends there).
- :mod:`.states` is what users and admins see of the rows, and the admin's retries.

Every name other modules use is importable from here.
"""

from app.workflow.delivery.claims import Claim, ClaimedRow, Job, Results
from app.workflow.delivery.outbox import REENCODE_QUEUE, Outbox, utcnow
from app.workflow.delivery.states import (
    STATES,
    DeliveryState,
    NotRetryable,
    ShownState,
    deliveries_by_study,
    delivery_counts,
    instance_deliveries,
    list_deliveries,
    retry_dead,
    retry_delivery,
    study_deliveries,
)
from app.workflow.delivery.worker import (
    ERROR_PAUSE_SECONDS,
    IDLE_SECONDS,
    BackgroundDelivery,
    DeliveryWorker,
    Outcome,
    drain,
)

__all__ = [
    "ERROR_PAUSE_SECONDS",
    "IDLE_SECONDS",
    "REENCODE_QUEUE",
    "STATES",
    "BackgroundDelivery",
    "Claim",
    "ClaimedRow",
    "DeliveryState",
    "DeliveryWorker",
    "Job",
    "NotRetryable",
    "Outbox",
    "Outcome",
    "Results",
    "ShownState",
    "deliveries_by_study",
    "delivery_counts",
    "drain",
    "instance_deliveries",
    "list_deliveries",
    "retry_dead",
    "retry_delivery",
    "study_deliveries",
    "utcnow",
]
