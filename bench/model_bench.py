"""Model speed: LRN and the forward pass against the plain eager reference, same process, same run.

python -m bench.model_bench
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import agreement, machine, median, setup_threads, table, time_call, time_in_turns
from bench.reference import from_towers
from model.alexnet import alexnet
from model.layers import LocalResponseNorm
from model.predictor import serving_model
from model.quantize import calibrate
from model.runtime import GLIBC_DEFAULT_THRESHOLD, page_faults, retain_freed_memory
from model.weights import load_weights


def bench_lrn() -> list[dict[str, Any]]:
    """conv1's LRN input at batch 16: (16, 96, 55, 55)."""
    ours, ref = LocalResponseNorm(), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    a = torch.randn(16, 96, 55, 55).relu() * 10
    rows = []
    with torch.no_grad():
        torch.testing.assert_close(ours(a), ref(a), rtol=1e-5, atol=1e-6)
        t_ref, t_ours = median(time_call(lambda: ref(a))), median(time_call(lambda: ours(a)))
    rows.append({"case": "LRN forward (16,96,55,55)", "ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_ours})
    g = torch.randn_like(a)

    def fwd_bwd(m: nn.Module) -> None:
        x = a.detach().requires_grad_()
        m(x).backward(g)

    t_ref, t_ours = median(time_call(lambda: fwd_bwd(ref))), median(time_call(lambda: fwd_bwd(ours)))
    rows.append({"case": "LRN forward+backward", "ours_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_ours})
    return rows


def _conv_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Tensor]]:
    """Every convolution of ``model`` with the input it sees in a forward pass of ``x``."""
    seen: list[tuple[nn.Conv2d, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].clone(memory_format=torch.preserve_format))))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def onnx_runtime(ref: nn.Module, tmp: Path) -> Any:
    """The reference exported to ONNX and loaded in ONNX Runtime's CPU provider with every graph optimisation, as
    many intra-op threads as torch uses: the peer a user would deploy instead. None without the `bench` extra."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("(onnxruntime missing: pip install -e '.[bench]' to measure ONNX Runtime beside the serving path)")
        return None
    path = tmp / "alexnet.onnx"
    x = torch.randn(1, 3, 224, 224)
    # at 224 px pool5 is already 6x6 and the adaptive pool an identity, which the exporter cannot size with a dynamic batch
    ref = nn.Sequential(*(nn.Identity() if isinstance(m, nn.AdaptiveAvgPool2d) else m for m in ref)).eval()  # (shares its layers)
    torch.onnx.export(ref, (x,), str(path), input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"x": batch})[0]


def onnx_runtime_int8(tmp: Path, calibration: list[torch.Tensor]) -> Any:
    """ONNX Runtime's own static int8 quantisation of the model ``onnx_runtime`` exported to ``tmp``, calibrated on
    the same images as ours: its pre-processing (shape inference, graph optimisation), then ``quantize_static`` in the
    QDQ format its documentation recommends for the CPU, per-channel int8 weights, uint8 activations, min-max ranges."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"x": b.numpy()} for b in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quant_pre_process(str(tmp / "alexnet.onnx"), str(tmp / "prepared.onnx"))
    quantize_static(str(tmp / "prepared.onnx"), str(tmp / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "int8.onnx"), opts, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"x": batch})[0]


