"""What one decode may cost: checks made from an upload's bytes and header before any pixel is decoded,
and the process-wide budget of decoded bytes in flight.

The CPU a decoder spends grows with the pixels it writes and, for some formats, with structure that a
small file can repeat at will. Each such lever is bounded here, so that the work of one accepted decode
stays within a small multiple of the work of writing its pixels once:

- JPEG: a progressive file is decoded once per scan, over every block of the image. Encoders write
  about 10 scans (libjpeg's standard progression: 10 for colour, 6 for grey), so ``MAX_JPEG_SCANS``
  refuses a file with ten times that: a file that repeats a scan tens of thousands of times would
  otherwise cost minutes (the README's "What an upload may cost" has the figures).
- PNG: chunks are read one at a time, and no encoder splits its data into more than a few thousand
  (``MAX_PNG_CHUNKS``: 10 MiB of 1 KiB chunks). The filtered rows are inflated and unfiltered byte by
  byte, so their size, not the file's, is the work: 16-bit RGBA rows at 40 MP are 320 MB, in a file of a
  few hundred KB. ``MAX_PNG_ROW_BYTES`` allows 4 bytes per pixel at 40 MP (8-bit RGBA).
- TIFF: each strip or tile is handed to the decoder separately (``MAX_TIFF_PARTS``).
- GIF and WebP animations: the first frame only (``model.decode``).

Memory: Pillow keeps 1 byte per pixel for 1-bit, grey and palette images, 2 for 16-bit grey, 4 for
the rest (RGB too). ``decoded_bytes`` estimates the peak of a decode (the image as read, its RGB
form and one more copy for orientation or the stored copy); ``DecodeBudget`` admits a decode only while
the decodes in flight stay under its total. The budget is held while the decoded image is alive and is
given back the moment it is freed (``weakref.finalize``), so callers that keep only what the model and
the gallery need (``app.uploads``) free it as soon as those are made.
"""

from __future__ import annotations

import re
import struct
import threading
import weakref

from PIL import Image

__all__ = [
    "DEFAULT_DECODE_BUDGET",
    "MAX_JPEG_SCANS",
    "MAX_PNG_CHUNKS",
    "MAX_PNG_ROW_BYTES",
    "MAX_TIFF_PARTS",
    "BudgetExhausted",
    "DecodeBudget",
    "decoded_bytes",
    "jpeg_scans",
    "png_chunks",
    "png_row_bytes",
]

MAX_JPEG_SCANS = 100  # ten times what encoders write; each scan walks every block of the image
MAX_PNG_CHUNKS = 10_000
MAX_PNG_ROW_BYTES = 160_000_000 + 40_000  # 40 MP of 8-bit RGBA, with a filter byte per row
MAX_TIFF_PARTS = 65_536  # a strip per row of a 40 MP image is within it
DEFAULT_DECODE_BUDGET = 1024 * 1024 * 1024  # 1 GiB: two 40 MP decodes at once, in a 4 GB container beside the model

_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker after entropy-coded data (not stuffing, RST or fill)
_SOS, _EOI = 0xDA, 0xD9
_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """How many scans (SOS segments) a JPEG holds, walking its segments; counting stops past ``stop_after``.
    Bytes that do not parse as segments end the walk (the decoder will say what is wrong with them)."""
    scans, pos, n = 0, 2, len(data)
    while pos + 4 <= n and scans <= stop_after:
        if data[pos] != 0xFF:
            found = _MARKER.search(data, pos)  # inside entropy-coded data: find the next marker
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            break
        pos += 2 + length
        if marker == _SOS:
            scans += 1
    return scans


def png_chunks(data: bytes, stop_after: int = MAX_PNG_CHUNKS) -> int:
    """How many chunks a PNG holds (walking their length fields); counting stops past ``stop_after``."""
    chunks, pos, n = 0, 8, len(data)
    while pos + 8 <= n and chunks <= stop_after:
        (length,) = struct.unpack_from(">I", data, pos)
        chunks += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return chunks


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def png_row_bytes(data: bytes) -> int:
    """The size of a PNG's filtered rows, from its header: what the decoder inflates and unfilters (0 if unreadable)."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        return 0
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    bits = width * depth * _PNG_CHANNELS.get(colour, 4)
    return height * (1 + (bits + 7) // 8)


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decoded_bytes(im: Image.Image) -> int:
    """An upper estimate of the memory a decode of ``im`` (opened, not loaded) and its conversion to RGB
    take at their peak: the image as read, plus two RGB images (its RGB form, and an upright or reduced copy)."""
    w, h = im.size
    return w * h * (_bytes_per_pixel(im.mode) + 8)


class BudgetExhausted(Exception):
    """The decodes in flight leave no room for this one now (try again shortly)."""


class DecodeBudget:
    """Bytes of decoded images in flight in this process, bounded by ``total``. Thread-safe."""

    def __init__(self, total: int = DEFAULT_DECODE_BUDGET) -> None:
        if total <= 0:
            raise ValueError(f"a decode budget must be positive, got {total}")
        self.total = total
        self.in_use = 0
        self.peak = 0
        self._lock = threading.Lock()

    def fits_ever(self, nbytes: int) -> bool:
        return nbytes <= self.total

    def take(self, nbytes: int) -> None:
        """Reserve ``nbytes`` now, or raise ``BudgetExhausted``. (Callers check ``fits_ever`` first.)"""
        with self._lock:
            if self.in_use + nbytes > self.total:
                raise BudgetExhausted(
                    f"decoding it needs about {nbytes / 2**20:.0f} MiB and the images being decoded hold "
                    f"{self.in_use / 2**20:.0f} of {self.total / 2**20:.0f} MiB"
                )
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes

    def hold_while_alive(self, obj: object, nbytes: int) -> None:
        """Give ``nbytes`` (already taken) back when ``obj`` is freed."""
        weakref.finalize(obj, self.give_back, nbytes)
