"""Safe image decoding: bytes from anywhere -> one RGB PIL image, or a ``DecodeError`` that says why.

Used by the service for uploads and by the index for folders, so it lives beside the
preprocessing rather than in ``app`` (``index`` never imports ``app``).

- The format is decided by magic bytes against an allowlist (JPEG, PNG, WebP, GIF, BMP,
  TIFF), and Pillow is only allowed to use that one decoder: EPS, PSD, FITS and the
  rest never see the bytes.
- The pixel count is checked from the header before any pixel is decoded; Pillow's own
  bomb limit is kept as a second line, and an image over the size at which Pillow only warns is
  refused too.
- What a decode may cost is bounded before it starts (``model.decode_cost``): scans of a
  JPEG, chunks of a PNG, strips of a TIFF, and the bytes of decoded images in flight.
- Truncated files fail (``LOAD_TRUNCATED_IMAGES`` is never enabled); any exception a
  decoder raises becomes a ``DecodeError``.
- EXIF orientation is applied; animations give their first frame; every mode (CMYK,
  16-bit, palette with transparency, LA/RGBA, 1-bit, grey) becomes 8-bit RGB.

References: RELIABILITY.md items 5-13.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps

from model.decode_cost import (
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
    MAX_PNG_ROW_BYTES,
    MAX_TIFF_PARTS,
    BudgetExhausted,
    DecodeBudget,
    decoded_bytes,
    jpeg_scans,
    png_chunks,
    png_row_bytes,
)
from model.preprocess import FORMAT_INFO, REDUCED_INFO, to_rgb

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "Decoded",
    "decode_image",
    "sniff_format",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: a large photograph; a bomb is far beyond


class DecodeError(ValueError):
    """An upload that is not a usable image. ``kind``: unsupported | too_large | corrupt | empty, or busy (the
    decode budget is spent by other decodes right now: try again)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, upright, first frame
    format: str
    sha256: str  # of the bytes as received
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The allowed format these bytes start with, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _describe(data: bytes) -> str:
    known = {
        b"%PDF": "a PDF document",
        b"PK\x03\x04": "a ZIP archive",
        b"%!PS": "a PostScript/EPS file",
        b"8BPS": "a Photoshop file",
        b"SIMPLE": "a FITS file",
        b"\x1f\x8b": "gzip data",
    }
    for magic, what in known.items():
        if data.startswith(magic):
            return what
    head = data[:64]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return f"unknown bytes {data[:8].hex()}"


