"""NVIDIA Triton (``nvidia-pytriton``: the Triton server in its wheel, a Python model calling the same module)
serving the weights file: ``python bench/peers/triton_server.py WEIGHTS VARIANT PORT`` (in the peers' virtual
environment). The wheel carries no ONNX Runtime or PyTorch backend, only Triton's Python backend, which PyTriton
binds to a function in this process.

POST /v2/models/alexnet/infer, the KServe v2 protocol with Triton's binary data extension: the JPEG as one BYTES
element, the top-5 JSON back as one BYTES element. Triton's dynamic batcher as its docs set it: ``max_batch_size``
16, ``max_queue_delay_microseconds`` 5000; the default queue policy (unbounded: no timeout, no size limit)."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: the model and bench packages

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers.work import Work

MAX_BATCH_SIZE, MAX_QUEUE_DELAY_US = 16, 5000


def use_this_pythons_library() -> None:
    """Triton's Python backend stub links libpython3.11 dynamically and finds the system's first; when this Python
    is another build (pyenv's 3.11.7 beside Debian's 3.11.2), the stub would run the system's interpreter on this
    one's standard library, which fails ('_thread.RLock' object has no attribute '_recursion_count')."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)


def main() -> None:
    weights, variant, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    use_this_pythons_library()
    work = Work(weights, variant)

    @batch
    def infer(image: np.ndarray) -> dict[str, Any]:
        answers = work([bytes(row[0]) for row in image])
        return {"top5": np.array([[json.dumps(a).encode()] for a in answers], dtype=np.bytes_)}

    config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="alexnet",
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="top5", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(max_batch_size=MAX_BATCH_SIZE, batcher=DynamicBatcher(max_queue_delay_microseconds=MAX_QUEUE_DELAY_US)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
