"""What one decode may cost (model/decode_cost.py): crafted files refused from their structure, in a small
fraction of the time their decode would take, and the process-wide budget of decoded bytes."""

from __future__ import annotations

import gc
import io
import time

import pytest
from PIL import Image

from model.decode import DecodeError, decode_image
from model.decode_cost import MAX_JPEG_SCANS, DecodeBudget, decoded_bytes, jpeg_scans, png_chunks, png_row_bytes
from tests.hostile import one_bit_png, png, png_many_chunks, progressive_scan_bomb


def cpu_to_refuse(data: bytes) -> float:
    """CPU-seconds ``decode_image`` takes to refuse ``data`` (it must refuse it)."""
    start = time.process_time()
    with pytest.raises(DecodeError):
        decode_image(data)
    return time.process_time() - start


def test_jpeg_scans_are_counted_as_the_file_holds_them() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buf, format="JPEG", progressive=True)
    assert jpeg_scans(buf.getvalue()) == 10  # libjpeg's standard progression for colour
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, format="JPEG")
    assert jpeg_scans(buf.getvalue()) == 1
    assert jpeg_scans(progressive_scan_bomb(50, side=64)) == 6 + 49  # grey: 6 scans, one of them 50 times


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    bomb = progressive_scan_bomb(40_000)
    with pytest.raises(DecodeError, match="scans") as e:
        decode_image(bomb)
    assert e.value.kind == "too_large"
    spent = cpu_to_refuse(bomb)
    assert spent < 0.2, f"refusing took {spent:.2f} CPU-s"  # decoding it takes over 10 s


def test_jpeg_at_the_scan_limit_decodes_in_bounded_time() -> None:
    at_limit = progressive_scan_bomb(MAX_JPEG_SCANS - 5)  # 6 scans, one of them repeated
    assert jpeg_scans(at_limit) == MAX_JPEG_SCANS
    start = time.process_time()
    decode_image(at_limit)
    spent = time.process_time() - start
    assert spent < 1.0, f"{spent:.2f} CPU-s"


def test_png_with_a_flood_of_chunks_is_refused() -> None:
    data = png_many_chunks(20_000)
    assert png_chunks(data) > 10_000
    with pytest.raises(DecodeError, match="chunks") as e:
        decode_image(data)
    assert e.value.kind == "too_large"
    assert decode_image(png_many_chunks(100)).image.size == (64, 64)


def test_png_with_huge_filtered_rows_is_refused_from_its_header() -> None:
    """16-bit RGBA at 40 MP: 320 MB of Paeth-filtered rows in a 300 KB file (3.4 CPU-s to decode)."""
    data = png(6000, 6600, depth=16, colour=6, samples=4, row_filter=4)
    assert png_row_bytes(data) == 6600 * (1 + 6000 * 8)
    spent = cpu_to_refuse(data)
    assert spent < 0.2
    with pytest.raises(DecodeError, match="inflate and unfilter"):
        decode_image(data)
    assert decode_image(png(600, 660, depth=16, colour=6, samples=4, row_filter=4)).image.size == (600, 660)


def test_the_budget_refuses_what_can_never_fit_and_what_does_not_fit_now() -> None:
    data = one_bit_png(2000, 2000)  # 4 MP: about 36 MB to decode
    need = decoded_bytes(Image.open(io.BytesIO(data)))
    assert need == 2000 * 2000 * (1 + 8)
    with pytest.raises(DecodeError) as e:
        decode_image(data, budget=DecodeBudget(need - 1))
    assert e.value.kind == "too_large" and "decode budget" in str(e.value)
    budget = DecodeBudget(need + 1000)
    first = decode_image(data, budget=budget)
    held = budget.in_use
    assert held == 4 * 2000 * 2000  # what the RGB image holds; the rest went back at once
    with pytest.raises(DecodeError) as e:
        decode_image(one_bit_png(2000, 1990), budget=budget)
    assert e.value.kind == "busy"
    assert budget.in_use == held  # a refused decode holds nothing
    del first
    gc.collect()
    assert budget.in_use == 0  # freed with the image
    decode_image(one_bit_png(2000, 1990), budget=budget)  # fits again
    gc.collect()
    assert budget.in_use == 0 and budget.peak <= budget.total


def test_a_failed_decode_gives_its_reservation_back() -> None:
    data = png(300, 300)
    truncated = data[: len(data) - 20]
    budget = DecodeBudget(10**9)
    with pytest.raises(DecodeError):
        decode_image(truncated + b"\x00" * 8, budget=budget)
    assert budget.in_use == 0


def test_pillows_bomb_warning_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between Pillow's limit and twice it Pillow only warns: such an image is refused all the same."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="exceeds the limit of 1,000") as e:
        decode_image(png(40, 40), max_pixels=10**9)
    assert e.value.kind == "too_large"
