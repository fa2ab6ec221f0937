"""Direct reads of the sharded zarr v3 arrays a store holds, without zarr.

The writer lays every flat array out in zarr v3's sharding format (see :mod:`sgt_data._shards`):
one file (or object) per shard, its inner chunks one after the other and their ``(offset,
nbytes)`` index at the end. A read here takes the shard's index once (kept per process), then
the byte ranges of the chunks a slice covers: an uncompressed slice is read straight into its
output buffer (a few bytes of a chunk read as only those bytes), a compressed chunk is read
whole and decoded with the same zstd as zarr's codec. Zarr's per-read machinery (an event-loop
round trip, a buffer object and a codec pipeline per chunk, ~1 ms) is skipped. An array in any
other encoding is read through zarr (:class:`ZarrArray`), so both give the same values.

Storage is reached through a :class:`ByteSource`: :class:`LocalSource` (``pread``) here, the
object-storage one in :mod:`sgt_data.remote`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from sgt_data.errors import StoreError

__all__ = [
    "ByteSource",
    "DirectArray",
    "LocalSource",
    "ZarrArray",
    "open_array",
    "shard_layout_from_metadata",
]

_ABSENT: Final = 2**64 - 1
#: shard indexes kept per array (16 bytes per inner chunk: 1-4 KiB each; 8192 cover 512 GiB
#: of 64 MiB image shards, so that random access over a large store seldom re-reads one)
_INDEX_CACHE: Final = 8192


class ByteSource(Protocol):
    """Where a store's files live: byte ranges of its files (objects) by key (``image/c/0``)."""

    def read_into(self, key: str, offset: int, out: memoryview) -> int:
        """Read ``key``'s bytes from ``offset`` into ``out``; the number read (short at its
        end). FileNotFoundError when there is no such file."""
        ...

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of ``key`` (fewer at its end). FileNotFoundError when absent."""
        ...

    def read_tail(self, key: str, n: int) -> bytes:
        """The last ``n`` bytes of ``key`` (all of it when shorter). FileNotFoundError when absent."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """All of ``key``. FileNotFoundError when absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` is there."""
        ...

    def where(self, key: str = "") -> str:
        """The path or URL of ``key`` (of the store with ``""``), for messages."""
        ...

    def zarr_array(self, key: str) -> Any:
        """The zarr array at ``key``, opened read-only (the fallback for other encodings)."""
        ...


class LocalSource:
    """A store in a local directory, read with ``pread`` (no file handle is kept: picklable,
    safe across forks)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _open(self, key: str) -> int:
        return os.open(self.root / key, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def read_into(self, key: str, offset: int, out: memoryview) -> int:
        fd = self._open(key)
        try:
            if hasattr(os, "preadv"):
                return os.preadv(fd, [out], offset)
            data = os.pread(fd, out.nbytes, offset)
            out[: len(data)] = data
            return len(data)
        finally:
            os.close(fd)

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        fd = self._open(key)
        try:
            return os.pread(fd, stop - start, start)
        finally:
            os.close(fd)

    def read_tail(self, key: str, n: int) -> bytes:
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            return os.pread(fd, min(n, size), max(0, size - n))
        finally:
            os.close(fd)

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def where(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def zarr_array(self, key: str) -> Any:
        import zarr

        return zarr.open_array(str(self.root / key), mode="r")


def _codec(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    return str(entry.get("name")), dict(entry.get("configuration") or {})


def _little(conf: dict[str, Any], itemsize: int) -> bool:
    endian = conf.get("endian")
    return endian == "little" or (endian is None and itemsize == 1)


def shard_layout_from_metadata(meta: dict[str, Any]) -> Any:
    """The :class:`~sgt_data._shards.ShardLayout` of an array from its ``zarr.json``, or None
    when its encoding is not the one the store writer writes (read it through zarr then)."""
    from sgt_data._shards import ShardLayout

    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        if meta.get("storage_transformers"):
            return None
        shape = [int(s) for s in meta["shape"]]
        if len(shape) not in (1, 2):
            return None
        dtype = np.dtype(str(meta["data_type"]))
        if dtype.kind not in "biuf":
            return None
        if meta.get("fill_value") not in (0, 0.0, False):
            return None
        grid_name, grid = _codec(meta["chunk_grid"])
        enc_name, enc = _codec(meta["chunk_key_encoding"])
        if grid_name != "regular" or enc_name != "default":
            return None
        codecs = list(meta["codecs"])
        if len(codecs) != 1:
            return None
        name, sharding = _codec(codecs[0])
        if name != "sharding_indexed" or sharding.get("index_location", "end") != "end":
            return None
        index = [_codec(c) for c in sharding["index_codecs"]]
        if not (
            len(index) == 2
            and index[0][0] == "bytes"
            and _little(index[0][1], 8)
            and index[1][0] == "crc32c"
        ):
            return None
        inner = [_codec(c) for c in sharding["codecs"]]
        if not inner or inner[0][0] != "bytes" or not _little(inner[0][1], dtype.itemsize):
            return None
        level: int | None = None
        if len(inner) == 2 and inner[1][0] == "zstd" and not inner[1][1].get("checksum", False):
            level = int(inner[1][1].get("level", 0))
        elif len(inner) != 1:
            return None
        chunk_shape = [int(c) for c in sharding["chunk_shape"]]
        shard_shape = [int(c) for c in grid["chunk_shape"]]
        chunk, shard = chunk_shape[0], shard_shape[0]
        if chunk <= 0 or shard % chunk:
            return None
        row = 1
        if len(shape) == 2:  # whole rows per chunk and per shard: bytes as in 1-D
            row = shape[1]
            if not (chunk_shape[1] == shard_shape[1] == row):
                return None
        return ShardLayout(
            chunk,
            shard // chunk,
            dtype.itemsize * row,
            level,
            str(enc.get("separator", "/")),
            len(shape),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@functools.cache
def _zstd() -> Any:
    from numcodecs import Zstd

    return Zstd()


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


class DirectArray:
    """A sharded array read without zarr (see the module docstring). Indexing with a slice of
    the first axis gives what zarr gives for it."""

    def __init__(self, source: ByteSource, key: str, meta: dict[str, Any], layout: Any) -> None:
        self._source = source
        self._key = key
        self._layout = layout
        self.dtype = np.dtype(str(meta["data_type"])).newbyteorder("<")
        self.shape: tuple[int, ...] = tuple(int(s) for s in meta["shape"])
        self.chunks: tuple[int, ...] = (layout.chunk, *self.shape[1:])
        self.shards: tuple[int, ...] = (layout.shard, *self.shape[1:])
        self._index_bytes = layout.chunks_per_shard * 16 + 4
        self._indexes: dict[int, NDArray[np.uint64] | None] = {}

    def _shard_key(self, shard: int) -> str:
        return f"{self._key}/{self._layout.key(shard)}"

    def _shard_index(self, shard: int, required: bool) -> NDArray[np.uint64] | None:
        """The ``(offset, nbytes)`` rows of a shard (None: no shard file, all fill value)."""
        if shard in self._indexes:
            idx = self._indexes[shard]
        else:
            key = self._shard_key(shard)
            try:
                raw = self._source.read_tail(key, self._index_bytes)
            except FileNotFoundError:
                idx = None
            else:
                if len(raw) < self._index_bytes:
                    raise StoreError(
                        f"{self._source.where(key)}: shard is {len(raw)} bytes, shorter than "
                        f"its index ({self._index_bytes} bytes)"
                    )
                body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
                if _crc32c(body) != crc:
                    raise StoreError(
                        f"{self._source.where(key)}: shard index checksum does not match"
                    )
                idx = np.frombuffer(body, dtype="<u8").reshape(-1, 2)
            if len(self._indexes) >= _INDEX_CACHE:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[shard] = idx
        if idx is None and required:
            raise StoreError(f"{self._source.where(self._shard_key(shard))}: shard is missing")
        return idx

    def read_bytes(self, start: int, stop: int, *, required: bool = False) -> NDArray[np.uint8]:
        """The stored bytes of elements ``start:stop`` (rows for a 2-D array); absent chunks
        read as the fill value (0) unless ``required`` (then a missing shard raises)."""
        lay = self._layout
        isz = lay.itemsize
        stop = min(stop, self.shape[0])
        if stop <= start:
            return np.zeros(0, dtype=np.uint8)
        out = np.zeros((stop - start) * isz, dtype=np.uint8)
        view = out.data
        chunk_bytes = lay.chunk * isz
        pos = start
        while pos < stop:
            c = pos // lay.chunk
            shard, k = divmod(c, lay.chunks_per_shard)
            idx = self._shard_index(shard, required)
            end = min(stop, (c + 1) * lay.chunk)
            if idx is None or int(idx[k, 0]) == _ABSENT:
                pos = end
                continue
            off, nbytes = int(idx[k, 0]), int(idx[k, 1])
            key = self._shard_key(shard)
            if lay.zstd_level is None:
                if nbytes != chunk_bytes:
                    raise StoreError(
                        f"{self._source.where(key)}: chunk {k} holds {nbytes} bytes, "
                        f"expected {chunk_bytes}"
                    )
                # the following chunks of the shard that lie right after this one on disk
                # are read in the same call
                k0, last_k = k, lay.chunks_per_shard - 1
                while end < stop and k < last_k:
                    nxt_off, nxt_n = int(idx[k + 1, 0]), int(idx[k + 1, 1])
                    if nxt_off != off + (k + 1 - k0) * chunk_bytes or nxt_n != chunk_bytes:
                        break
                    k += 1
                    end = min(stop, end + lay.chunk)
                first = off + (pos - c * lay.chunk) * isz
                want = (end - pos) * isz
                a = (pos - start) * isz
                got = self._source.read_into(key, first, view[a : a + want])
                if got != want:
                    raise StoreError(
                        f"{self._source.where(key)}: shard is truncated ({got} of {want} bytes "
                        f"at offset {first})"
                    )
            else:
                raw = self._source.read_range(key, off, off + nbytes)
                if len(raw) != nbytes:
                    raise StoreError(
                        f"{self._source.where(key)}: shard is truncated (chunk {k}: {len(raw)} "
                        f"of {nbytes} bytes)"
                    )
                try:
                    dec = _zstd().decode(raw)
                except Exception as exc:  # numcodecs raises RuntimeError for a bad frame
                    raise StoreError(
                        f"{self._source.where(key)}: chunk {k} cannot be decoded: {exc}"
                    ) from exc
                if len(dec) != chunk_bytes:
                    raise StoreError(
                        f"{self._source.where(key)}: chunk {k} decodes to {len(dec)} bytes, "
                        f"expected {chunk_bytes}"
                    )
                a = (pos - c * lay.chunk) * isz
                b = (end - c * lay.chunk) * isz
                out[(pos - start) * isz : (end - start) * isz] = np.frombuffer(dec, dtype=np.uint8)[
                    a:b
                ]
            pos = end
        return out

    def read(self, start: int, stop: int, *, required: bool = False) -> NDArray[Any]:
        """Elements (rows) ``start:stop`` as the array's dtype."""
        raw = self.read_bytes(start, stop, required=required)
        out = raw.view(self.dtype)
        if len(self.shape) == 2:
            out = out.reshape(-1, self.shape[1])
        return out.astype(self.dtype.newbyteorder("="), copy=False)

    def __getitem__(self, sel: slice) -> NDArray[Any]:
        start, stop, step = sel.indices(self.shape[0])
        if step != 1:
            raise ValueError("only contiguous slices are read directly")
        return self.read(start, stop)


class ZarrArray:
    """An array in an encoding :class:`DirectArray` does not read, read through zarr."""

    def __init__(self, arr: Any) -> None:
        self._arr = arr
        self.shape: tuple[int, ...] = tuple(arr.shape)
        self.chunks: tuple[int, ...] = tuple(arr.chunks)
        self.shards: tuple[int, ...] | None = tuple(arr.shards) if arr.shards is not None else None
        self.dtype = np.dtype(arr.dtype)

    def read(self, start: int, stop: int, *, required: bool = False) -> NDArray[Any]:
        """Elements (rows) ``start:stop``."""
        return np.asarray(self._arr[start:stop])

    def __getitem__(self, sel: slice) -> NDArray[Any]:
        return np.asarray(self._arr[sel])


def open_array(source: ByteSource, key: str, *, direct: bool = True) -> DirectArray | ZarrArray:
    """The array at ``key`` of a store: read directly when its encoding allows (and ``direct``),
    else through zarr."""
    meta = json.loads(source.read_bytes(f"{key}/zarr.json"))
    layout = shard_layout_from_metadata(meta) if direct else None
    if layout is not None:
        return DirectArray(source, key, meta, layout)
    return ZarrArray(source.zarr_array(key))
