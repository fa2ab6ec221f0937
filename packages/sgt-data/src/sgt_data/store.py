"""Sample stores on disk: a Zarr v3 group written batch by batch, and its reader.

Layout (see the package README for the reasoning)::

    STORE/
      zarr.json              group; attributes["sgt"] = layout description (fields, columns, task bits)
      index                  int64 (N, C): height, width, task bits, crc32, then per field offset, length
      image                  uint8 flat: the source image files' bytes (JPEG/PNG, verbatim)
      labels/<name>          flat label maps (row-major), e.g. labels/segments uint16, labels/edge uint8
      meta                   uint8 flat: one UTF-8 JSON record per sample
      manifest.json          the StoreManifest (written last; its presence marks a finished store)
      _sgt_progress.json     the commit journal (committed items/samples, field extents, skipped)

Every flat array is sharded; each batch of samples starts on a shard boundary of every array, so
no batch makes zarr rewrite a shard holding committed samples (zarr rewrites whole shards). A
batch is committed by writing its data, then atomically replacing the journal; readers of an
unfinished store see nothing, and a re-run resumes after the last committed batch, overwriting
whatever an interrupted batch left behind.

The code lives in private modules, one job each: ``_store_layout`` (fields, index columns, task
bits, a sample's stored form), ``_frames`` (label-map frames), ``_store_stage`` (batches encoded
into shard files), ``_store_writer``, ``_store_reader``, ``_store_digest`` (array checksums) and
``_store_verify``; this module is their public face.
"""

from __future__ import annotations

from sgt_data._frames import _decode_frame as _decode_frame
from sgt_data._frames import encode_frame
from sgt_data._store_digest import _array_digest as _array_digest
from sgt_data._store_layout import (
    IMAGE_FIELD,
    JOURNAL_FILE,
    LAYOUT_VERSION,
    MANIFEST_FILE,
    META_FIELD,
    TASK_BITS,
    FieldSpec,
    SampleRecord,
    label_field,
    seal_record,
)
from sgt_data._store_reader import SampleStore
from sgt_data._store_stage import STAGING_DIR, BatchStager, StagedBatch
from sgt_data._store_verify import verify_store
from sgt_data._store_writer import StoreWriter

__all__ = [
    "IMAGE_FIELD",
    "JOURNAL_FILE",
    "LAYOUT_VERSION",
    "MANIFEST_FILE",
    "META_FIELD",
    "STAGING_DIR",
    "TASK_BITS",
    "BatchStager",
    "FieldSpec",
    "SampleRecord",
    "SampleStore",
    "StagedBatch",
    "StoreWriter",
    "encode_frame",
    "label_field",
    "seal_record",
    "verify_store",
]
