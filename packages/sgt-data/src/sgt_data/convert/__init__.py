"""Converters from annotation formats into sample stores (see :func:`run_conversion`)."""

from sgt_data.convert._base import (
    Converter,
    ConvertOptions,
    WorkItem,
    merge_stores,
    parse_shard,
    run_conversion,
)
from sgt_data.convert.captions import CaptionConverter
from sgt_data.convert.coco import CocoInstancesConverter, CocoPanopticConverter, CocoStuffConverter
from sgt_data.convert.sa1b import Sa1bConverter
from sgt_data.convert.vqa import VqaConverter

__all__ = [
    "CaptionConverter",
    "CocoInstancesConverter",
    "CocoPanopticConverter",
    "CocoStuffConverter",
    "ConvertOptions",
    "Converter",
    "Sa1bConverter",
    "VqaConverter",
    "WorkItem",
    "merge_stores",
    "parse_shard",
    "run_conversion",
]
