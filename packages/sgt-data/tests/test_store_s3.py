"""Stores on object storage, against moto's S3 server started on 127.0.0.1 by the test:
``sgt-data convert --out s3://...`` uploads the store (manifest last), ``verify`` and
``inspect`` take the URL, every sample reads back equal to the same conversion's local store
(through ``SampleStore`` and the datasets, in forked workers too), and a missing or damaged
object is a one-line error naming its URL."""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from sgt_data.cli import main
from sgt_data.convert import CocoInstancesConverter, ConvertOptions, run_conversion
from sgt_data.convert.example import write_voc_coco
from sgt_data.datasets import SourceDataset
from sgt_data.errors import StoreError
from sgt_data.remote import publish_store
from sgt_data.schema import MixtureSource, TaskKind
from sgt_data.store import SampleStore, verify_store


def _load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sgt_data_tests_s3_server", Path(__file__).with_name("s3_server.py")
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


s3 = _load_helper()
BUCKET = "sgt"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3.s3_server() as url, pytest.MonkeyPatch.context() as mp:
        for k, v in s3.s3_env(url).items():
            mp.setenv(k, v)
        s3.s3_client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("src"), n_images=7, size=(120, 160))


@pytest.fixture(scope="module")
def local(source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "store"
    conv = CocoInstancesConverter(*source, ConvertOptions(name="voc", edge=True))
    run_conversion(conv, out, batch_size=3)
    return out


@pytest.fixture(scope="module")
def remote(endpoint: str, source: tuple[Path, Path]) -> str:
    """The same conversion as ``local``, written to s3:// by the CLI."""
    url = f"s3://{BUCKET}/stores/voc"
    ann, images = source
    argv = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    argv += ["--out", url, "--name", "voc", "--edge", "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    return url


def _same_samples(a: SampleStore, b: SampleStore) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        assert a.sample_id(i) == b.sample_id(i)
        assert a.tasks(i) == b.tasks(i)
        assert a.read_metadata(i) == b.read_metadata(i)
        np.testing.assert_array_equal(a.read_image(i), b.read_image(i))
        for task, variant in sorted(a.tasks(i), key=str):
            np.testing.assert_array_equal(
                a.read_target(i, task, variant), b.read_target(i, task, variant)
            )
        rec_a, _ = a.read_record(i)
        rec_b, _ = b.read_record(i)
        assert {k: v.tobytes() for k, v in rec_a.arrays.items()} == {
            k: v.tobytes() for k, v in rec_b.arrays.items()
        }


def test_convert_to_s3_verifies_and_reads_back_equal_to_the_local_store(
    remote: str, local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["verify", remote]) == 0
    assert capsys.readouterr().out.strip() == f"{remote}: OK"
    assert main(["inspect", remote]) == 0
    out = capsys.readouterr().out
    assert f"store      {remote}" in out
    assert "samples    7" in out
    r, loc = SampleStore.open(remote), SampleStore.open(local)
    assert r.path == remote
    assert r.manifest.arrays == loc.manifest.arrays  # the same bytes, checksum for checksum
    assert r.manifest.num_samples == loc.manifest.num_samples
    _same_samples(r, loc)
    # zarr's own reading of the remote arrays (the fallback path) agrees too
    z = r._source.zarr_array("labels/segments")
    direct = r._array("labels/segments")
    np.testing.assert_array_equal(z[0 : direct.shards[0]], direct[0 : direct.shards[0]])


def test_datasets_read_a_store_by_url(remote: str, local: Path) -> None:
    seg = MixtureSource(name="s", store=remote, task=TaskKind.SEGMENTATION, task_variant="instance")
    a = SourceDataset(seg, SampleStore.open(remote))
    b = SourceDataset(seg, SampleStore.open(local))
    assert len(a) == len(b) == 7
    for i in range(len(a)):
        sa, sb = a.get(i, 0), b.get(i, 0)
        assert sa.sample_id == sb.sample_id
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.target_image, sb.target_image)
        assert sa.instruction == sb.instruction


def _read_in_worker(args: tuple[SampleStore, int]) -> tuple[str, int]:
    store, i = args
    return store.sample_id(i), int(store.read_target(i, TaskKind.SEGMENTATION, "instance").sum())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_remote_store_reads_in_forked_workers(remote: str) -> None:
    store = SampleStore.open(remote)
    expected = [_read_in_worker((store, i)) for i in range(len(store))]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_in_worker, [(store, i) for i in range(len(store))])
    assert got == expected