def bench_forward(batches: tuple[int, ...] = (1, 16, 64)) -> list[dict[str, Any]]:
    """The serving path (Predictor's model: channels_last; fp32 with packed fc; int8 with static int8 conv2-conv5,
    fc6 and fc7; and the dynamic int8 fc layers that uncalibrated weights get) against the reference, and against
    ONNX Runtime running the same function, in fp32 and in its own static int8 with the same calibration images."""
    import tempfile

    torch.manual_seed(0)
    net = alexnet(num_classes=1000).eval()
    ref = from_towers(net).eval()
    calibration = [torch.randn(16, 3, 224, 224) for _ in range(2)]
    serving, _ = serving_model(copy.deepcopy(net))  # exactly as Predictor serves fp32 on the CPU
    int8, _ = serving_model(copy.deepcopy(net), precision="int8", calibration=calibrate(net, calibration))
    int8_fc, _ = serving_model(copy.deepcopy(net), precision="int8")  # weights without calibration: fc layers only
    ort_int8 = None
    with tempfile.TemporaryDirectory() as tmp:
        ort_run = onnx_runtime(ref, Path(tmp))
        if ort_run is not None:
            ort_int8 = onnx_runtime_int8(Path(tmp), calibration)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected = ref(x)
            got = serving(xc)
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
            t_ref = time_call(lambda x=x: ref(x))
            retain_freed_memory(GLIBC_DEFAULT_THRESHOLD)  # the reference as a plain process runs it
            t_ref_glibc = time_call(lambda x=x: ref(x))
            retain_freed_memory()
            paths: dict[str, Callable[[], object]] = {
                "ours": lambda x=xc: serving(x),
                "int8": lambda x=xc: int8(x),
                "int8_fc": lambda x=xc: int8_fc(x),
            }
            if ort_run is not None and ort_int8 is not None:
                xn = x.numpy()
                np.testing.assert_allclose(ort_run(xn), expected.numpy(), rtol=1e-3, atol=1e-3)
                paths |= {"ort": lambda xn=xn: ort_run(xn), "ort_int8": lambda xn=xn: ort_int8(xn)}
            # in turns, so that a slow phase of the machine falls on every path alike, not on one
            t = time_in_turns(paths)
            t_ours, t_int8, t_int8_fc, t_ort, t_ort_int8 = (t.get(k, []) for k in ("ours", "int8", "int8_fc", "ort", "ort_int8"))
            top1, overlap = agreement(int8(xc), expected)
            # the serving path's ten convolutions alone, on the inputs they see: no fp32 path can
            # beat the reference by more than t_ref / t_conv without faster convolutions
            convs = _conv_inputs(serving, xc)
            t_conv = time_call(lambda convs=convs: [conv(inp) for conv, inp in convs])
        rows.append(
            {
                "batch": b,
                "reference_img_s": b / median(t_ref),
                "fp32_img_s": b / median(t_ours),
                "int8_img_s": b / median(t_int8),
                "fp32_speedup": median(t_ref) / median(t_ours),
                "reference_glibc_img_s": b / median(t_ref_glibc),
                "fp32_vs_plain_process": median(t_ref_glibc) / median(t_ours),
                "int8_speedup": median(t_ref) / median(t_int8),
                "int8_fc_only_img_s": b / median(t_int8_fc),
                "reference_p50_ms": 1e3 * median(t_ref),
                "fp32_p50_ms": 1e3 * median(t_ours),
                "int8_p50_ms": 1e3 * median(t_int8),
                "convs_alone_ms": 1e3 * median(t_conv),
                "fp32_speedup_bound": median(t_ref) / median(t_conv),
                "int8_top1_agree": top1,
                "int8_top5_overlap": overlap,
                **(
                    {
                        "ort_img_s": b / median(t_ort),
                        "ort_p50_ms": 1e3 * median(t_ort),
                        "fp32_vs_ort": median(t_ort) / median(t_ours),
                        "ort_int8_img_s": b / median(t_ort_int8),
                        "int8_vs_ort_int8": median(t_ort_int8) / median(t_int8),
                    }
                    if t_ort
                    else {}
                ),
            }
        )
    return rows


def bench_allocator(batch: int = 16, rounds: int = 3, passes: int = 5) -> dict[str, Any]:
    """The fp32 serving path with glibc's default malloc thresholds against retained freed memory
    (model/runtime.py, the service's default), alternating in one process: time and page faults."""
    torch.manual_seed(0)
    net, _ = serving_model(alexnet(num_classes=1000))
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"default": [], "retained": []}
    faults: dict[str, list[float]] = {"default": [], "retained": []}
    with torch.inference_mode():
        for _ in range(rounds):
            for mode, threshold in (("default", GLIBC_DEFAULT_THRESHOLD), ("retained", 1 << 30)):
                retain_freed_memory(threshold)
                net(x), net(x)  # settle
                f0 = page_faults()
                times[mode] += time_call(lambda: net(x), warmup=0, min_repeats=passes, min_seconds=0)
                faults[mode].append((page_faults() - f0) / passes)
    retain_freed_memory()
    t_def, t_ret = median(times["default"]), median(times["retained"])
    return {
        "batch": batch,
        "glibc_default_img_s": batch / t_def,
        "retained_img_s": batch / t_ret,
        "speedup": t_def / t_ret,
        "glibc_default_faults_per_pass": median(faults["default"]),
        "retained_faults_per_pass": median(faults["retained"]),
    }


