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

__all__ = ["structure_problem", "verbatim_header"]

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: JPEG markers without a length field: TEM, RST0-7, SOI, EOI
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
#: in scan data: the end-of-image marker, or 0xFF followed by a byte that cannot follow it there
_SCAN_STOP: Final = re.compile(rb"\xff[\x01-\xbf\xd8\xd9]")


#: (colour type, bit depths) of the PNG images every PNG decoder (and PIL) opens
_PNG_MODES: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
#: start-of-frame markers (SOF0-15 but DHT, JPG, DAC)
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def structure_problem(data: bytes, fmt: str) -> str | None:
    """What is structurally wrong with a JPEG or PNG file's bytes (None: nothing found)."""
    if fmt == "JPEG":
        return _jpeg_problem(data)[0]
    if fmt == "PNG":
        return _png_problem(data)
    raise ValueError(f"no structural check for {fmt} files")


def verbatim_header(
    data: bytes, max_pixels: int | None
) -> tuple[str, tuple[int, int], str | None] | None:
    """For a JPEG or PNG file: its format, (height, width) and structural problem (None: none
    found), from the one walk over its markers or chunks that the structural check makes; so a
    file stored verbatim needs no image library to open it. None (ask the image library) for
    any other file and for the uncommon ones whose header it leaves to the library: a JPEG
    frame other than 8-bit with 1, 3 or 4 components, a PNG whose IHDR is not first or names an
    unknown mode, zero sizes, or more than ``max_pixels`` pixels (the library's bomb check)."""
    if data[:3] == b"\xff\xd8\xff":
        problem, frame = _jpeg_problem(data)
        if frame is None:
            return None if problem is None else ("JPEG", (0, 0), problem)
        bits, h, w, comps = frame
        fmt, hw = "JPEG", (h, w)
        if bits != 8 or comps not in (1, 3, 4):
            return None
    elif data[:8] == _PNG_SIGNATURE:
        if len(data) < 33 or data[12:16] != b"IHDR":
            return None
        w, h, depth, ctype = struct.unpack_from(">IIBB", data, 16)
        if depth not in _PNG_MODES.get(ctype, ()):
            return None
        fmt, hw, problem = "PNG", (h, w), _png_problem(data)
    else:
        return None
    if not (h and w) or (max_pixels is not None and h * w > max_pixels):
        return None
    return fmt, hw, problem


def _jpeg_problem(data: bytes) -> tuple[str | None, tuple[int, int, int, int] | None]:
    """(The structural problem or None, the first frame header's (precision, height, width,
    components) if one came before the first scan)."""
    frame: list[tuple[int, int, int, int]] = []
    problem = _jpeg_walk(data, frame)
    return problem, (frame[0] if frame else None)


def _jpeg_walk(data: bytes, frame_out: list[tuple[int, int, int, int]]) -> str | None:
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
        if marker in _SOF and not frame_out and length >= 8 and pos + 10 <= n:
            frame_out.append(struct.unpack_from(">BHHB", data, pos + 4))  # P, Y, X, Nf
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
