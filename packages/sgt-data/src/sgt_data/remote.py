"""Stores on object storage (``s3://bucket/prefix``, or any fsspec URL): the byte-range source
the store reader uses, and :func:`publish_store`, which uploads a finished local store.

Object storage is reached through fsspec (s3fs for ``s3://``: ``pip install 'sgt-data[s3]'``),
the library zarr itself opens URLs with, so the direct shard reads and zarr's fallback share
one client and one set of options. Credentials and the endpoint come from the usual places
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server, ``~/.aws``) or from ``storage_options`` (fsspec's keyword arguments for the filesystem).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from sgt_data.errors import StoreError

__all__ = ["RemoteSource", "is_url", "local_out", "publish_out", "publish_store"]

_log = logging.getLogger(__name__)

_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: files of a local store that are not uploaded (the commit journal, staged batches)
_LOCAL_ONLY: Final = ("_sgt_progress.json", "_staging")
_MANIFEST: Final = "manifest.json"


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL (``s3://...``) rather than a local path."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def _options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """fsspec's options for ``url``: the caller's, with the S3 endpoint from the environment
    (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``) unless given."""
    opts = dict(storage_options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith(("s3://", "s3a://")) and endpoint and "endpoint_url" not in opts:
        opts["endpoint_url"] = endpoint
    return opts


def _filesystem(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    try:
        import fsspec  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:  # fsspec and s3fs come with the s3 extra
        raise StoreError(
            f"{url}: reading object storage needs fsspec: pip install 'sgt-data[s3]' ({exc})"
        ) from exc
    try:
        fs, root = fsspec.core.url_to_fs(url, **_options(url, storage_options))
    except ImportError as exc:
        raise StoreError(
            f"{url}: this URL needs a filesystem library that is not installed ({exc}); "
            "for s3:// install sgt-data[s3]"
        ) from exc
    except ValueError as exc:
        raise StoreError(f"{url}: not a URL fsspec can open: {exc}") from exc
    return fs, str(root).rstrip("/")


def _oserror(where: str, exc: Exception) -> OSError:
    """``exc`` (a client library's error) as an OSError naming ``where``; a missing object
    stays a FileNotFoundError."""
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"{where}: no such object")
    return OSError(f"{where}: {type(exc).__name__}: {exc}")


class RemoteSource:
    """A store under a URL: ranged reads of its objects (one GET per range). Picklable; the
    filesystem is made afresh in each process (a forked worker does not share the client's
    event loop)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._pid = -1
        self._fs: Any = None
        self._root = ""
        self._fs_and_root()  # fail early on an unknown scheme or a missing library

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._pid = -1
        self._fs = None
        self._root = ""

    def _fs_and_root(self) -> tuple[Any, str]:
        if self._pid != os.getpid() or self._fs is None:
            opts = dict(self.storage_options)
            opts.setdefault("skip_instance_cache", True)
            self._fs, self._root = _filesystem(self.url, opts)
            self._pid = os.getpid()
        return self._fs, self._root

    def _path(self, key: str) -> str:
        root = self._fs_and_root()[1]
        return f"{root}/{key}" if key else root

    def where(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    def _cat(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        fs = self._fs_and_root()[0]
        try:
            data = fs.cat_file(self._path(key), start=start, end=end)
        except Exception as exc:  # a client's own error classes (botocore, aiohttp, ...)
            raise _oserror(self.where(key), exc) from exc
        return bytes(data)

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        return self._cat(key, start, stop)

    def read_into(self, key: str, offset: int, out: memoryview) -> int:
        data = self.read_range(key, offset, offset + out.nbytes)
        out[: len(data)] = data
        return len(data)

    def read_tail(self, key: str, n: int) -> bytes:
        return self._cat(key, -n)

    def read_bytes(self, key: str) -> bytes:
        return self._cat(key)

    def exists(self, key: str) -> bool:
        fs = self._fs_and_root()[0]
        try:
            return bool(fs.exists(self._path(key)))
        except Exception as exc:
            raise _oserror(self.where(key), exc) from exc

    def zarr_array(self, key: str) -> Any:
        import zarr
        from zarr.storage import FsspecStore

        # zarr runs its own event loop: it gets a filesystem of its own, made asynchronous
        url = self.where(key)
        store = FsspecStore.from_url(
            url, storage_options=_options(url, self.storage_options), read_only=True
        )
        return zarr.open_array(store=store, mode="r")


def publish_store(
    local_dir: str | os.PathLike[str],
    url: str,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Upload the finished store at ``local_dir`` to ``url``; returns the objects written.

    ``url`` must hold nothing yet, or with ``overwrite`` whatever it holds is deleted first.
    The manifest is written last, so readers never take a half-uploaded store for a finished
    one. The commit journal and staging folder stay local."""
    root = Path(local_dir)
    if not (root / _MANIFEST).is_file():
        raise StoreError(f"{root}: not a finished store (no {_MANIFEST}); nothing uploaded")
    fs, base, held = _held(url, storage_options)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in _LOCAL_ONLY
    )
    manifest = root / _MANIFEST
    if held and not overwrite:
        raise StoreError(
            f"{url}: holds {len(held)} objects already; use another URL or --overwrite"
        )
    try:
        if held:
            if fs.exists(f"{base}/{_MANIFEST}"):  # first, so the old store reads as unfinished
                fs.rm_file(f"{base}/{_MANIFEST}")
            fs.rm(held)
        for p in files:
            if p != manifest:
                fs.put_file(str(p), f"{base}/{p.relative_to(root).as_posix()}")
        fs.put_file(str(manifest), f"{base}/{_MANIFEST}")
    except Exception as exc:
        raise StoreError(
            f"{url}: upload failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return len(files)


def _held(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str, list[str]]:
    fs, base = RemoteSource(url, storage_options)._fs_and_root()
    try:
        return fs, base, list(fs.find(base))
    except FileNotFoundError:
        return fs, base, []
    except Exception as exc:
        raise StoreError(f"{url}: cannot be listed: {type(exc).__name__}: {exc}") from exc


def local_out(out: str, *, overwrite: bool = False) -> str:
    """Where a conversion or merge with ``--out out`` writes: ``out`` itself, or for a URL a
    local folder named after it (under the system's temporary directory, so that a re-run
    resumes there), after checking that the URL holds nothing unless ``overwrite``."""
    if not is_url(out):
        return out
    if not overwrite:
        _, _, held = _held(out, None)
        if held:
            raise StoreError(
                f"{out}: holds {len(held)} objects already; use another URL or --overwrite"
            )
    digest = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:16]
    local = str(Path(tempfile.gettempdir()) / f"sgt-data-publish-{digest}")
    _log.info("writing %s into %s first; it is uploaded when finished", out, local)
    return local


def publish_out(local: str, out: str, *, overwrite: bool = False) -> None:
    """After a conversion into ``local_out(out)``: upload the store to ``out`` when it is a
    URL, then remove the local copy (nothing to do for a local ``out``)."""
    if not is_url(out) or local == out:
        return
    publish_store(local, out, overwrite=overwrite)
    shutil.rmtree(local, ignore_errors=True)
