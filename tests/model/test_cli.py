"""The console script, run as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.console", *args], capture_output=True, text=True, timeout=300)


def test_info_prints_metadata(small_weights: Path) -> None:
    r = run("info", str(small_weights))
    assert r.returncode == 0, r.stderr
    assert "alexnet-2tower" in r.stdout and "red, green, blue, white" in r.stdout
    d = json.loads(run("info", str(small_weights), "--json").stdout)
    assert d["num_classes"] == 4 and d["preset"]["crop_size"] == 64


def test_classify_prints_top5_per_file(small_weights: Path, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(img)
    bad = tmp_path / "b.jpg"
    bad.write_text("not an image")
    r = run("classify", str(small_weights), str(img), "-k", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(img) and len(lines) == 5 and lines[1].strip().endswith(("red", "green", "blue", "white"))
    r = run("classify", str(small_weights), str(img), str(bad), "--json", "-k", "2")
    assert r.returncode == 1 and "b.jpg: cannot classify" in r.stderr
    out = json.loads(r.stdout)
    assert out[0]["file"] == str(img) and len(out[0]["top"]) == 2


def test_unknown_command_and_missing_weights_fail_clearly(tmp_path: Path) -> None:
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = run("info", str(tmp_path / "none.safetensors"))
    assert r.returncode == 2 and "no such weights file" in r.stderr
    assert "serve" in run("--help").stdout


def test_version_and_help_show_real_values() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("alexnet-service ") and "torch " in r.stdout
    r = run("train", "--help")
    assert r.returncode == 0 and "default: None" not in r.stdout and "--devices" not in r.stdout
    from training.recipes import RECIPES

    shown = r.stdout.replace("\n", "").replace(" ", "")
    assert f"fashion-mnist={RECIPES['fashion-mnist'].epochs}" in shown  # the recipe's epochs, from training/recipes.py
