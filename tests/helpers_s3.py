"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1, reached over HTTP by s3fs, boto3 and DVC.

Use in a test module::

    from helpers_s3 import s3_bucket, s3_server  # noqa: F401

``s3_server`` (session scope) starts one ``ThreadedMotoServer`` on a free port and sets the credentials, region
and endpoint **only as environment variables** for the rest of the session, so that code under test, and the
``dvc`` subprocesses it starts, find them the way they would in production. ``s3_bucket`` (function scope) creates
a fresh, uniquely named bucket and deletes it afterwards. Both skip, with the reason, when moto is not installed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# Variables that would let a developer's real AWS setup leak into the tests (or slow them down): removed.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its ``endpoint_url`` and the environment variables the fixture set."""

    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        """A boto3 S3 client for this server, for checks and cleanup. It is given the fixture's credentials
        explicitly so that it still works in a test that removed them from the environment; code under test gets
        them from the environment only."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted (asked of the server, not of any cache)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _environment(endpoint: str, home: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # botocore >= 1.31 (so boto3, s3fs and DVC's s3 remote) reads it
        "AWS_EC2_METADATA_DISABLED": "true",  # no 1-2 s probe of 169.254.169.254 when credentials are missing
        "AWS_CONFIG_FILE": f"{home}/aws-config-absent",  # never the developer's ~/.aws files
        "AWS_SHARED_CREDENTIALS_FILE": f"{home}/aws-credentials-absent",
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto in server mode on 127.0.0.1:<free port>; credentials and endpoint exported as AWS_* variables."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        pytest.skip(f"moto[server] is not importable ({e}); install the dev extra: pip install -e '.[dev]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one INFO line per request otherwise
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = _environment(endpoint, str(tmp_path_factory.mktemp("aws-home")))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in _CLEARED:
                mp.delenv(name, raising=False)
            for name, value in env.items():
                mp.setenv(name, value)
            yield S3Server(endpoint, env)
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A new empty bucket on the session's moto server; emptied and deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    try:
        for key in s3_server.keys(name):
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - a test may have deleted it already; cleanup must not fail the test
        pass
