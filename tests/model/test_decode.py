"""model.decode: reduced-scale JPEG decoding."""

import io

import pytest
from PIL import Image

from model.decode import DecodeError, decode_image


def test_min_side_decodes_a_large_jpeg_at_reduced_scale_and_reports_the_declared_size() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (10, 120, 200)).save(buf, format="JPEG")
    full = decode_image(buf.getvalue())
    small = decode_image(buf.getvalue(), min_side=256)
    assert full.image.size == (1600, 1200)
    assert small.image.size == (400, 300)  # 1/4 scale: the smallest that keeps both sides >= 256
    assert (small.width, small.height) == (1600, 1200)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_image(buf.getvalue(), min_side=256, max_pixels=1_000_000)  # the limit applies to the declared size
