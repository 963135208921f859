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


def _photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth shapes with edges and some grain, so that JPEG's DCT scaling has detail to keep or lose."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 60 * np.sin(xx / w * 7 + rng.uniform(0, 3)) * np.cos(yy / h * 5)
    disk = ((xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    rgb = np.stack([base + 80 * disk, base * 0.8, 255 - base - 60 * disk], -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_min_long_side_keeps_the_stored_copy_whole_and_other_formats_decode_whole() -> None:
    im = _photo_like((2400, 1800))
    data = _jpeg(im)
    assert decode_image(data, min_side=68).image.size == (300, 225)  # 1/8: what a 68 px resize needs
    assert decode_image(data, min_side=68, min_long_side=512).image.size == (600, 450)  # 1/4: and a 512 px copy
    assert decode_image(data, min_side=1000).image.size == (2400, 1800)  # 1/2 would leave 900: decoded whole
    png = io.BytesIO()
    im.save(png, format="PNG", compress_level=1)
    assert decode_image(png.getvalue(), min_side=68).image.size == (2400, 1800)  # no DCT scale outside JPEG


def test_a_rotated_jpeg_is_reduced_upright_and_reports_its_upright_declared_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = _jpeg(_photo_like((1600, 1200)), exif=exif.tobytes())
    d = decode_image(data, min_side=68, min_long_side=512)
    assert d.image.size == (600, 800) and (d.width, d.height) == (1200, 1600)  # 1/2: 1/4 would leave 400 < 512


def test_reduced_decoding_gives_the_model_nearly_the_same_pixels() -> None:
    """What the model sees (shorter side resized to 68, centre crop 64) from a 1/8-scale decode against a full one."""
    import numpy as np

    from model.preprocess import Preset, pixels_transform

    to_pixels = pixels_transform(Preset(crop_size=64, resize_size=68))
    data = _jpeg(_photo_like((3200, 2400), seed=3))
    full, reduced = decode_image(data), decode_image(data, min_side=68)
    assert reduced.image.size == (400, 300)
    a, b = (to_pixels(d.image).numpy().astype(np.float32) for d in (full, reduced))
    assert np.abs(a - b).mean() < 1.5 and np.abs(a - b).max() < 40  # levels of 255
    assert np.abs(a - np.roll(a, 3, axis=-1)).mean() > 5 * np.abs(a - b).mean()  # the image has detail to lose


def _texture(size: tuple[int, int]) -> Image.Image:
    """Gratings a few output pixels wide, as brick, grass or gravel give: where a sampling grid that is off by
    a fraction of a pixel shows."""
    import numpy as np

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = 68 / min(w, h)  # output pixels per input pixel at a 68 px resize
    grey = 128 + 50 * np.sin(xx * s * 2.1) * np.cos(yy * s * 1.7) + 40 * np.sin((xx + 2 * yy) * s * 0.9)
    return Image.fromarray(np.stack([grey, grey * 0.9, 255 - grey], -1).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_decode_is_resized_onto_the_full_images_grid_in_every_orientation(orientation: int) -> None:
    """A side that is not a multiple of the scale leaves a partial last block, which ends up on another edge once
    the image is turned upright; the resize must sample the declared image's places all the same."""
    import numpy as np

    from model.preprocess import REDUCED_INFO, Preset, pixels_transform

    to_pixels = pixels_transform(Preset(crop_size=64, resize_size=68))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_texture((1203, 797)), exif=exif.tobytes())  # 1/8: 151x100 blocks, the last ones partial
    full, reduced = decode_image(data), decode_image(data, min_side=68)
    assert reduced.image.size in ((151, 100), (100, 151)) and (reduced.width, reduced.height) == full.image.size
    a, b = (to_pixels(d.image).numpy().astype(np.float32) for d in (full, reduced))
    rms = float(np.sqrt(((a - b) ** 2).mean()))
    untagged = reduced.image.copy()
    del untagged.info[REDUCED_INFO]  # the same pixels, resized as an ordinary image
    naive = float(np.sqrt(((a - to_pixels(untagged).numpy().astype(np.float32)) ** 2).mean()))
    assert rms < 3 and naive > 3 * rms  # here 2.1 against 10.5 levels of 255


def test_an_untagged_image_is_resized_exactly_as_torchvision_does() -> None:
    import torch
    from torchvision.transforms import v2

    from model.preprocess import resize_shorter

    for size in ((1203, 797), (797, 1203), (640, 640), (99, 70)):
        im = _texture(size)
        assert torch.equal(v2.functional.pil_to_tensor(resize_shorter(im, 68)), v2.functional.pil_to_tensor(v2.Resize(68)(im)))


def test_file_metadata_cannot_pose_as_a_reduced_decode() -> None:
    from PIL import PngImagePlugin

    from model.preprocess import REDUCED_INFO

    meta = PngImagePlugin.PngInfo()
    meta.add_text(REDUCED_INFO, "((1, 1), (0, 0, 1, 1))")
    buf = io.BytesIO()
    _texture((200, 150)).save(buf, format="PNG", pnginfo=meta)
    assert Image.open(io.BytesIO(buf.getvalue())).info.get(REDUCED_INFO)  # Pillow does read it into info
    assert REDUCED_INFO not in decode_image(buf.getvalue(), min_side=68).image.info
