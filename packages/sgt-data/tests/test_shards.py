"""Shard files written without zarr must be the files zarr writes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ShardingCodec, ZstdCodec

from sgt_data._shards import ShardLayout, encode_shards, write_file


def _pair(tmp: Path, dtype: str, level: int | None) -> tuple[object, object]:
    kw = {
        "shape": (160,),
        "dtype": dtype,
        "chunks": (8,),
        "shards": (32,),
        "fill_value": 0,
        "compressors": ZstdCodec(level=level) if level else None,
    }
    by_zarr = zarr.open_group(str(tmp / "z"), mode="w").create_array("a", **kw)
    ours = zarr.open_group(str(tmp / "o"), mode="w").create_array("a", **kw)
    return by_zarr.with_config({"write_empty_chunks": True}), ours


@pytest.mark.parametrize("level", [None, 3])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int64"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 32, 33, 64, 70, 96])
def test_shards_are_byte_identical_to_zarrs(
    tmp_path: Path, dtype: str, level: int | None, n: int
) -> None:
    by_zarr, ours = _pair(tmp_path, dtype, level)
    rng = np.random.default_rng(n)
    # low-entropy data for odd sizes (zstd compresses), random for even ones; zeros included
    data = rng.integers(0, 4 if n % 2 else 200, n).astype(dtype)
    by_zarr[32 : 32 + n] = data  # type: ignore[index]
    layout = ShardLayout.of(ours)
    assert layout is not None
    assert layout.shard == 32
    files = encode_shards(data, layout)
    # a batch given as its samples' arrays (never joined) encodes to the same files
    cuts = sorted({int(c) for c in rng.integers(0, n + 1, 5)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    as_parts = encode_shards(pieces, layout)
    assert [b"".join(bytes(memoryview(b)) for b in f) for f in as_parts] == [
        b"".join(bytes(memoryview(b)) for b in f) for f in files
    ]
    for r, bufs in enumerate(files):
        path = tmp_path / "o" / "a" / layout.key(1 + r)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, bufs)
    z_files = sorted(p.relative_to(tmp_path / "z") for p in (tmp_path / "z").rglob("c/*"))
    o_files = sorted(p.relative_to(tmp_path / "o") for p in (tmp_path / "o").rglob("c/*"))
    assert z_files == o_files
    for f in z_files:
        assert (tmp_path / "z" / f).read_bytes() == (tmp_path / "o" / f).read_bytes(), f
    np.testing.assert_array_equal(ours[32 : 32 + n], data)  # type: ignore[index]


def test_other_encodings_are_left_to_zarr(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path), mode="w")
    start_index = g.create_array(
        "s",
        shape=(64,),
        dtype="uint8",
        chunks=(64,),
        serializer=ShardingCodec(chunk_shape=(8,), index_location="start"),
        compressors=None,
        fill_value=0,
    )
    unsharded = g.create_array("u", shape=(64,), dtype="uint8", chunks=(8,), fill_value=0)
    nonzero_fill = g.create_array(
        "f", shape=(64,), dtype="uint8", chunks=(8,), shards=(32,), fill_value=7
    )
    part_rows = g.create_array("t", shape=(8, 8), dtype="uint8", chunks=(2, 4), shards=(4, 8))
    for arr in (start_index, unsharded, nonzero_fill, part_rows):
        assert ShardLayout.of(arr) is None, arr


def test_row_chunked_2d_shards_are_byte_identical_to_zarrs(tmp_path: Path) -> None:
    """A store's ``index`` (int64 rows, whole rows per chunk, zstd): rows appended batch by
    batch, each write re-encoding the whole shard from the rows so far, as the writer does;
    zarr rewrites the shard from its existing chunks plus the new ones: the same bytes."""
    kw = {"shape": (40, 5), "dtype": "int64", "chunks": (4, 5), "shards": (16, 5)}
    by_zarr = zarr.open_group(str(tmp_path / "z"), mode="w").create_array("i", **kw)
    ours = zarr.open_group(str(tmp_path / "o"), mode="w").create_array("i", **kw)
    layout = ShardLayout.of(ours)
    assert layout is not None
    assert (layout.chunk, layout.chunks_per_shard, layout.itemsize, layout.ndim) == (4, 4, 40, 2)
    assert layout.key(2) == "c/2/0"
    rng = np.random.default_rng(0)
    rows = rng.integers(-(2**40), 2**40, (37, 5))
    for lo, hi in [(0, 3), (3, 9), (9, 10), (10, 23), (23, 37)]:  # batches of odd sizes
        by_zarr[lo:hi] = rows[lo:hi]
        for s in range(lo // 16, (hi - 1) // 16 + 1):
            files = encode_shards(rows[s * 16 : min(hi, (s + 1) * 16)], layout)
            assert len(files) == 1
            path = tmp_path / "o" / "i" / layout.key(s)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, files[0])
        for s in range(3):
            key = layout.key(s)
            z, o = tmp_path / "z" / "i" / key, tmp_path / "o" / "i" / key
            assert z.exists() == o.exists(), (hi, key)
            if z.exists():
                assert z.read_bytes() == o.read_bytes(), (hi, key)
    np.testing.assert_array_equal(ours[:37], rows)


@pytest.mark.parametrize("writev", [True, False])
def test_write_file_takes_more_buffers_than_one_writev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writev: bool
) -> None:
    if not writev:  # as on Windows
        monkeypatch.delattr("os.writev", raising=False)
    bufs = [np.full(3, k % 251, dtype=np.uint8) for k in range(2500)] + [b"", b"end\n"]
    (tmp_path / "f").write_bytes(b"x" * 20000)  # replaced, not overwritten in place
    write_file(tmp_path / "f", bufs)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(b) for b in bufs)