def _copy(endpoint: str, src: str, dest: str) -> None:
    """Copy every object under the key prefix ``src`` to ``dest`` (same bucket)."""
    client = s3.s3_client(endpoint)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=src + "/")
    for obj in listing.get("Contents", []):
        key = obj["Key"]
        client.copy_object(
            Bucket=BUCKET,
            Key=dest + key[len(src) :],
            CopySource={"Bucket": BUCKET, "Key": key},
        )


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def test_a_missing_object_is_one_line_naming_its_url(endpoint: str, remote: str) -> None:
    _copy(endpoint, "stores/voc", "stores/missing")
    url = f"s3://{BUCKET}/stores/missing"
    store = SampleStore.open(url)
    s3.s3_client(endpoint).delete_object(Bucket=BUCKET, Key="stores/missing/image/c/0")
    with pytest.raises(StoreError) as info:
        store.read_image(0)
    msg = _one_line(info.value)
    assert f"{url}/image/c/0" in msg, msg
    assert "shard is missing" in msg, msg
    problems = verify_store(url)
    assert any(p.startswith(("array 'image'", "sample 0")) for p in problems), problems
    # the manifest gone: the URL is not a store, and the CLI says so in one line
    s3.s3_client(endpoint).delete_object(Bucket=BUCKET, Key="stores/missing/manifest.json")
    with pytest.raises(StoreError) as info:
        SampleStore.open(url)
    assert _one_line(info.value) == f"{url}: not a sample store (no manifest.json)"


def test_a_damaged_object_is_one_line_naming_its_url(
    endpoint: str, remote: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy(endpoint, "stores/voc", "stores/damaged")
    url = f"s3://{BUCKET}/stores/damaged"
    client = s3.s3_client(endpoint)
    key = "stores/damaged/labels/segments/c/0"
    raw = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    raw[-10] ^= 0xFF  # inside the shard index
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(raw))
    store = SampleStore.open(url)
    with pytest.raises(StoreError) as info:
        store.read_target(0, TaskKind.SEGMENTATION, "instance")
    msg = _one_line(info.value)
    assert f"{url}/labels/segments/c/0" in msg, msg
    assert "checksum" in msg, msg
    capsys.readouterr()
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{url}: ")
    assert "labels/segments" in out
    # a damaged manifest
    client.put_object(Bucket=BUCKET, Key="stores/damaged/manifest.json", Body=b"{not json")
    assert main(["inspect", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sgt-data inspect: error: s3://{BUCKET}/stores/damaged/manifest.json")
    assert "\n" not in err


def test_publishing_refuses_a_url_that_holds_objects_unless_overwrite(
    endpoint: str, local: Path, remote: str
) -> None:
    with pytest.raises(StoreError, match=r"stores/voc: holds \d+ objects already"):
        publish_store(local, remote)
    url = f"s3://{BUCKET}/stores/again"
    publish_store(local, url)
    publish_store(local, url, overwrite=True)
    assert verify_store(url) == []
    # an unfinished local store is not uploaded
    unfinished = local.parent / "unfinished"
    unfinished.mkdir()
    with pytest.raises(StoreError, match="not a finished store"):
        publish_store(unfinished, f"s3://{BUCKET}/stores/never")


def test_a_url_without_a_bucket_is_one_line(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "s3://no-such-bucket/x"
    capsys.readouterr()
    assert main(["inspect", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sgt-data inspect: error: {url}"), err
    assert "\n" not in err, err
