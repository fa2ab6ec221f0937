"""Numba kernels behind :mod:`sgt_data.rle`. Imported lazily: importing this module compiles nothing.

Conventions: run-length counts are ``int64`` arrays, several RLEs concatenated with ``int64``
offsets (``counts[offs[i]:offs[i + 1]]`` belongs to RLE ``i``); counts alternate 0-run / 1-run in
column-major (Fortran) pixel order and the first count may be 0. Compressed strings are packed
the same way into one ``uint8`` buffer. Kernels return a status code (``OK`` or one of the
``ERR_*`` values) and write details into a small ``info`` array; the Python layer turns them into
:class:`sgt_data.errors.RLEError` messages. Every kernel compiles on first call with ``cache=True``
(the cache lives in ``NUMBA_CACHE_DIR`` when set, else in ``__pycache__``).

One module on purpose: the kernels are one job (run-length arithmetic on flat arrays) and call
across its sections (``label_map_from_strings`` parses strings, measures areas and paints;
``polygon_string`` rasterises and emits string groups with ``_emit``), and Numba invalidates a
cached kernel only when its own source file changes: a kernel compiled with a callee from
another file would keep the old callee's machine code in its cache after that file changed.
"""

from __future__ import annotations

import numba as nb
import numpy as np

OK = 0
ERR_CHAR = 1  # info: [item, byte offset, byte value]
ERR_TRUNCATED = 2  # info: [item, byte offset, -]
ERR_TOO_LONG = 3  # info: [item, byte offset, -]  (a count longer than 7 groups)
ERR_NEGATIVE = 4  # info: [item, count index, value]
ERR_SUM = 5  # info: [item, sum of counts, expected]
ERR_SIZE = 6  # info: [item, -, -]  (sizes differ where they must agree)

#: longest group sequence for one value: 7 x 5 bits covers every delta of counts < 2**32
_MAX_GROUPS = 7
#: minimum number of bytes of output before the parallel kernels are worth their start-up
PARALLEL_MIN_BYTES = 64 * 2**20

_jit = nb.njit(cache=True, nogil=True)
_inline = nb.njit(cache=True, nogil=True, inline="always")
_pjit = nb.njit(cache=True, nogil=True, parallel=True)


# --------------------------------------------------------------------------------------------
# compressed strings <-> counts
# --------------------------------------------------------------------------------------------


@_jit
def _read_value(buf, p, end):  # type: ignore[no-untyped-def]
    """One signed value of the 6-bit scheme starting at ``p``: (value, next p, status)."""
    x = np.int64(0)
    k = 0
    while True:
        if p >= end:
            return x, p, ERR_TRUNCATED
        c = np.int64(buf[p]) - 48
        if c < 0 or c > 63:
            return x, p, ERR_CHAR
        x |= (c & 0x1F) << (5 * k)
        p += 1
        k += 1
        if (c & 0x20) == 0:
            if c & 0x10:
                x |= np.int64(-1) << (5 * k)
            return x, p, OK
        if k >= _MAX_GROUPS:
            return x, p, ERR_TOO_LONG


@_inline
def _read_long(buf, p, end):  # type: ignore[no-untyped-def]
    """Like :func:`_read_value`, for the hot loops: (value, next p), next p = -1 on any error.

    The hot loops decode one-character values themselves (most values are) and call this for
    the rest; on an error they call :func:`_read_value` again for the details.
    """
    x = np.int64(0)
    sh = np.int64(0)
    while True:
        if p >= end:
            return x, np.int64(-1)
        c = np.int64(buf[np.uint64(p)]) - 48
        if c < 0 or c > 63:
            return x, np.int64(-1)
        x |= (c & 0x1F) << sh
        p += 1
        sh += 5
        if (c & 0x20) == 0:
            if c & 0x10:
                x |= np.int64(-1) << sh
            return x, p
        if sh >= 5 * _MAX_GROUPS:
            return x, np.int64(-1)


