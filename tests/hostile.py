"""Crafted files that cost a decoder far more than their size: shared by the abuse tests and the fuzzer's seeds."""

from __future__ import annotations

import io
import re
import struct
import zlib

from PIL import Image

__all__ = ["one_bit_png", "png", "png_chunk", "png_many_chunks", "progressive_scan_bomb"]

_AFTER_ENTROPY = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG Pillow wrote: its SOS segment and the entropy-coded data after it."""
    pos, found = 2, []
    while data[pos + 1] != 0xD9:
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:
            match = _AFTER_ENTROPY.search(data, end)
            assert match is not None
            end = match.start()
            found.append((pos, end))
        pos = end
    return found


def progressive_scan_bomb(repeats: int, side: int = 2000) -> bytes:
    """A grey progressive JPEG whose smallest AC scan is repeated ``repeats`` times: a few bytes a scan, and
    each scan makes the decoder walk every block of the image again."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    ac = [(end - start, start, end) for start, end in _scans(data) if data[start + 5 + 2 * data[start + 4]] > 0]  # Ss > 0
    _, start, end = min(ac)
    return data[:start] + data[start:end] * repeats + data[end:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *, depth: int = 8, colour: int = 0, samples: int = 1, row_filter: int = 0, empty_idats: int = 0) -> bytes:
    """A PNG of zero-valued rows (compressed to almost nothing) with the given header; ``empty_idats`` empty
    IDAT chunks before the data."""
    row = bytes([row_filter]) + b"\x00" * ((width * depth * samples + 7) // 8)
    z = zlib.compressobj(9)
    raw = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", b"") * empty_idats + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def png_many_chunks(chunks: int) -> bytes:
    return png(64, 64, empty_idats=chunks)


def one_bit_png(width: int = 6000, height: int = 6600) -> bytes:
    """A 1-bit PNG, a few KB, that decodes to width x height pixels (40 MP at the defaults)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")
    return buf.getvalue()
