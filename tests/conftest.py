"""Shared fixtures: small weights files made by the tests themselves (never downloaded)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, os.cpu_count() or 1))

from model.alexnet import alexnet  # noqa: E402
from model.preprocess import Preset  # noqa: E402
from model.weights import WeightsMeta, save_weights  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402

SMALL_CLASSES = ("red", "green", "blue", "white")


def make_weights(path: Path, *, num_classes: int = 4, crop: int = 64, seed: int = 0) -> WeightsMeta:
    """A randomly initialised full AlexNet at a small input size, saved as a weights file."""
    torch.manual_seed(seed)
    model = alexnet(num_classes=num_classes, bias_init=0.1)
    names = SMALL_CLASSES if num_classes == len(SMALL_CLASSES) else tuple(f"class-{i}" for i in range(num_classes))
    meta = WeightsMeta(
        architecture="alexnet-2tower",
        class_names=names,
        preset=Preset.for_crop(crop, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        recipe={"name": "test-random", "seed": seed},
    )
    return save_weights(model, meta, path)


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    make_weights(path)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped, saying why, where the package is missing)."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A new, empty database on that server."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Run a test on each store: None (SQLite in the index directory) and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))
