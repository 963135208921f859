"""The properties the fuzzer checks, one function per target, importable without atheris (the corpus replay in
CI runs them too): every input gets a clear refusal or a usable result, within a CPU bound.

- ``decode``: ``model.decode.decode_image`` with the service's limits and a decode budget: a ``DecodeError`` or
  one upright 8-bit RGB image whose declared size is within the pixel limit, and the budget back to zero once
  the image is gone.
- ``multipart``: Starlette's multipart parser with the service's limits (``app.uploads``): a form, or one of the
  exceptions the service answers 400 for.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from model.decode import DecodeError, decode_image
from model.decode_cost import DecodeBudget

__all__ = ["CPU_BOUND_S", "TARGETS", "check_decode", "check_multipart"]

CPU_BOUND_S = 2.0  # per input; the README states what one accepted upload costs at most
MAX_PIXELS = 40_000_000  # the service's default
BOUNDARY = "fuzzboundary"


class PropertyFailed(AssertionError):
    pass


def check_decode(data: bytes) -> None:
    budget = DecodeBudget()
    start = time.process_time()
    try:
        decoded = decode_image(data, max_pixels=MAX_PIXELS, min_side=73, min_long_side=512, budget=budget)
    except DecodeError as e:
        if e.kind not in ("unsupported", "too_large", "corrupt", "empty", "busy"):
            raise PropertyFailed(f"unknown refusal kind {e.kind!r}") from e
    else:
        image = decoded.image
        if image.mode != "RGB" or min(image.size) < 1:
            raise PropertyFailed(f"decoded to {image.mode} {image.size}")
        if decoded.width * decoded.height > MAX_PIXELS:
            raise PropertyFailed(f"declared {decoded.width}x{decoded.height}, over the limit")
        image.load()
        del decoded, image
        gc.collect()
        if budget.in_use:
            raise PropertyFailed(f"{budget.in_use} bytes of the decode budget not given back")
    spent = time.process_time() - start
    if spent > CPU_BOUND_S:
        raise PropertyFailed(f"{spent:.2f} CPU-s for {len(data)} bytes")


def check_multipart(data: bytes) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 4096):  # in pieces, as a socket delivers them
            yield data[i : i + 4096]

    async def parse() -> None:
        headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        parser = MultiPartParser(headers, stream(), max_files=16, max_fields=16, max_part_size=64 * 1024)
        form = await parser.parse()
        await form.close()

    start = time.process_time()
    try:
        asyncio.run(parse())
    except (MultiPartException, ValueError, KeyError, UnicodeDecodeError):  # app.uploads answers these 400
        pass
    spent = time.process_time() - start
    if spent > CPU_BOUND_S:
        raise PropertyFailed(f"{spent:.2f} CPU-s for {len(data)} bytes")


TARGETS: dict[str, Callable[[bytes], None]] = {"decode": check_decode, "multipart": check_multipart}
