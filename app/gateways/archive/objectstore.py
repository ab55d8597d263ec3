"""The archive on an S3-compatible object store, so that every node sees every instance.

Objects use the local archive's layout as keys (``<StudyUID>/<SeriesUID>/<SOPUID>.dcm``, the
``instance.path`` of the index), so a local archive copied into the bucket (``aws s3 sync``)
is served as it is. A PUT is atomic: an object is never visible half-written, and once S3
answers 200 it is durable. The ``instance`` table stays the authority on what is stored, as
with :class:`~app.gateways.archive.local.LocalArchive` (both implement
:class:`~app.gateways.archive.base.Archive`):

- an instance indexed with the same SHA-256 is a no-op, with other bytes a conflict;
- a new object is written with ``If-None-Match: *`` (S3, MinIO and others refuse to replace an
  existing key with 412). When the key exists with the same SHA-256 (``x-amz-meta-sha256``)
  nothing is written; with other bytes, it was left by an attempt that never committed its
  index row, and it is replaced. A store that ignores the condition simply replaces it: the
  same end state;
- the body carries ``x-amz-checksum-sha256``, so a store that checks it refuses a body
  damaged in transit.

Credentials come from the environment as boto3 reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, a profile or an instance role). Errors of
the store are raised as :class:`ArchiveUnavailableError` (an ``OSError``), a missing object as
``FileNotFoundError``, like the local archive's files.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.orm import Session

from app.db.models import Instance
from app.gateways.archive.base import ArchiveUnavailableError, InstanceKey, store_indexed

if TYPE_CHECKING:  # boto3-stubs[s3], installed with the test dependencies
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef

SHA256_METADATA = "sha256"  # x-amz-meta-sha256: hex digest of the object, written with it
_EXISTS = (409, 412)  # conditional PUT refused: the key exists, or a concurrent PUT won


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class ObjectStoreArchive:
    """Stores each SOP instance once in a bucket; same interface and guarantees as
    :class:`~app.gateways.archive.local.LocalArchive` (``store``, ``read``, ``restore``,
    ``check``), object keys in place of file paths (:meth:`key`)."""

    def __init__(self, bucket: str, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 4},
                          connect_timeout=5, read_timeout=60, max_pool_connections=16))

    @staticmethod
    def key(instance: Instance) -> str:
        """The object key of an indexed instance (its index path)."""
        return instance.path

    def store(self, db: Session, key: InstanceKey, data: bytes,
              attributes: dict[str, Any] | None = None) -> Instance:
        """Put ``data`` in the bucket and index it; return the index row (flushed, not
        committed).

        Guarantees: when this returns, the object is stored (S3 answered 200, or the same
        bytes were already there); an instance already indexed with the same SHA-256 is
        returned as it is; one indexed with other bytes raises :class:`ArchiveConflictError`
        and nothing changes; an object left by an attempt that never committed is replaced.
        """
        return store_indexed(db, key, data, attributes,
                             lambda path, digest: self._put_new(path, data, digest))

    def read(self, instance: Instance) -> bytes:
        """The stored bytes of an indexed instance; FileNotFoundError when the object is gone."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(instance))
            return response["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404:
                raise FileNotFoundError("the archived object is missing") from exc
            raise ArchiveUnavailableError(f"object store GET failed ({_status(exc)})") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"object store GET failed ({type(exc).__name__})") \
                from exc

    def restore(self, instance: Instance, data: bytes) -> None:
        """Put ``data`` over an indexed instance's object (one atomic PUT)."""
        self._put(self.key(instance), data, hashlib.sha256(data).hexdigest(), only_new=False)

    def delete(self, instance: Instance) -> None:
        """Delete the instance's object (S3 answers 204 whether or not it existed)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(instance))
        except ClientError as exc:
            raise ArchiveUnavailableError(f"object store DELETE failed ({_status(exc)})") \
                from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(
                f"object store DELETE failed ({type(exc).__name__})") from exc

    def check(self) -> str:
        """``ok`` when the bucket answers, else why not (status or error type, no PHI)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return f"failed: bucket answered {_status(exc)}"
        except BotoCoreError as exc:
            return f"failed: {type(exc).__name__}"
        return "ok"

    def _put_new(self, object_key: str, data: bytes, digest: str) -> None:
        """Create the object; keep an existing one with the same digest, replace any other
        (the caller checked that the index has no row for it)."""
        if not self._put(object_key, data, digest, only_new=True) and \
                self._digest(object_key) != digest:
            self._put(object_key, data, digest, only_new=False)

    def _put(self, object_key: str, data: bytes, digest: str, *, only_new: bool) -> bool:
        """One PUT with the SHA-256 as checksum and metadata, ``If-None-Match: *`` when
        ``only_new``. Returns False when that condition refused it (the key exists), True
        when written; any other failure raises :class:`ArchiveUnavailableError`."""
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket, "Key": object_key, "Body": data,
            "ContentType": "application/dicom", "ChecksumSHA256": checksum,
            "Metadata": {SHA256_METADATA: digest}}
        if only_new:
            request["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**request)
        except ClientError as exc:
            if only_new and _status(exc) in _EXISTS:
                return False
            raise ArchiveUnavailableError(f"object store PUT failed ({_status(exc)})") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"object store PUT failed ({type(exc).__name__})") \
                from exc
        return True

    def _digest(self, object_key: str) -> str | None:
        """The SHA-256 recorded with an existing object; None when it is absent or has none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise ArchiveUnavailableError(f"object store HEAD failed ({_status(exc)})") from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailableError(f"object store HEAD failed ({type(exc).__name__})") \
                from exc
        return head.get("Metadata", {}).get(SHA256_METADATA)
