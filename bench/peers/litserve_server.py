"""LitServe serving the weights file: ``python bench/peers/litserve_server.py WEIGHTS VARIANT PORT`` (in the peers'
virtual environment). POST /predict with the JPEG as the multipart field "file", as LitServe's docs upload files.

Batching as its docs set it: ``max_batch_size`` 16 and ``batch_timeout`` 5 ms, one worker (``workers_per_device``)
holding the model with every core's threads."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: the model and bench packages

import litserve as ls

from bench.peers.work import Work

MAX_BATCH_SIZE, BATCH_TIMEOUT_S = 16, 0.005


class AlexNetAPI(ls.LitAPI):
    def __init__(self, weights: str, variant: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights, self.variant = weights, variant

    def setup(self, device: str) -> None:
        self.work = Work(self.weights, self.variant)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # (LitServe reads the annotation: none is its Request)
        return self.work.tensor(request["file"].file.read())

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, x: list[Any]) -> list[dict[str, Any]]:
        return self.work.answers(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    weights, variant, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batching = {"max_batch_size": MAX_BATCH_SIZE, "batch_timeout": BATCH_TIMEOUT_S}
    if "max_batch_size" in inspect.signature(ls.LitAPI.__init__).parameters:  # newer LitServe: the API holds them
        server = ls.LitServer(AlexNetAPI(weights, variant, **batching), accelerator="cpu", workers_per_device=1)
    else:
        server = ls.LitServer(AlexNetAPI(weights, variant), accelerator="cpu", workers_per_device=1, **batching)
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


if __name__ == "__main__":
    main()
