"""Write the fuzzer's seed inputs into ``tests/fuzz/corpus`` (``python -m tests.fuzz.seeds``; ``make fuzz`` runs it
first): a small file of every allowed format and mode, the crafted files of the abuse tests at small sizes, and
multipart bodies ordinary and pathological. The files are checked in, with what the fuzzer found beside them."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fuzz.targets import BOUNDARY
from tests.hostile import one_bit_png, png, png_chunk, png_many_chunks, progressive_scan_bomb

CORPUS = Path(__file__).parent / "corpus"


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def images() -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    yield "baseline.jpg", _save(rgb, "JPEG", quality=80)
    yield "progressive.jpg", _save(rgb, "JPEG", progressive=True)
    yield "cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    yield "rotated.jpg", _save(rgb, "JPEG", exif=exif.tobytes())
    for mode in ("1", "L", "P", "RGBA", "LA", "I;16"):
        yield f"mode-{mode.replace(';', '')}.png", _save(rgb.convert(mode) if mode != "I;16" else rgb.convert("I").convert("I;16"), "PNG")
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    yield "animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    yield "image.webp", _save(rgb, "WEBP")
    yield "image.bmp", _save(rgb, "BMP")
    yield "image.tiff", _save(rgb, "TIFF")
    yield "scan-bomb.jpg", progressive_scan_bomb(150, side=64)
    yield "chunk-flood.png", png_many_chunks(12_000)
    huge_rows = png(6000, 6600, depth=16, colour=6, samples=4, row_filter=4)
    yield "huge-rows-header.png", huge_rows[:33] + png_chunk(b"IDAT", zlib.compress(b"\x04" * 64)) + png_chunk(b"IEND", b"")
    yield "one-bit-40mp.png", one_bit_png(6000, 6600)
    yield "bomb-header.png", png(20000, 20000)[:33] + png_chunk(b"IEND", b"")
    yield "truncated.jpg", _save(rgb, "JPEG")[:200]
    yield "text.jpg", b"this is not an image\n"
    yield "zip.jpg", b"PK\x03\x04" + b"\x00" * 40


def _part(name: str, body: bytes, filename: str | None = None, ctype: str = "image/png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n" + (f"Content-Type: {ctype}\r\n" if filename else "")
    return head.encode() + b"\r\n" + body + b"\r\n"


def bodies() -> Iterator[tuple[str, bytes]]:
    end = f"--{BOUNDARY}--\r\n".encode()
    image = png(8, 8)
    yield "one-file", _part("file", image, "a.png") + end
    yield "file-and-label", _part("files", image, "a.png") + _part("files", image, "b.png") + _part("label", b"cat") + end
    yield "many-fields", b"".join(_part(f"f{i}", b"x") for i in range(40)) + end
    yield "many-files", b"".join(_part("files", b"", f"{i}.png") for i in range(40)) + end
    yield "crlf-flood", b"\r\n" * 20_000 + _part("file", image, "a.png") + end
    yield "header-flood", f"--{BOUNDARY}\r\n".encode() + b"X-H: v\r\n" * 3000 + b"\r\n" + image + b"\r\n" + end
    yield "no-end", _part("file", image, "a.png")
    yield "nul-filename", _part("file", image, "a\x00b.png") + end
    yield "quoted-name", _part('fi"le', image, 'a";b.png') + end
    yield "backslashes", (b"--" + b"\\" * 60 + b"\r\n") * 50 + end
    yield "big-field", _part("label", b"x" * 70_000) + end


def main() -> None:
    for target, items in (("decode", images()), ("multipart", bodies())):
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (folder / f"seed-{name}").write_bytes(data)
    print(f"seeds written to {CORPUS}")


if __name__ == "__main__":
    main()
