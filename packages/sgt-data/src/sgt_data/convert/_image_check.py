"""Structural checks of JPEG and PNG files, for images stored verbatim without being decoded.

A truncated or overwritten file is caught without the cost of a decode (a JPEG decode, even a
DCT-scaled one, costs more than the rest of a COCO sample's conversion): a JPEG must have its
marker segments intact up to the first scan, entropy-coded data in which every 0xFF byte is
followed by a legal byte, and an end-of-image marker after the scan; a PNG must have every
chunk's CRC right and end with IEND. Bytes after the end marker are allowed (decoders ignore
them). What a structural check cannot see (a flipped bit inside the entropy-coded data of a JPEG)
is left to ``verify_images="full"``.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Final

__all__ = ["structure_problem"]

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: JPEG markers without a length field: TEM, RST0-7, SOI, EOI
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
#: in scan data: the end-of-image marker, or 0xFF followed by a byte that cannot follow it there
_SCAN_STOP: Final = re.compile(rb"\xff[\x01-\xbf\xd8\xd9]")


def structure_problem(data: bytes, fmt: str) -> str | None:
    """What is structurally wrong with a JPEG or PNG file's bytes (None: nothing found)."""
    if fmt == "JPEG":
        return _jpeg_problem(data)
    if fmt == "PNG":
        return _png_problem(data)
    raise ValueError(f"no structural check for {fmt} files")


def _jpeg_problem(data: bytes) -> str | None:
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return "JPEG does not start with an SOI marker"
    pos = 2
    # marker segments up to the first start-of-scan (SOS)
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > n:
            return f"JPEG truncated in its headers (at byte {pos} of {n})"
        if data[pos] != 0xFF:
            return f"JPEG header corrupt: no marker at byte {pos}"
        marker = data[pos + 1]
        if marker in _STANDALONE:
            if marker == 0xD9:
                return "JPEG ends (EOI) before any scan"
            pos += 2
            continue
        if pos + 4 > n:
            return f"JPEG truncated in its headers (at byte {pos} of {n})"
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            return f"JPEG header corrupt: segment length {length} at byte {pos}"
        pos += 2 + length
        if pos > n:
            return f"JPEG truncated in a header segment (needs {pos} bytes, has {n})"
        if marker == 0xDA:
            break
    # entropy-coded data (and, in progressive files, the segments between scans) up to EOI: a
    # 0xFF byte there is followed by a stuffed 0x00, a fill byte 0xFF, RSTn or a marker
    # (0xC0-0xFE), never by 0x01-0xBF nor SOI; the first 0xFF D9 is the end of the image
    hit = _SCAN_STOP.search(data, pos)
    if hit is None:
        return f"JPEG truncated: no end-of-image marker after the scan data ({n} bytes)"
    if data[hit.start() + 1] != 0xD9:
        return (
            f"JPEG scan data corrupt: byte 0xFF followed by 0x{data[hit.start() + 1]:02X} "
            f"at byte {hit.start()}"
        )
    return None


def _png_problem(data: bytes) -> str | None:
    n = len(data)
    if data[:8] != _PNG_SIGNATURE:
        return "PNG signature missing"
    pos = 8
    seen_idat = False
    mv = memoryview(data)
    while True:
        if pos + 12 > n:
            return f"PNG truncated: no IEND chunk ({n} bytes)"
        length, ctype = struct.unpack_from(">I4s", data, pos)
        stop = pos + 8 + length
        if stop + 4 > n:
            return f"PNG truncated inside chunk {ctype!r} at byte {pos} ({n} bytes)"
        (crc,) = struct.unpack_from(">I", data, stop)
        if zlib.crc32(mv[pos + 4 : stop]) != crc:
            return f"PNG chunk {ctype!r} at byte {pos} fails its CRC"
        seen_idat = seen_idat or ctype == b"IDAT"
        pos = stop + 4
        if ctype == b"IEND":
            return None if seen_idat else "PNG has no image data (IDAT)"
