"""An S3-compatible server for the tests: moto's server mode, started on 127.0.0.1 at a free
port in a thread of the test process (a real HTTP server speaking the S3 protocol, reached by
the same clients as AWS; nothing is mocked inside our code)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

#: credentials moto accepts (any value works; botocore insists on some)
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sgt-test",
    "AWS_SECRET_ACCESS_KEY": "sgt-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Run moto's S3 server for the duration; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, s3fs and sgt-data at the server."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


def s3_client(endpoint: str) -> object:
    """A boto3 S3 client of the server (to make buckets, delete or damage objects)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )
