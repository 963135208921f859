"""index.encoding: the gallery's copy of an image."""

import io

import numpy as np
import pytest
from PIL import Image

from index.encoding import _shrink, encode_for_store
from tests.model.test_decode import _texture


@pytest.mark.parametrize("size", [(866, 866), (1000, 750), (750, 1000), (1023, 40), (2400, 1800), (4000, 3000)])
def test_the_stored_copy_is_pillows_bicubic_thumbnail_whichever_way_it_is_made(size: tuple[int, int]) -> None:
    """Under twice the copy's size (a reduced decode) PyTorch's kernel shrinks it, above Pillow's thumbnail; both
    give Pillow's antialiased bicubic at the thumbnail's size, to within one level."""
    rng = np.random.default_rng(0)
    w, h = size
    im = Image.fromarray((np.asarray(_texture(size), np.int16) + rng.integers(-20, 20, (h, w, 3))).clip(0, 255).astype(np.uint8))
    expected = im.copy()
    expected.thumbnail((512, 512), Image.Resampling.BICUBIC)
    data, suffix = encode_for_store(im)
    assert suffix == (".png" if max(expected.size) <= 256 else ".jpg")
    got = _shrink(im, 512) if suffix == ".jpg" else Image.open(io.BytesIO(data))  # (a JPEG: compared before its coding)
    assert got.size == expected.size == Image.open(io.BytesIO(data)).size
    diff = np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.05


@pytest.mark.parametrize(
    ("fmt", "side", "suffix"), [("PNG", 224, ".png"), ("JPEG", 224, ".jpg"), ("PNG", 300, ".jpg"), ("JPEG", 64, ".jpg")]
)
def test_a_small_lossless_upload_stays_lossless_and_a_jpeg_stays_a_jpeg(fmt: str, side: int, suffix: str) -> None:
    """Decoded as the service decodes an upload: a small PNG is kept as a PNG, pixel for pixel; a JPEG of any size
    is kept as a JPEG, close to its decoded pixels; anything over 256 px is a JPEG."""
    from model.decode import decode_image

    rng = np.random.default_rng(1)
    im = Image.fromarray(
        (np.asarray(_texture((side, side)), np.int16) + rng.integers(-8, 8, (side, side, 3))).clip(0, 255).astype(np.uint8)
    )
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=90)
    decoded = decode_image(buf.getvalue()).image
    data, got = encode_for_store(decoded)
    assert got == suffix
    stored = Image.open(io.BytesIO(data))
    assert stored.format == {".png": "PNG", ".jpg": "JPEG"}[suffix] and stored.size == (side, side)
    diff = np.abs(np.asarray(stored, np.int16) - np.asarray(decoded, np.int16))
    if suffix == ".png":
        assert diff.max() == 0
    else:
        assert diff.mean() < 6  # (a noisy texture: about 4 levels at quality 90)
    assert encode_for_store(decoded.copy())[1] == suffix  # (Pillow's copy keeps what the decoder said)