def _fmnist_test(predictor: Any, limit: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The Fashion-MNIST test images through the serving preprocessing, in batches of 250, and their labels."""
    from model.datasets import fashion_mnist

    src = fashion_mnist(split="test")
    n = len(src) if limit is None else min(limit, len(src))
    batches = [torch.stack([predictor._transform(src.pil_image(i)) for i in range(a, min(n, a + 250))]) for a in range(0, n, 250)]
    return batches, src.labels[:n]


def benchagreement(weights: Path) -> dict[str, Any]:
    """On the 10,000 Fashion-MNIST test images with the default model: int8 against fp32 (top-1
    agreement, top-5 overlap, accuracy), and the fp32 serving path against the plain reference
    (top-5 identical); the speed of the three on this model (64 px), over the set and at batch 1. Weights exported
    before int8 calibration existed are calibrated in a copy first, as `alexnet calibrate` would (512 training images)."""
    import shutil
    import tempfile

    from model.predictor import Predictor
    from model.weights import read_meta

    fp32 = Predictor(weights)
    with tempfile.TemporaryDirectory() as tmp:
        calibrated = weights
        if not read_meta(weights).calibration:
            from training.data import open_source
            from training.export import calibrate_weights

            calibrated = Path(tmp) / weights.name
            shutil.copyfile(weights, calibrated)
            calibrate_weights(calibrated, open_source("fashion-mnist", split="train", size=fp32.meta.preset.resize_size))
            print(f"({weights} has no int8 calibration: calibrated a copy on 512 training images, as `alexnet calibrate` does)")
        int8 = Predictor(calibrated, precision="int8")
    ref = from_towers(load_weights(weights)[0]).eval()  # the paper's layers as stored (the Predictor folds fc6 at 64 px)
    batches, labels = _fmnist_test(fp32)
    out: dict[str, list[torch.Tensor]] = {"fp32": [], "int8": [], "reference": []}
    seconds = {"fp32": 0.0, "int8": 0.0, "reference": 0.0}
    run = {"fp32": lambda b: fp32.forward(b)[0], "int8": lambda b: int8.forward(b)[0], "reference": ref}
    with torch.inference_mode():
        for b in batches:
            for name, fn in run.items():  # (the Predictors run batches of 64: their max_batch)
                start = time.perf_counter()
                out[name].append(fn(b))
                seconds[name] += time.perf_counter() - start
        one = batches[0][:1]
        b1 = {name: median(time_call(lambda fn=fn: fn(one))) for name, fn in run.items()}
    f, i, r = (torch.cat(out[k]) for k in ("fp32", "int8", "reference"))
    top1, overlap = agreement(i, f)
    top5_same = float((f.topk(5, dim=1).indices == r.topk(5, dim=1).indices).all(dim=1).float().mean())
    return {
        "images": len(labels),
        "fp32_top1_acc": float((f.argmax(1) == labels).float().mean()),
        "int8_top1_acc": float((i.argmax(1) == labels).float().mean()),
        "int8_top1_agree": top1,
        "int8_top5_overlap": overlap,
        "fp32_vs_reference_top5_identical": top5_same,
        **{f"{k}_img_s": len(labels) / v for k, v in seconds.items()},
        **{f"{k}_b1_ms": 1e3 * v for k, v in b1.items()},
    }


def bench_extract(weights: Path, n: int = 2048, size: int = 224) -> dict[str, Any]:
    """fc7 extraction end to end over a folder of JPEG files (DataLoader decoding, preprocessing and
    re-encoding for the store in 2 worker processes, started within the timing; the model), against
    the model alone on the same preprocessed batches."""
    import tempfile

    from PIL import Image

    from index.extract import _batches, images_from_source
    from model.datasets import fashion_mnist
    from model.predictor import Predictor

    predictor = Predictor(weights)
    src = fashion_mnist(split="test")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):  # the test images as a user's folder of JPEG photos of this size
            src.pil_image(i).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(f"{tmp}/{i:05d}.jpg", quality=90)
        ds = images_from_source(tmp, predictor)
        start = time.perf_counter()
        tensors = []
        for batch in _batches(ds, 64, 2):
            predictor.forward(batch.pixels)
            tensors.append(batch.pixels)
        end_to_end = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for batch in tensors:
        predictor.forward(batch)
    model_only = n / (time.perf_counter() - start)
    return {
        "case": f"{n} JPEG files {size}x{size}, batch 64",
        "end_to_end_img_s": end_to_end,
        "model_only_img_s": model_only,
        "ratio": end_to_end / model_only,
    }


def bench_train_step(crop: int = 64, batch: int = 128) -> dict[str, Any]:
    """One training step of the default recipe (``training.train.Trainer``'s: fc6 folded, bf16 autocast where the CPU
    multiplies bf16 natively, fused AdamW with the recipe's groups) against the path before those two changes
    (fc6 unfolded, fp32) and the eager reference (grouped torch.nn, foreach AdamW), same inputs, same run."""
    from training.precision import uses_bf16
    from training.recipes import recipe
    from training.schedule import make_optimizer

    cfg = recipe("fashion-mnist")
    torch.manual_seed(0)
    before = alexnet(num_classes=10, bias_init=0.1).train().to(memory_format=torch.channels_last)
    ref = from_towers(before).train()
    ours = copy.deepcopy(before).fold_fc6((1, 1))
    x, y = torch.randn(batch, 3, crop, crop), torch.randint(0, 10, (batch,))
    xc = x.contiguous(memory_format=torch.channels_last)
    opt_before = make_optimizer(cfg, before)
    opt_ours = make_optimizer(cfg, ours)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    bf16 = uses_bf16(cfg, torch.device("cpu"))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step(model: nn.Module, opt: torch.optim.Optimizer, inp: torch.Tensor, autocast: Any = None) -> None:
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            logits = model(inp)
        else:
            with autocast:
                logits = model(inp).float()
        nn.functional.cross_entropy(logits, y).backward()
        opt.step()

    t_ref = median(time_call(lambda: step(ref, opt_ref, x), warmup=2, min_repeats=3, min_seconds=3))
    t_before = median(time_call(lambda: step(before, opt_before, xc), warmup=2, min_repeats=3, min_seconds=3))
    t_ours = median(time_call(lambda: step(ours, opt_ours, xc, amp), warmup=2, min_repeats=3, min_seconds=3))
    return {
        "case": f"train step {crop}px batch {batch}",
        "bf16": bf16,
        "ours_img_s": batch / t_ours,
        "before_img_s": batch / t_before,
        "reference_img_s": batch / t_ref,
        "vs_before": t_before / t_ours,
        "speedup": t_ref / t_ours,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=Path("data/weights/fashion-mnist.safetensors"), help="the default model")
    args = ap.parse_args(argv if argv is not None else [])
    setup_threads()
    alloc = bench_allocator()  # leaves freed memory retained, as the service runs, for both paths below
    lrn, fwd = bench_lrn(), bench_forward()
    train = [bench_train_step(batch=b) for b in (128, 256)]
    agree = extract = None
    if args.weights.is_file():
        agree, extract = benchagreement(args.weights), bench_extract(args.weights)
    else:
        print(f"({args.weights} not found: `make run` trains it; int8 agreement and extraction skipped)")
    print("# LRN: model.layers.LocalResponseNorm vs torch.nn.LocalResponseNorm")
    print(table(lrn, ["case", "ours_ms", "reference_ms", "speedup"]))
    print("\n# Forward pass, 224x224, 1000 classes: serving path vs the grouped torch.nn reference")
    print("# (fp32: packed fc; int8: static int8 conv2-conv5, fc6, fc7, as ALEXNET_PRECISION=int8 serves calibrated weights;")
    print("#  int8_fc_only: dynamic int8 fc layers, what weights without calibration get)")
    print(
        table(
            fwd,
            [
                "batch",
                "reference_img_s",
                "fp32_img_s",
                "int8_img_s",
                "fp32_speedup",
                "int8_speedup",
                "int8_fc_only_img_s",
                "reference_glibc_img_s",
                "fp32_vs_plain_process",
                "reference_p50_ms",
                "fp32_p50_ms",
                "int8_p50_ms",
                "convs_alone_ms",
                "fp32_speedup_bound",
                "int8_top1_agree",
                "int8_top5_overlap",
            ],
        )
    )
    print("\n# The same forward pass in ONNX Runtime (CPU provider, all graph optimisations; the reference exported to ONNX);")
    print("# ours and ORT timed in turns, five rounds of 0.25 s each")
    print(table(fwd, ["batch", "ort_img_s", "fp32_img_s", "fp32_vs_ort", "ort_p50_ms", "fp32_p50_ms", "reference_img_s"]))
    print("\n# int8: ours against ONNX Runtime's static int8 (quantize_static, QDQ, per-channel, same calibration images)")
    print(table(fwd, ["batch", "ort_int8_img_s", "int8_img_s", "int8_vs_ort_int8", "int8_speedup", "reference_img_s"]))
    print("(reference_glibc_img_s: the reference with glibc's default malloc thresholds, as a plain process runs it;")
    print(" fp32_vs_plain_process: the serving path, freed memory retained, against that)")
    print("(convs_alone_ms: the serving path's ten convolutions by themselves; fp32_speedup_bound: reference / that)")
    print("\n# Allocator: glibc's default thresholds vs freed memory retained (ALEXNET_RETAIN_FREED_MEMORY), fp32")
    print(table([alloc], list(alloc)))
    print("\n# Training step: the recipe's (fc6 trained folded, bf16 autocast if the CPU has it, fused AdamW, channels_last)")
    print("# vs before folding and bf16 (fp32, fc6 unfolded) and vs the eager reference (foreach AdamW)")
    print(table(train, ["case", "bf16", "ours_img_s", "before_img_s", "reference_img_s", "vs_before", "speedup"]))
    if agree and extract:
        print(f"\n# Default model ({args.weights}) on the Fashion-MNIST test set: int8 vs fp32, fp32 vs reference")
        print(table([agree], list(agree)))
        print("\n# fc7 extraction over a folder of JPEG files (index/extract.py) vs the model alone")
        print(table([extract], list(extract)))
    return {"machine": machine(), "allocator": alloc, "lrn": lrn, "forward": fwd, "train": train, "agreement": agree, "extract": extract}


if __name__ == "__main__":
    result = main([a for a in sys.argv[1:] if a != "--json"])
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