@_jit
def _value_error(buf, p, end, base, item, info):  # type: ignore[no-untyped-def]
    """Status and ``info`` of the malformed value at ``p`` (offsets relative to ``base``)."""
    _, q, st = _read_value(buf, p, end)
    info[0] = item
    info[1] = q - base if st != ERR_TOO_LONG else p - base
    info[2] = buf[q] if st == ERR_CHAR else 0
    return st


@_jit
def _offsets(lens):  # type: ignore[no-untyped-def]
    soffs = np.empty(lens.shape[0] + 1, np.int64)
    soffs[0] = 0
    for i in range(lens.shape[0]):
        soffs[i + 1] = soffs[i] + lens[i]
    return soffs


@_jit
def parse_strings(buf, soffs, areas, counts, coffs, info):  # type: ignore[no-untyped-def]
    """Packed strings -> packed counts; checks characters, signs and ``sum == h*w``."""
    n = soffs.shape[0] - 1
    m = 0
    coffs[0] = 0
    for i in range(n):
        p = soffs[i]
        end = soffs[i + 1]
        first = m
        total = np.int64(0)
        while p < end:
            c = np.int64(buf[np.uint64(p)]) - 48
            if c >= 0 and c < 32:  # one character: the common case
                x = c - ((c & 0x10) << 1)
                p += 1
            else:
                x, q = _read_long(buf, p, end)
                if q < 0:
                    return _value_error(buf, p, end, soffs[i], i, info)
                p = q
            j = m - first
            if j > 2:
                x += counts[np.uint64(m - 2)]
            if x < 0:
                info[0] = i
                info[1] = j
                info[2] = x
                return ERR_NEGATIVE
            counts[np.uint64(m)] = x
            total += x
            m += 1
            if total > areas[i]:
                # keep parsing (without storing) only to report the full sum
                while p < end:
                    x, p, st = _read_value(buf, p, end)
                    if st != OK:
                        break
                    j += 1
                    if j > 2:
                        x += counts[m - 2]
                    counts[m] = x
                    m += 1
                    total += x
                info[0] = i
                info[1] = total
                info[2] = areas[i]
                return ERR_SUM
        if total != areas[i]:
            info[0] = i
            info[1] = total
            info[2] = areas[i]
            return ERR_SUM
        coffs[i + 1] = m
    return OK


@_jit
def _emit(x, out, p):  # type: ignore[no-untyped-def]
    more = True
    while more:
        c = x & 0x1F
        x >>= 5
        more = (x != -1) if (c & 0x10) else (x != 0)
        if more:
            c |= 0x20
        out[p] = c + 48
        p += 1
    return p


@_jit
def counts_to_strings(counts, coffs, out, soffs):  # type: ignore[no-untyped-def]
    """Packed counts -> packed compressed strings (``out`` holds >= 7 bytes per count)."""
    n = coffs.shape[0] - 1
    p = 0
    soffs[0] = 0
    for i in range(n):
        a = coffs[i]
        for j in range(coffs[i + 1] - a):
            x = counts[a + j]
            if j > 2:
                x -= counts[a + j - 2]
            p = _emit(x, out, p)
        soffs[i + 1] = p
    return p


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)


@_jit
def _next_change(flat, words, pos, end, fg):  # type: ignore[no-untyped-def]
    """First index in ``[pos, end)`` whose byte is not of the run's kind, else ``end``.

    ``fg``: the run is foreground (nonzero bytes), else background (zeros). ``words`` is the
    uint64 view of ``flat``'s whole words: the scan steps a word (background: four) at a time.
    """
    while pos < end and (pos & 7) != 0:
        if (flat[np.uint64(pos)] != 0) != fg:
            return pos
        pos += 1
    if fg:
        while pos + 8 <= end:
            x = words[np.uint64(pos >> 3)]
            if ((x - _ONES) & ~x & _HIGHS) != np.uint64(0):  # some byte is zero
                break
            pos += 8
    else:
        while pos + 32 <= end:
            q = np.uint64(pos >> 3)
            if (
                words[q]
                | words[q + np.uint64(1)]
                | words[q + np.uint64(2)]
                | words[q + np.uint64(3)]
            ) != np.uint64(0):
                break
            pos += 32
        while pos + 8 <= end:
            if words[np.uint64(pos >> 3)] != np.uint64(0):
                break
            pos += 8
    while pos < end:
        if (flat[np.uint64(pos)] != 0) != fg:
            return pos
        pos += 1
    return end


