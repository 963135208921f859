"""Service settings: environment variables with the prefix ``ALEXNET_`` (or a ``.env`` file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.store import StoreTimeouts
from model.decode_cost import DEFAULT_DECODE_BUDGET

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALEXNET_", env_file=".env", extra="ignore")

    weights: Path = Field(Path("data/weights/fashion-mnist.safetensors"), description="weights file to serve")
    index_dir: Path = Field(
        Path("data/index"),
        description="index directory (created empty if missing): the SQLite store, or only the FAISS snapshot with store_url",
    )
    store_url: SecretStr | None = Field(
        None,
        description="postgresql://USER:PASSWORD@HOST:PORT/DB: the gallery lives in PostgreSQL, shared by replicas; unset: SQLite",
    )
    store_lock_timeout_s: float = Field(
        2.0, gt=0, le=600, description="PostgreSQL: how long an add or delete waits for another session's write lock before it answers 503"
    )
    store_statement_timeout_s: float = Field(30.0, gt=0, le=3600, description="PostgreSQL: the longest any one statement may run")
    store_idle_in_transaction_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="PostgreSQL: the server ends this service's sessions left idle in a transaction after this long"
    )
    store_keepalive_s: int = Field(10, ge=1, le=3600, description="PostgreSQL: TCP keepalive idle time of the store's connections")
    follow_interval_s: float = Field(
        0.2, gt=0, le=60, description="how often the index looks for changes other processes made (PostgreSQL also wakes it on NOTIFY)"
    )
    max_follow_lag_s: float = Field(
        10.0, gt=0, description="/readyz reports the index as behind when it has not been current with the store for this long"
    )
    api_key: SecretStr | None = Field(None, description="key for POST/DELETE /images; unset: those endpoints answer 403")
    device: str = Field("cpu", description="cpu, cuda:0, or cuda:0,cuda:1 (two towers)")
    precision: Literal["fp32", "int8"] = Field("fp32", description="int8 (CPU): int8 convolutions (calibrated weights) and fc layers")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="info shows the access log; warning hides it")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line (with the request id)")
    cors_origins: str = Field(
        "", description="origins a browser may call the API from: comma-separated (https://a.example,https://b.example) or *; empty: none"
    )
    host: str = "127.0.0.1"
    port: int = 8000

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request body cap; larger bodies get 413 before decoding")
    max_pixels: int = Field(40_000_000, ge=1, description="decoded pixel limit per image (413 above)")
    max_files: int = Field(16, ge=1, description="images per request")
    decode_budget_mb: int = Field(
        DEFAULT_DECODE_BUDGET // 2**20,
        ge=1,
        description="MiB of decoded images in flight in the process: an image that needs more than all of it gets 413, "
        "one that does not fit beside the decodes running now gets 503 with Retry-After",
    )
    reduced_decoding: bool = Field(
        True,
        description="decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that leaves the pixels the model and the stored copy need",
    )
    max_fields: int = Field(16, ge=1, description="non-file form fields per request")

    max_batch: int = Field(16, ge=1, description="images per forward pass")
    max_queue_images: int = Field(
        16,
        ge=0,
        description="images in flight (requests being read or decoded, and images waiting for or in a forward pass) beyond "
        "which requests get 503 with Retry-After at once, before their body is read (0: no bound)",
    )
    batch_wait_ms: float = Field(5.0, ge=0, description="how long the batcher waits for more requests to join a batch")
    batch_wait_busy_ms: float = Field(
        30.0, ge=0, description="how long it waits while requests it has seen arrive are still decoding (full batches under load)"
    )
    exclusive_forward: bool = Field(
        True, description="on the CPU, decode uploads between forward passes rather than during them (faster on few cores)"
    )
    torch_threads: int = Field(0, ge=0, description="threads for the forward pass (0: one per core)")
    faiss_threads: int = Field(1, ge=0, description="OpenMP threads per FAISS search (0: FAISS's default)")
    decode_threads: int = Field(8, ge=1, description="threads decoding uploads and touching the index")

    index_factory: str = Field(
        "auto", description="auto: exact search below index_auto_threshold images, PCA256,IVF,Flat above; flat; or a FAISS factory string"
    )
    index_auto_threshold: int = Field(20_000, ge=1, description="collection size at which auto switches to the compressed index")
    index_rerank: int = Field(100, ge=0, description="candidates of a compressed index re-scored exactly with the stored vectors")
    index_nprobe: int = Field(0, ge=0, description="inverted lists searched by an IVF index (0: nlist / 64, at least 16)")
    near_duplicate_threshold: float | None = Field(
        None, ge=-1, le=1, description="flag adds whose cosine to a stored image is at least this"
    )
    snapshot_every: int = Field(2000, ge=1, description="adds/deletes between FAISS snapshots (the SQLite store is always durable)")

    def store_timeouts(self) -> StoreTimeouts:
        return StoreTimeouts(
            lock_s=self.store_lock_timeout_s,
            statement_s=self.store_statement_timeout_s,
            idle_in_transaction_s=self.store_idle_in_transaction_timeout_s,
            keepalive_s=self.store_keepalive_s,
        )

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def threads(self) -> int:
        return self.torch_threads or (os.cpu_count() or 1)


@lru_cache
def get_settings() -> Settings:
    return Settings()
