"""A real S3 HTTP endpoint on loopback for the object-store archive: moto's server mode.

No MinIO (nor any other S3 server) is packaged for Debian or PyPI as a server, so the peer is
``moto.server`` (the ``moto[s3]`` package) in a subprocess on a free port: boto3 speaks real
HTTP to it, with SigV4, conditional PUTs (``If-None-Match``, answered 412) and 404s as AWS
answers them. It does not verify ``x-amz-checksum-sha256``, and keeps objects in memory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import requests

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ebiw-test", "AWS_SECRET_ACCESS_KEY": "ebiw-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
"""Environment of every process that talks to the peer (moto accepts any key)."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class S3Peer:
    """A running moto server with one empty bucket."""

    endpoint: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]  # boto3 clients are dynamically typed
        return boto3.client("s3", endpoint_url=self.endpoint, **{
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]})

    def objects(self) -> dict[str, bytes]:
        """Every object of the bucket: key -> bytes."""
        s3 = self.client()
        keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket) for item in page.get("Contents", [])]
        return {key: s3.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in keys}

    @property
    def settings(self) -> dict[str, str]:
        """``EBIW_*`` variables that put the archive in this bucket."""
        return {"EBIW_ARCHIVE_S3_BUCKET": self.bucket, "EBIW_ARCHIVE_S3_ENDPOINT": self.endpoint}


@contextmanager
def s3_peer(log: Path, bucket: str = "ebiw-archive") -> Iterator[S3Peer]:
    """Start moto's S3 server on a free loopback port, make ``bucket``; stop it at the end."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **CREDENTIALS})
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(endpoint, timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        peer = S3Peer(endpoint, bucket)
        peer.client().create_bucket(Bucket=bucket)
        yield peer
    finally:
        proc.terminate()
        proc.wait(timeout=10)