@_jit
def encode_masks(flat, words, n, hw):  # type: ignore[no-untyped-def]
    """``n`` column-major masks of ``hw`` bytes each -> (packed strings, offsets).

    Any nonzero byte is foreground. ``words`` is ``flat``'s leading whole words viewed as
    uint64 (``flat`` must start on an 8-byte boundary).
    """
    soffs = np.empty(n + 1, np.int64)
    soffs[0] = 0
    cap = 64 + n * 16
    out = np.empty(cap, np.uint8)
    p = 0
    for i in range(n):
        base = i * hw
        end = base + hw
        prev2 = np.int64(0)
        prev1 = np.int64(0)
        j = 0
        pos = base
        fg = False
        while True:
            start = pos
            pos = _next_change(flat, words, pos, end, fg)
            c = np.int64(pos - start)
            x = c - prev2 if j > 2 else c
            if p + 8 > cap:
                cap = cap * 2
                grown = np.empty(cap, np.uint8)
                grown[:p] = out[:p]
                out = grown
            p = _emit(x, out, p)
            prev2 = prev1
            prev1 = c
            j += 1
            fg = not fg
            if pos >= end:
                break
        soffs[i + 1] = p
    return out[:p], soffs


# --------------------------------------------------------------------------------------------
# decoding into masks
# --------------------------------------------------------------------------------------------


@_jit
def decode_string_colmajor(buf, out, info):  # type: ignore[no-untyped-def]
    """One compressed string straight into a column-major mask (parse and fill fused)."""
    hw = out.shape[0]
    end = buf.shape[0]
    p = 0
    pos = np.int64(0)
    j = 0
    prev2 = np.int64(0)
    prev1 = np.int64(0)
    while p < end:
        c = np.int64(buf[np.uint64(p)]) - 48
        if c >= 0 and c < 32:  # one character: the common case
            x = c - ((c & 0x10) << 1)
            p += 1
        else:
            x, q = _read_long(buf, p, end)
            if q < 0:
                return _value_error(buf, p, end, 0, 0, info)
            p = q
        if j > 2:
            x += prev2
        if x < 0:
            info[0] = 0
            info[1] = j
            info[2] = x
            return ERR_NEGATIVE
        e = pos + x
        if e > hw:
            info[0] = 0
            info[1] = e
            info[2] = hw
            return ERR_SUM
        if x:
            _put_run(out, pos, e, np.uint8(j & 1), hw)
        pos = e
        prev2 = prev1
        prev1 = x
        j += 1
    if pos != hw:
        info[0] = 0
        info[1] = pos
        info[2] = hw
        return ERR_SUM
    return OK


#: block of the run writer: each run is written in whole blocks (vector stores), see _put_run
_BLOCK = 64
#: runs at least this long are written with a plain slice fill (memset)
_LONG_RUN = 2048


@_jit
def _put_run(out, pos, e, v, lim):  # type: ignore[no-untyped-def]
    """Write ``v`` to ``out[pos:e]``, possibly also to ``out[e:lim]`` after it.

    Runs are written in increasing order, so whatever lands past ``e`` is overwritten by the
    runs that follow (each writes from its own start); only ``lim`` (the buffer end) bounds
    the spill. Whole fixed-size blocks compile to a few vector stores, far cheaper than a
    ``memset`` call for the short runs most masks have.
    """
    if e - pos >= _LONG_RUN or e + _BLOCK > lim:
        out[pos:e] = v
        return
    q = np.uint64(pos)
    ue = np.uint64(e)
    while q < ue:
        for t in range(_BLOCK):
            out[q + np.uint64(t)] = v
        q += np.uint64(_BLOCK)


