"""TorchServe's handler for the weights file (packed by ``torch-model-archiver`` with ``peer.json``, which names the
weights, the variant and this repository). Each request's body is the JPEG, as TorchServe's image classifier
examples send it (``curl -T image.jpg``); the answer is the same top-5 JSON as every peer's. TorchServe batches
the requests (``batchSize``, ``maxBatchDelay`` in config.properties) and hands the handler one list."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler


class AlexNetHandler(BaseHandler):  # type: ignore[misc]
    def initialize(self, context: Any) -> None:
        spec = json.loads((Path(context.system_properties["model_dir"]) / "peer.json").read_text())
        sys.path.insert(0, spec["repo"])
        from bench.peers.work import Work

        self.work = Work(spec["weights"], spec["variant"])
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        return self.work([bytes(row.get("data") or row.get("body")) for row in data])
