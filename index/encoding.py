"""The gallery's copy of an image: re-encoded from the decoded pixels (never the uploaded bytes), at most
``STORE_MAX_SIDE`` pixels on its longer side: a JPEG (quality 90), but for small images (at most 256 px) that did not
come as JPEGs, which stay lossless (PNG). A JPEG upload has lost what it lost already; as a PNG its copy would take
several times the bytes and the time to write and to read back, for re-embedding. The index stores it and the service serves it back
(``GET /images/{id}``); ``index.extract`` and the service's uploads make it the same way."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.transforms.v2.functional import InterpolationMode, resize

from model.preprocess import FORMAT_INFO, to_rgb

__all__ = ["STORE_MAX_SIDE", "encode_for_store"]

STORE_MAX_SIDE = 512  # the longer side of the copy the gallery keeps


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """An RGB image scaled down to a longer side of ``max_side``, aspect kept, with antialiased bicubic (Pillow's
    default for thumbnails).

    - From under twice the size (every JPEG decoded at a reduced scale for the store: its longer side is
      512 to 1023): PyTorch's uint8 kernel, which gives Pillow's BICUBIC pixels (within one level) several
      times faster, on one thread, handing the pixels over included.
    - From larger images: Pillow's ``thumbnail``, which first shrinks by an integer factor with a box filter;
      handing a whole 12 MP image over to PyTorch alone takes longer than all of that (bench/RESULTS.md)."""
    w, h = im.size
    if max(w, h) >= 2 * max_side:
        out = im.copy()
        out.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return out
    scale = max_side / max(w, h)
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    packed = bytearray(im.tobytes())  # (h, w, 3); faster than numpy's own copy of a PIL image
    pixels = torch.frombuffer(packed, dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
    out = resize(pixels, size, interpolation=InterpolationMode.BICUBIC, antialias=True).permute(1, 2, 0)
    return Image.frombytes("RGB", (size[1], size[0]), out.contiguous().numpy().tobytes())


def encode_for_store(image: Image.Image, max_side: int = STORE_MAX_SIDE) -> tuple[bytes, str]:
    """Re-encode decoded pixels for storage and serving (never the uploaded bytes): PNG if small and not decoded
    from a JPEG (``model.decode`` says which in ``image.info``), else JPEG."""
    lossy = image.info.get(FORMAT_INFO) == "JPEG"
    im = to_rgb(image)
    if max(im.size) > max_side:
        im = _shrink(im, max_side)
    buf = io.BytesIO()
    if max(im.size) <= 256 and not lossy:
        im.save(buf, format="PNG", compress_level=1)  # a third of the time of the default level, files a quarter larger
        return buf.getvalue(), ".png"
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), ".jpg"