@_jit
def decode_strings_colmajor(buf, lens, hw, out, info):  # type: ignore[no-untyped-def]
    """Joined compressed strings (``buf``, bytes or uint8, and their ``lens``) -> consecutive
    column-major masks of ``hw`` bytes (parse and fill fused; checks characters, signs and
    ``sum == hw``)."""
    soffs = _offsets(lens)
    n = lens.shape[0]
    lim = out.shape[0]
    for i in range(n):
        p = soffs[i]
        end = soffs[i + 1]
        base = i * hw
        pos = base
        stop = base + hw
        j = 0
        prev2 = np.int64(0)
        prev1 = np.int64(0)
        while p < end:
            c = np.int64(buf[np.uint64(p)]) - 48
            if c >= 0 and c < 32:  # one character: the common case
                x = c - ((c & 0x10) << 1)
                p += 1
            else:
                x, q = _read_long(buf, p, end)
                if q < 0:
                    return _value_error(buf, p, end, soffs[i], i, info)
                p = q
            if j > 2:
                x += prev2
            if x < 0:
                info[0] = i
                info[1] = j
                info[2] = x
                return ERR_NEGATIVE
            e = pos + x
            if e > stop:
                # finish the sum only to report it
                total = e - base
                prev2 = prev1
                prev1 = x
                while p < end:
                    x, p, st = _read_value(buf, p, end)
                    if st != OK:
                        break
                    j += 1
                    if j > 2:
                        x += prev2
                    prev2 = prev1
                    prev1 = x
                    total += x
                info[0] = i
                info[1] = total
                info[2] = hw
                return ERR_SUM
            if x:
                _put_run(out, pos, e, np.uint8(j & 1), lim)
            pos = e
            prev2 = prev1
            prev1 = x
            j += 1
        if pos != stop:
            info[0] = i
            info[1] = pos - base
            info[2] = hw
            return ERR_SUM
    return OK


@_jit
def _fill_one(counts, a, b, dst, base):  # type: ignore[no-untyped-def]
    pos = base
    for j in range(b - a):
        e = pos + counts[a + j]
        dst[pos:e] = j & 1
        pos = e


@_jit
def fill_colmajor(counts, coffs, hw, out):  # type: ignore[no-untyped-def]
    """Packed (validated) counts -> ``n`` consecutive column-major masks of ``hw`` bytes."""
    n = coffs.shape[0] - 1
    for i in range(n):
        _fill_one(counts, coffs[i], coffs[i + 1], out, i * hw)


@_pjit
def fill_colmajor_parallel(counts, coffs, hw, out):  # type: ignore[no-untyped-def]
    """Parallel variant of :func:`fill_colmajor` (one mask per task)."""
    n = coffs.shape[0] - 1
    for i in nb.prange(n):
        _fill_one(counts, coffs[i], coffs[i + 1], out, i * hw)


