"""Training from stores on object storage: `validate` opens an `s3://` store (no local-path
checks, which would call it missing) and `fit` trains from it, against moto's S3 server on
127.0.0.1 (a real HTTP server speaking S3; nothing of ours is mocked)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgt_train.cli import main
from sgt_train.demo.stores import DemoStores, build_stores

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")  # the test group installs moto[server]

BUCKET = "sgt-train-test"
AWS = {
    "AWS_ACCESS_KEY_ID": "sgt-test",
    "AWS_SECRET_ACCESS_KEY": "sgt-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> DemoStores:
    return build_stores(tmp_path_factory.mktemp("data"), num_train=12, num_eval=2, seed=0)


@pytest.fixture(scope="module")
def remote(endpoint: str, local: DemoStores) -> dict[str, str]:
    """The demo's scene and VQA stores, published to the bucket; their URLs by name."""
    import boto3

    from sgt_data.remote import publish_store

    stores = local
    boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)
    urls = {"scenes": f"s3://{BUCKET}/stores/scenes", "vqa": f"s3://{BUCKET}/stores/vqa"}
    options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "sgt-test", "secret": "sgt-test"}
    publish_store(stores.scenes, urls["scenes"], storage_options=options)
    publish_store(stores.vqa, urls["vqa"], storage_options=options)
    return urls


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def s3_env(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's AWS variables pointed at the server (for in-process `main`)."""
    for k, v in {**AWS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)


def _sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


@pytest.mark.usefixtures("s3_env")
def test_validate_opens_s3_stores(
    remote: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sets = _sets(
        f"data.sources.0.store={remote['scenes']}", f"data.sources.1.store={remote['vqa']}"
    )
    assert main(["validate", "tiny-sgt", *sets]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "12 per epoch of 12 available" in out, out  # the same counts as the local stores give


@pytest.mark.usefixtures("s3_env")
def test_validate_names_a_missing_s3_store_in_one_line(
    remote: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"s3://{BUCKET}/stores/nothing-here"
    sets = _sets(f"data.sources.0.store={missing}", f"data.sources.1.store={remote['vqa']}")
    assert main(["validate", "tiny-sgt", *sets]) == 2
    err = capsys.readouterr().err
    assert "the data mixture cannot be trained" in err
    lines = [line for line in err.splitlines() if missing in line]
    assert lines, err
    assert "relative paths start at" not in err  # not reported as a missing local folder
    assert "Traceback" not in err


def _fit(scenes: str, vqa: str, out: Path, env: dict[str, str]) -> list[dict[str, object]]:
    import json

    sets = _sets(
        f"data.sources.0.store={scenes}",
        f"data.sources.1.store={vqa}",
        f"output_dir={out}",
        "steps=3",
        "schedule.warmup_steps=0",
        "logging.every=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sgt_train.cli", "fit", "tiny-sgt", *sets],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (jsonl,) = out.rglob("metrics.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k in ("step", "loss", "ce", "mse")} for r in rows]


def test_fit_from_s3_gives_the_losses_of_the_local_stores(
    remote: dict[str, str], local: DemoStores, endpoint: str, tmp_path: Path
) -> None:
    # not the launch variables an in-process run of an earlier test left behind (its port is
    # still held by that process's store)
    launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch}
    env.update({**AWS, "AWS_ENDPOINT_URL": endpoint, "DS_ACCELERATOR": "cpu"})
    env["OMP_NUM_THREADS"] = "1"
    from_s3 = _fit(remote["scenes"], remote["vqa"], tmp_path / "s3", env)
    from_disk = _fit(str(local.scenes), str(local.vqa), tmp_path / "disk", env)
    assert len(from_s3) == 3, from_s3
    assert all("loss" in r for r in from_s3), from_s3
    assert from_s3 == from_disk
