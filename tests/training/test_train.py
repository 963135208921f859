"""End-to-end training on generated data, exact resume, two-device placement, export."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from model.datasets import DataError
from model.predictor import Predictor
from model.weights import WeightsError, load_familiarity, load_weights, read_meta
from training.checkpoint import load_checkpoint
from training.cli import main
from training.metrics import MetricsLog
from training.recipes import recipe
from training.train import Trainer, train


def tiny(tmp_path: Path, **kw: object):
    return recipe("tiny", out=str(tmp_path), **kw)


@pytest.mark.slow
def test_tiny_run_produces_weights_that_beat_chance(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, epochs=6)
    trainer = train(cfg, progress=False)
    weights = tmp_path / "model.safetensors"
    predictor = Predictor(weights)
    src = trainer.train_src
    n = 64
    images = [src.pil_image(i) for i in range(n)]
    preds = predictor.classify(images, k=1)
    acc = sum(p[0].index == src.label(i) for i, p in enumerate(preds)) / n
    assert acc > 0.5, f"accuracy {acc} on its own training images (chance is 0.25)"
    meta = predictor.meta
    assert meta.recipe["name"] == "tiny" and meta.metrics["top1"] > 25.0
    assert len(meta.preset.pca_eigval) == 3 and meta.preset.crop_size == 64
    for name in ("metrics.csv", "metrics.jsonl", "curves.png", "config.json", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    assert Image.open(tmp_path / "curves.png").size[0] > 500


def test_held_out_images_are_not_trained_on_and_fit_the_temperature_and_the_score(tmp_path: Path) -> None:
    trainer = train(tiny(tmp_path, holdout=64), progress=False)
    assert len(trainer.train_src) == 192  # generated:256 less the 64 held out
    meta = read_meta(tmp_path / "model.safetensors")
    assert meta.temperature["images"] == 64 and meta.temperature["held_out_trained_on"] is False
    assert meta.temperature["nll_after"] <= meta.temperature["nll_before"]  # the fitted T is the NLL's minimum, T = 1 included
    fam = load_familiarity(tmp_path / "model.safetensors")
    assert fam is not None and fam.info["held_out_images"] == 64 and fam.info["reference_images"] == 192
    assert fam.layers == ("conv1", "conv3", "fc7")
    # `alexnet familiarity` refits the same way in place and leaves the hash alone
    assert main(["familiarity", str(tmp_path / "model.safetensors")]) == 0
    again = read_meta(tmp_path / "model.safetensors")
    assert again.content_hash == meta.content_hash and again.temperature["value"] == pytest.approx(meta.temperature["value"])


def test_resume_gives_the_same_parameters(tmp_path: Path) -> None:
    train(tiny(tmp_path / "full"), export=False, progress=False)  # 2 epochs of 8 steps
    part = tiny(tmp_path / "part")
    first = Trainer(part, progress=False)
    first.stop_at_step = 5  # as if Ctrl-C came in the middle of the first epoch
    first.fit()
    assert first.step == 5 and (tmp_path / "part" / "checkpoint.pt").is_file()
    MetricsLog(tmp_path / "part").append({"epoch": 9, "step": 999})  # a row written after the checkpoint, then killed
    second = train(part, resume=True, export=False, progress=False)
    assert second.step == 16
    steps = [r["step"] for r in MetricsLog(tmp_path / "full").rows()]
    assert steps == [8, 16] and [r["step"] for r in MetricsLog(tmp_path / "part").rows()] == steps  # one run, not two mixed
    train(tiny(tmp_path / "full"), export=False, progress=False)  # a new run in the same directory starts the files over
    assert [r["step"] for r in MetricsLog(tmp_path / "full").rows()] == steps
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert [r["val_top1_err"] for r in a["history"]] == [r["val_top1_err"] for r in b["history"]]


@pytest.mark.parametrize(
    ("one_device", "two_devices"),
    [
        ("cpu", "cpu,cpu"),
        pytest.param("cuda:0", "cuda:0,cuda:1", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")),
    ],
)
def test_two_device_training_steps_equal_one_device(tmp_path: Path, one_device: str, two_devices: str) -> None:
    one = Trainer(tiny(tmp_path / "one", max_steps=3, devices=one_device, amp=False), progress=False)
    two = Trainer(tiny(tmp_path / "two", max_steps=3, devices=two_devices, amp=False), progress=False)
    assert two.model.devices == tuple(torch.device(d) for d in two_devices.split(","))
    two.model.load_state_dict(one.model.state_dict())
    for t in (one, two):
        torch.manual_seed(1)  # the same dropout masks in both runs
        t.fit()
    for (k, a), (_, b) in zip(one.model.state_dict().items(), two.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5, msg=k)


def test_unknown_recipe_and_missing_resume_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("imagenet-fast")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny(tmp_path), resume=True, progress=False)


def test_export_cli_writes_loadable_weights(tmp_path: Path) -> None:
    train(tiny(tmp_path, max_steps=2), export=False, progress=False)
    out = tmp_path / "exported.safetensors"
    assert main(["export", str(tmp_path / "checkpoint.pt"), str(out)]) == 0
    _model, meta = load_weights(out)
    assert meta.class_names == ("red", "green", "blue", "white") and "top1" in meta.metrics
    assert meta.calibration["images"] == 256 and len(meta.calibration["ranges"]) == 24  # every conv's in and out, fc7's and fc8's in, x2
    assert main(["evaluate", str(out), "--data", "generated:64", "--confusion", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()


def test_calibrate_cli_adds_int8_ranges_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.predictor import Predictor
    from model.quantize import Int8ConvBlock

    train(tiny(tmp_path, max_steps=2), export=False, progress=False)
    out = tmp_path / "plain.safetensors"
    assert main(["export", str(tmp_path / "checkpoint.pt"), str(out), "--no-eval", "--no-calibrate"]) == 0
    before = read_meta(out)
    assert before.calibration == {}
    assert main(["calibrate", str(out), "--data", "generated:64", "--images", "32"]) == 0
    after = read_meta(out)
    assert after.calibration["images"] == 32 and after.content_hash == before.content_hash
    assert "hash" in capsys.readouterr().out
    assert sum(isinstance(m, Int8ConvBlock) for m in Predictor(out, precision="int8").model.modules()) == 8
    other = tmp_path / "other"  # a folder whose classes are not the model's
    for name in ("cat", "dog"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), "gray").save(other / name / "a.png")
    with pytest.raises((WeightsError, DataError), match="cat"):
        main(["calibrate", str(out), "--data", str(other)])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    """docker stop, Kubernetes and Slurm pre-emption send SIGTERM: the run stops after the step with a checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "model.console", "train", "--recipe", "tiny", "--epochs", "200", "--out", str(tmp_path), "--no-export"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "config.json").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(3)  # some steps into the first epochs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted: checkpoint saved" in err
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert 0 < state["step"] < 200 * 8  # mid-run (the tiny recipe: 8 steps per epoch)


def test_weight_average_is_what_is_evaluated_and_exported(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, ema=0.9, epochs=1)
    trainer = train(cfg, progress=False)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    net, _ = load_weights(tmp_path / "model.safetensors")
    assert ck["fc6_folded"] == [1, 1]  # trained folded: fold the exported (paper-shaped) fc6 back to compare
    exported = net.fold_fc6((1, 1)).state_dict()
    for name, avg in ck["ema"].items():
        exact = "fc6.weight" not in name  # (spread over 36 copies and summed back: float rounding)
        torch.testing.assert_close(exported[name], avg, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-7, msg=name)
    # the average lags the last weights: it is a different point from them
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])
    assert len(trainer.history) == 1