def _check_structure(fmt: str, data: bytes) -> None:
    """Refuse files whose structure would make their decoder's work grow past the pixels it writes."""
    if fmt == "JPEG" and (scans := jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise DecodeError("too_large", f"JPEG with more than {MAX_JPEG_SCANS} scans ({scans} counted): no encoder writes that many")
    if fmt == "PNG" and png_chunks(data) > MAX_PNG_CHUNKS:
        raise DecodeError("too_large", f"PNG with more than {MAX_PNG_CHUNKS} chunks: no encoder splits its data that finely")


def _check_parts(fmt: str, im: Image.Image, data: bytes) -> None:
    """(After the pixel limit.) Refuse images whose parts would cost more than their pixels say."""
    if fmt == "PNG" and (rows := png_row_bytes(data)) > MAX_PNG_ROW_BYTES:
        raise DecodeError("too_large", f"PNG whose rows hold {rows:,} bytes to inflate and unfilter, more than {MAX_PNG_ROW_BYTES:,}")
    if fmt == "TIFF":
        tags = getattr(im, "tag_v2", {})
        parts = max(len(getattr(im, "tile", ())), *(len(tags.get(t) or ()) for t in (273, 324)))  # StripOffsets, TileOffsets
        if parts > MAX_TIFF_PARTS:
            raise DecodeError("too_large", f"TIFF in {parts} strips or tiles, more than {MAX_TIFF_PARTS}")


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    min_long_side: int | None = None,
    budget: DecodeBudget | None = None,
) -> Decoded:
    """Decode ``data`` into one upright RGB image, or raise ``DecodeError``.

    Reduced decoding: with ``min_side`` (and ``min_long_side``), a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8: Pillow's ``draft``) that keeps its shorter side at least ``min_side`` long and its longer
    side at least ``min_long_side``; callers pass what their resize needs, so the antialiased resize that
    follows sees enough pixels. Other formats have no such scale and decode whole. The pixel limit applies
    to the declared size, and ``width``/``height`` report it.

    A reduced image carries, in ``image.info[REDUCED_INFO]``, the declared upright size and the region of
    its own pixels that the full image covers; ``resize_shorter`` (the preprocessing's resize) uses them to
    sample the same places as on the full decode, with the output size the full decode would get.

    With ``budget``, the decode's memory (``decoded_bytes``) is reserved before any pixel is decoded: more
    than the whole budget is ``too_large``, more than is free now is ``busy``. What the returned image holds
    stays reserved until it is freed."""
    if not data:
        raise DecodeError("empty", "the file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError("unsupported", f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)}): looks like {_describe(data)}")
    _check_structure(fmt, data)
    reserved = 0
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = im.size
        if width <= 0 or height <= 0:
            raise DecodeError("corrupt", f"{fmt} image with impossible size {width}x{height}")
        # Pillow only warns between its own bomb limit and twice it: such an image is refused like a bomb (RELIABILITY.md 6)
        max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        if width * height > max_pixels:
            raise DecodeError(
                "too_large", f"{fmt} image of {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
            )
        if getattr(im, "is_animated", False):
            im.seek(0)  # first frame only; the others are never decoded
        _check_parts(fmt, im, data)
        box = _reduce(im, width, height, min_side or 0, min_long_side or 0) if fmt == "JPEG" else None
        if budget is not None:
            need = decoded_bytes(im)
            if not budget.fits_ever(need):
                raise DecodeError(
                    "too_large", f"{fmt} image of {width}x{height} needs about {need / 2**20:.0f} MiB to decode, more than the "
                    f"decode budget of {budget.total / 2**20:.0f} MiB"
                )  # fmt: skip
            budget.take(need)
            reserved = need
        im.load()
        try:
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)  # what exif_transpose reads
            upright = ImageOps.exif_transpose(im) or im
        except Exception as e:  # malformed EXIF must not lose the image
            log.debug("ignoring unreadable EXIF orientation: %s", e)
            orientation, upright = 1, im
        rgb = to_rgb(upright)
        if rgb is im:
            rgb = im.copy()
        rgb.info.pop(REDUCED_INFO, None)  # a file's own metadata (a PNG text chunk) must not pose as ours
        rgb.info[FORMAT_INFO] = fmt  # (the gallery's copy of a JPEG is a JPEG: index.encoding)
        if budget is not None:  # what the RGB image holds stays reserved until it is freed; the rest is free now
            keep = min(reserved, 4 * rgb.size[0] * rgb.size[1])
            budget.hold_while_alive(rgb, keep)
            budget.give_back(reserved - keep)
            reserved = 0
    except BudgetExhausted as e:
        raise DecodeError("busy", f"{fmt} image: {e}") from e
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", f"{fmt} image rejected as a decompression bomb: {e}") from e
    except MemoryError as e:
        raise DecodeError("too_large", f"{fmt} image too large to decode") from e
    except Exception as e:  # Pillow decoders raise OSError, ValueError, SyntaxError, struct.error, EOFError, ...
        raise DecodeError("corrupt", f"cannot decode {fmt} image: {type(e).__name__}: {e}") from e
    finally:
        if reserved and budget is not None:  # the decode failed: nothing of it is held
            budget.give_back(reserved)
    w, h = rgb.size
    if box is not None:  # the declared size, upright; a reduced decode also says how it maps onto the full image
        w, h = (height, width) if orientation in _SWAPS_SIDES else (width, height)
        if rgb.size != (w, h):
            rgb.info[REDUCED_INFO] = ((w, h), _transpose_box(box, im.size, _TRANSPOSE.get(orientation)))
    return Decoded(rgb, fmt, hashlib.sha256(data).hexdigest(), w, h)


def _reduce(im: Image.Image, width: int, height: int, min_side: int, min_long_side: int) -> tuple[float, float, float, float] | None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps both sides' minimums (None, and nothing
    asked, when even 1/2 would not, or nothing is needed). Pillow picks the largest scale s in 8, 4, 2 with
    s <= declared / requested on both sides, so the decoded sides (declared / s, rounded up) are never below
    the request. Returns the full image's place in the decoded one, (0, 0, width / s, height / s): when a
    side is not a multiple of s, the last decoded row or column is partly padding."""
    if not (min_side or min_long_side):
        return None
    short, long = min(width, height), max(width, height)
    ratio = max(min_side / short, min_long_side / long)
    if ratio > 0.5:
        return None
    got = im.draft(None, (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))))  # type: ignore[arg-type]
    if got is None:  # the decoder cannot scale this file
        return None
    x0, y0, x1, y1 = got[1]
    return float(x0), float(y0), float(x1), float(y1)


# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose does)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)


def _transpose_box(
    box: tuple[float, float, float, float], size: tuple[int, int], method: Image.Transpose | None
) -> tuple[float, float, float, float]:
    """Where ``box`` (x0, y0, x1, y1) of an image of ``size`` lands after Pillow's ``transpose(method)``."""
    (x0, y0, x1, y1), (w, h) = box, size
    T = Image.Transpose
    return {
        None: (x0, y0, x1, y1),
        T.FLIP_LEFT_RIGHT: (w - x1, y0, w - x0, y1),
        T.FLIP_TOP_BOTTOM: (x0, h - y1, x1, h - y0),
        T.ROTATE_180: (w - x1, h - y1, w - x0, h - y0),
        T.ROTATE_90: (y0, w - x1, y1, w - x0),  # counter-clockwise: (x, y) -> (y, w - x)
        T.ROTATE_270: (h - y1, x0, h - y0, x1),  # clockwise: (x, y) -> (h - y, x)
        T.TRANSPOSE: (y0, x0, y1, x1),
        T.TRANSVERSE: (h - y1, w - x1, h - y0, w - x0),
    }[method]