@_jit
def _rows_one(counts, a, b, h, w, o):  # type: ignore[no-untyped-def]
    """One mask, row-major, into ``o`` (flat h*w): column-start values and toggles, then XOR."""
    o[:] = 0
    pos = np.int64(0)
    last = -1
    for j in range(b - a):
        c = counts[a + j]
        if c > 0:
            v = j & 1
            if v != last and last >= 0 and pos % h != 0:
                o[(pos % h) * w + pos // h] ^= 1
            if v:
                # columns whose first pixel falls inside this run start with value 1
                o[(pos + h - 1) // h : (pos + c + h - 1) // h] = 1
            last = v
            pos += c
    for y in range(1, h):
        r = y * w
        q = r - w
        for x in range(w):  # unsigned indices: no wraparound check, the loop vectorises
            o[np.uint64(r + x)] ^= o[np.uint64(q + x)]


@_jit
def fill_rowmajor(counts, coffs, h, w, out):  # type: ignore[no-untyped-def]
    """Packed (validated) counts -> ``n`` consecutive row-major (C-order) masks."""
    n = coffs.shape[0] - 1
    hw = h * w
    for i in range(n):
        _rows_one(counts, coffs[i], coffs[i + 1], h, w, out[i * hw : (i + 1) * hw])


@_pjit
def fill_rowmajor_parallel(counts, coffs, h, w, out):  # type: ignore[no-untyped-def]
    """Parallel variant of :func:`fill_rowmajor` (one mask per task)."""
    n = coffs.shape[0] - 1
    hw = h * w
    for i in nb.prange(n):
        _rows_one(counts, coffs[i], coffs[i + 1], h, w, out[i * hw : (i + 1) * hw])


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------


@_jit
def _mask_bbox(counts, a, b, h):  # type: ignore[no-untyped-def]
    """Foreground box of one RLE as half-open ``(x0, x1, y0, y1)``; ``x1 == x0`` when empty."""
    x0 = np.int64(-1)
    x1 = np.int64(0)
    y0 = h
    y1 = np.int64(0)
    x = np.int64(0)  # column and row of the current run start
    y = np.int64(0)
    for j in range(b - a):
        c = counts[a + j]
        if c == 0:
            continue
        xs = x
        ys = y
        y += c
        if y >= h:
            if y < 2 * h:
                y -= h
                x += 1
            else:
                q = y // h
                x += q
                y -= q * h
        if j & 1:
            # last pixel of the run: column xl, rows up to ye (exclusive)
            xl = x if y > 0 else x - 1
            ye = y if y > 0 else h
            if x0 < 0:
                x0 = xs
            x1 = xl + 1
            if xs != xl:
                y0 = np.int64(0)
                y1 = h
            else:
                y0 = min(y0, ys)
                y1 = max(y1, ye)
    if x0 < 0:
        return np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    return x0, x1, y0, y1


@_jit
def paint_labels_rows(counts, coffs, order, labels, h, w, out):  # type: ignore[no-untyped-def]
    """Paint masks ``order[0], order[1], ...`` (later wins) as ``labels[i]`` into ``out``.

    ``out`` is the flat ``h * w`` row-major label map; every pixel is written. Each mask costs
    its foreground box, not ``h * w``: its runs toggle bytes of a row-major scratch of the box
    (at each run start and end, per column), then one pass down the rows XOR-accumulates the
    toggles into the mask row and writes the label where it is set.
    """
    out[:] = 0
    n = order.shape[0]
    boxes = np.empty((n, 4), np.int64)
    big = np.int64(0)
    for t in range(n):
        i = order[t]
        x0, x1, y0, y1 = _mask_bbox(counts, coffs[i], coffs[i + 1], h)
        boxes[t, 0] = x0
        boxes[t, 1] = x1
        boxes[t, 2] = y0
        boxes[t, 3] = y1
        big = max(big, (x1 - x0) * (y1 - y0))
    tog = np.zeros(big, np.uint8)  # all zero again after every mask
    acc = np.empty(w, np.uint8)
    for t in range(n):
        bx0 = boxes[t, 0]
        bw = boxes[t, 1] - bx0
        by0 = boxes[t, 2]
        by1 = boxes[t, 3]
        if bw == 0:
            continue
        i = order[t]
        a = coffs[i]
        lab = labels[i]
        x = np.int64(0)
        y = np.int64(0)
        for j in range(coffs[i + 1] - a):
            c = counts[a + j]
            if c == 0:
                continue
            xs = x
            ys = y
            y += c
            if y >= h:
                if y < 2 * h:
                    y -= h
                    x += 1
                else:
                    q = y // h
                    x += q
                    y -= q * h
            if j & 1:
                tog[(ys - by0) * bw + xs - bx0] ^= 1
                xl = x if y > 0 else x - 1
                # a run over several columns fills them from row 0 (and by0 == 0 then)
                for xx in range(xs + 1, xl + 1):
                    tog[xx - bx0] ^= 1
                if y > 0 and y < by1:
                    tog[(y - by0) * bw + xl - bx0] ^= 1
        acc[:bw] = 0
        ubw = np.uint64(bw)
        for yy in range(by1 - by0):
            r = np.uint64(yy) * ubw
            o = np.uint64((by0 + yy) * w + bx0)
            # unsigned indices: no wraparound checks, the loop vectorises
            for xx in range(bw):
                ux = np.uint64(xx)
                v = acc[ux] ^ tog[r + ux]
                acc[ux] = v
                tog[r + ux] = 0
                out[o + ux] = lab if v else out[o + ux]


@_jit
def _order_by_area(ar):  # type: ignore[no-untyped-def]
    """Indices by decreasing ``ar``, ties in index order (a bottom-up merge sort: stable, and
    much quicker to compile than ``np.argsort(kind="mergesort")``)."""
    n = ar.shape[0]
    a = np.arange(n)
    b = np.empty(n, np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i = lo
            j = mid
            for t in range(lo, hi):
                if i < mid and (j >= hi or ar[a[i]] >= ar[a[j]]):
                    b[t] = a[i]
                    i += 1
                else:
                    b[t] = a[j]
                    j += 1
        a, b = b, a
        width *= 2
    return a


@_jit
def label_map_from_strings(buf, lens, by_area, labels, h, w, out, info):  # type: ignore[no-untyped-def]
    """Joined compressed strings of one image (``buf``, bytes or uint8, and their ``lens``) ->
    row-major label map (see :func:`paint_labels_rows`).

    Paint order: by decreasing area, ties in list order, when ``by_area``; else list order.
    """
    soffs = _offsets(lens)
    n = lens.shape[0]
    hw = np.empty(n, np.int64)
    hw[:] = h * w
    counts = np.empty(soffs[n] + 1, np.int64)
    coffs = np.empty(n + 1, np.int64)
    st = parse_strings(buf, soffs, hw, counts, coffs, info)
    if st != OK:
        return st
    order = np.arange(n)
    if by_area:
        ar = np.empty(n, np.int64)
        areas(counts, coffs, ar)
        order = _order_by_area(ar)
    paint_labels_rows(counts, coffs, order, labels, h, w, out)
    return OK


# --------------------------------------------------------------------------------------------
# measures on counts
# --------------------------------------------------------------------------------------------


@_jit
def areas(counts, coffs, out):  # type: ignore[no-untyped-def]
    """Foreground pixel count of each RLE."""
    n = coffs.shape[0] - 1
    for i in range(n):
        s = np.int64(0)
        for r in range(coffs[i] + 1, coffs[i + 1], 2):
            s += counts[r]
        out[i] = s


@_jit
def bboxes(counts, coffs, hs, out):  # type: ignore[no-untyped-def]
    """``[x, y, w, h]`` of each RLE's foreground (zeros when empty)."""
    n = coffs.shape[0] - 1
    for i in range(n):
        h = hs[i]
        xs = np.int64(-1)
        xe = np.int64(0)
        ys = np.int64(0)
        ye = np.int64(0)
        pos = np.int64(0)
        a = coffs[i]
        for j in range(coffs[i + 1] - a):
            c = counts[a + j]
            if j & 1 and c > 0:
                y0 = pos % h
                x0 = pos // h
                y1 = (pos + c - 1) % h
                x1 = (pos + c - 1) // h
                if xs < 0:
                    xs = x0
                    ys = y0
                    ye = y1
                if x0 < x1:
                    ys = np.int64(0)
                    ye = h - 1
                else:
                    ys = min(ys, y0)
                    ye = max(ye, y1)
                xe = max(xe, x1)
            pos += c
        if xs < 0:
            out[i, 0] = 0.0
            out[i, 1] = 0.0
            out[i, 2] = 0.0
            out[i, 3] = 0.0
        else:
            out[i, 0] = xs
            out[i, 1] = ys
            out[i, 2] = xe - xs + 1
            out[i, 3] = ye - ys + 1


@_jit
def _merge2(a, b, intersect):  # type: ignore[no-untyped-def]
    """Canonical counts of the union (or intersection) of two count arrays of equal total."""
    out = np.empty(a.shape[0] + b.shape[0] + 1, np.int64)
    m = 0
    ia = 0
    ib = 0
    ra = a[0] if a.shape[0] > 0 else 0
    rb = b[0] if b.shape[0] > 0 else 0
    cur = 0
    run = np.int64(0)
    while True:
        while ra == 0 and ia + 1 < a.shape[0]:
            ia += 1
            ra = a[ia]
        while rb == 0 and ib + 1 < b.shape[0]:
            ib += 1
            rb = b[ib]
        if ra == 0 or rb == 0:
            break
        va = ia & 1
        vb = ib & 1
        v = (va & vb) if intersect else (va | vb)
        c = ra if ra < rb else rb
        if v != cur:
            out[m] = run
            m += 1
            run = np.int64(0)
            cur = v
        run += c
        ra -= c
        rb -= c
    out[m] = run
    m += 1
    return out[:m]


@_jit
def merge(counts, coffs, intersect):  # type: ignore[no-untyped-def]
    """Union (or intersection) of all packed RLEs, as canonical counts."""
    n = coffs.shape[0] - 1
    acc = counts[coffs[0] : coffs[1]].copy()
    for i in range(1, n):
        acc = _merge2(acc, counts[coffs[i] : coffs[i + 1]], intersect)
    return acc


@_jit
def _inter_union(a, b):  # type: ignore[no-untyped-def]
    ia = 0
    ib = 0
    ra = a[0] if a.shape[0] > 0 else 0
    rb = b[0] if b.shape[0] > 0 else 0
    inter = np.int64(0)
    union = np.int64(0)
    while True:
        while ra == 0 and ia + 1 < a.shape[0]:
            ia += 1
            ra = a[ia]
        while rb == 0 and ib + 1 < b.shape[0]:
            ib += 1
            rb = b[ib]
        if ra == 0 or rb == 0:
            break
        c = ra if ra < rb else rb
        va = ia & 1
        vb = ib & 1
        if va | vb:
            union += c
            if va & vb:
                inter += c
        ra -= c
        rb -= c
    return inter, union


@_jit
def iou_rle(dc, doffs, gc, goffs, iscrowd, out):  # type: ignore[no-untyped-def]
    """IoU of every (dt, gt) pair; a crowd gt divides by the dt area instead of the union."""
    m = doffs.shape[0] - 1
    n = goffs.shape[0] - 1
    for d in range(m):
        a = dc[doffs[d] : doffs[d + 1]]
        area_d = np.int64(0)
        for r in range(1, a.shape[0], 2):
            area_d += a[r]
        for g in range(n):
            inter, union = _inter_union(a, gc[goffs[g] : goffs[g + 1]])
            if inter == 0:
                out[d, g] = 0.0
            elif iscrowd[g]:
                out[d, g] = inter / area_d
            else:
                out[d, g] = inter / union


# --------------------------------------------------------------------------------------------
# polygons
# --------------------------------------------------------------------------------------------


@_jit
def _poly_points(xy):  # type: ignore[no-untyped-def]
    k = xy.shape[0] // 2
    x = np.empty(k + 1, np.int64)
    y = np.empty(k + 1, np.int64)
    for j in range(k):
        x[j] = np.int64(5.0 * xy[2 * j] + 0.5)
        y[j] = np.int64(5.0 * xy[2 * j + 1] + 0.5)
    x[k] = x[0]
    y[k] = y[0]
    return x, y


@_jit
def poly_steps(xy):  # type: ignore[no-untyped-def]
    """Number of upsampled boundary points of a polygon (its rasterisation cost)."""
    x, y = _poly_points(xy)
    m = np.int64(0)
    for j in range(x.shape[0] - 1):
        m += max(abs(x[j] - x[j + 1]), abs(y[j] - y[j + 1])) + 1
    return m


@_jit
def _poly_walk(x, y, h, w, dst, store):  # type: ignore[no-untyped-def]
    """Walk the upsampled boundary; record each y-boundary point (as x*h + y) that falls inside."""
    k = x.shape[0] - 1
    m = 0
    have_prev = False
    pu = np.int64(0)
    pv = np.int64(0)
    for j in range(k):
        xs = x[j]
        xe = x[j + 1]
        ys = y[j]
        ye = y[j + 1]
        dx = abs(xe - xs)
        dy = abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe = xe, xs
            ys, ye = ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx > 0 else 0.0
            steps = dx
        else:
            s = (xe - xs) / dy
            steps = dy
        for d in range(steps + 1):
            t = steps - d if flip else d
            if dx >= dy:
                u = t + xs
                v = np.int64(ys + s * t + 0.5) if dx > 0 else ys
            else:
                v = t + ys
                u = np.int64(xs + s * t + 0.5)
            if have_prev and u != pu:
                # pycocotools: xd = (u' + .5) / 5 - .5 in doubles, kept when integral, and
                # yd = ceil of the same of v', clamped to [0, h]. (u' - 2) / 5 is integral
                # exactly when 5 divides u' - 2, and otherwise at least 0.2 away from an
                # integer (far beyond rounding error), so integer arithmetic is exact here.
                ud = (u if u < pu else u - 1) - 2
                if ud % 5 == 0:
                    xd = ud // 5
                    if xd >= 0 and xd <= w - 1:
                        yd = -((2 - (v if v < pv else pv)) // 5)  # ceil((v' - 2) / 5)
                        if yd < 0:
                            yd = np.int64(0)
                        elif yd > h:
                            yd = np.int64(h)
                        if store:
                            dst[m] = xd * h + yd
                        m += 1
            pu = u
            pv = v
            have_prev = True
    return m


@_jit
def poly_counts(xy, h, w):  # type: ignore[no-untyped-def]
    """Counts of a polygon ``[x0, y0, x1, y1, ...]`` rasterised exactly like pycocotools."""
    x, y = _poly_points(xy)
    bound = np.int64(0)  # upsampled steps: at least the number of recorded points
    for j in range(x.shape[0] - 1):
        bound += max(abs(x[j] - x[j + 1]), abs(y[j] - y[j + 1])) + 1
    rec = np.empty(bound, np.int64)
    k = _poly_walk(x, y, h, w, rec, True)
    # sort the points (flat indices col*h + row): work and memory in proportion to the
    # polygon's boundary, never to the canvas (a bucket per column cost O(w), 1.7 GB on a
    # 1 x 10**8 canvas)
    a = np.empty(k + 1, np.int64)
    a[:k] = np.sort(rec[:k])
    a[k] = h * w
    p = np.int64(0)
    for j in range(k + 1):
        t = a[j]
        a[j] = t - p
        p = t
    b = np.empty(k + 1, np.int64)
    m = 0
    j = 0
    b[m] = a[j]
    m += 1
    j += 1
    while j < k + 1:
        if a[j] > 0:
            b[m] = a[j]
            m += 1
            j += 1
        else:
            j += 1
            if j < k + 1:
                b[m - 1] += a[j]
                j += 1
    return b[:m]


@_jit
def polygon_counts(xy, h, w, max_coord, max_steps):  # type: ignore[no-untyped-def]
    """One polygon -> its counts, validated: (status, counts).

    Status ``OK``, or ``ERR_SIZE`` when a coordinate is not finite or beyond ``max_coord``,
    or the polygon is longer than ``max_steps`` upsampled boundary steps (the caller then
    reports the details).
    """
    for j in range(xy.shape[0]):
        c = xy[j]
        if not (abs(c) <= max_coord):  # also catches NaN
            return ERR_SIZE, np.empty(0, np.int64)
    if poly_steps(xy) > max_steps:
        return ERR_SIZE, np.empty(0, np.int64)
    if h * w == 0:
        return OK, np.zeros(1, np.int64)
    return OK, poly_counts(xy, h, w)


@_jit
def polygon_string(xy, h, w, max_coord, max_steps):  # type: ignore[no-untyped-def]
    """One polygon -> its compressed string, validated: (status, chars), as
    :func:`polygon_counts`."""
    empty = np.empty(0, np.uint8)
    status, counts = polygon_counts(xy, h, w, max_coord, max_steps)
    if status:
        return status, empty
    out = np.empty(7 * counts.shape[0] + 1, np.uint8)
    p = 0
    for j in range(counts.shape[0]):
        x = counts[j]
        if j > 2:
            x -= counts[j - 2]
        p = _emit(x, out, p)
    return OK, out[:p]
