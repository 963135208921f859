"""Safe image decoding: bytes from anywhere -> one RGB PIL image, or a ``DecodeError`` that says why.

Used by the service for uploads and by the index for folders, so it lives beside the
preprocessing rather than in ``app`` (``index`` never imports ``app``).

- The format is decided by magic bytes against an allowlist (JPEG, PNG, WebP, GIF, BMP,
  TIFF), and Pillow is only allowed to use that one decoder: EPS, PSD, FITS and the
  rest never see the bytes.
- The pixel count is checked from the header before any pixel is decoded; Pillow's own
  bomb limit is kept as a second line.
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

from PIL import Image, ImageOps

from model.preprocess import to_rgb

log = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "STORE_MAX_SIDE",
    "DecodeError",
    "Decoded",
    "decode_image",
    "encode_for_store",
    "sniff_format",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: a large photograph; a bomb is far beyond
STORE_MAX_SIDE = 512  # the longer side of the copy the gallery keeps (encode_for_store)


class DecodeError(ValueError):
    """An upload that is not a usable image. ``kind``: unsupported | too_large | corrupt | empty."""

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


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None, min_long_side: int | None = None
) -> Decoded:
    """Decode ``data`` into one upright RGB image, or raise ``DecodeError``.

    Reduced decoding: with ``min_side`` (and ``min_long_side``), a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8: Pillow's ``draft``) that keeps its shorter side at least ``min_side`` long and its longer
    side at least ``min_long_side``; callers pass what their resize needs, so the antialiased resize that
    follows sees enough pixels. Other formats have no such scale and decode whole. The pixel limit applies
    to the declared size, and ``width``/``height`` report it."""
    if not data:
        raise DecodeError("empty", "the file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError("unsupported", f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)}): looks like {_describe(data)}")
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = im.size
        if width <= 0 or height <= 0:
            raise DecodeError("corrupt", f"{fmt} image with impossible size {width}x{height}")
        if width * height > max_pixels:
            raise DecodeError(
                "too_large", f"{fmt} image of {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
            )
        if getattr(im, "is_animated", False):
            im.seek(0)  # first frame only; the others are never decoded
        if fmt == "JPEG" and (min_side or min_long_side):
            _reduce(im, width, height, min_side or 0, min_long_side or 0)
        im.load()
        try:
            upright = ImageOps.exif_transpose(im) or im
        except Exception as e:  # malformed EXIF must not lose the image
            log.debug("ignoring unreadable EXIF orientation: %s", e)
            upright = im
        rgb = to_rgb(upright)
        if rgb is im:
            rgb = im.copy()
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", f"{fmt} image rejected as a decompression bomb: {e}") from e
    except MemoryError as e:
        raise DecodeError("too_large", f"{fmt} image too large to decode") from e
    except Exception as e:  # Pillow decoders raise OSError, ValueError, SyntaxError, struct.error, EOFError, ...
        raise DecodeError("corrupt", f"cannot decode {fmt} image: {type(e).__name__}: {e}") from e
    w, h = rgb.size
    if (w, h) not in ((width, height), (height, width)):  # decoded at a reduced scale: the declared size, upright
        w, h = (width, height) if (w >= h) == (width >= height) else (height, width)
    return Decoded(rgb, fmt, hashlib.sha256(data).hexdigest(), w, h)


def _reduce(im: Image.Image, width: int, height: int, min_side: int, min_long_side: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps both sides' minimums (a no-op when even 1/2
    would not). Pillow picks the largest scale s in 8, 4, 2 with s <= declared / requested on both sides, so
    the decoded sides (declared / s, rounded up) are never below the request."""
    short, long = min(width, height), max(width, height)
    ratio = max(min_side / short, min_long_side / long)
    if ratio > 0.5:
        return
    im.draft(None, (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))))  # type: ignore[arg-type]


def encode_for_store(image: Image.Image, max_side: int = STORE_MAX_SIDE) -> tuple[bytes, str]:
    """Re-encode decoded pixels for storage and serving (never the uploaded bytes): PNG if small, else JPEG."""
    im = to_rgb(image)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if max(im.size) <= 256:
        im.save(buf, format="PNG", compress_level=1)  # a third of the time of the default level, files a quarter larger
        return buf.getvalue(), ".png"
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), ".jpg"
