"""Shared fixtures: small weights files made by the tests themselves (never downloaded; app/testing.py), PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, os.cpu_count() or 1))

from app.testing import SMALL_CLASSES, PostgresServer, Unavailable, make_weights  # noqa: E402


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    make_weights(path)
    return path


@pytest.fixture(scope="session")
def familiar_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small weights with a familiarity score and a temperature fitted on 96 generated shapes (``make_weights``)."""
    path = tmp_path_factory.mktemp("familiar") / "w.safetensors"
    make_weights(path, familiar_with=96)
    return path


@pytest.fixture(scope="session")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small networks with the same classes and other seeds: a gallery's weights and the ones that replace them."""
    d = tmp_path_factory.mktemp("two-models")
    make_weights(d / "w1.safetensors", seed=1, class_names=SMALL_CLASSES)
    make_weights(d / "w2.safetensors", seed=2, class_names=SMALL_CLASSES)
    return d / "w1.safetensors", d / "w2.safetensors"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped, saying why, where the package is missing)."""
    try:
        server = PostgresServer()
    except Unavailable as e:
        pytest.skip(f"{e}; the shared-gallery tests need a real server")
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
