"""The settings of every ``alexnet`` process: environment variables with the prefix ``ALEXNET_`` (or a ``.env``
file), read once at the start (``read_settings``) and passed down; no other module reads them."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.factory import DEFAULT_AUTO_THRESHOLD, DEFAULT_NPROBE, DEFAULT_RERANK, DEFAULT_SNAPSHOT_EVERY
from index.store import StoreTimeouts
from model.decode_cost import DEFAULT_DECODE_BUDGET

__all__ = ["Settings", "get_settings", "read_settings"]


class Settings(BaseSettings):
    """Every ``ALEXNET_*`` variable of the service, with its default and meaning; the README's configuration table is
    made from these fields (``python -m app.settings --readme``) and a test keeps the two equal."""

    model_config = SettingsConfigDict(env_prefix="ALEXNET_", env_file=".env", extra="ignore")

    weights: Path = Field(Path("data/weights/fashion-mnist.safetensors"), description="weights file to serve")
    index_dir: Path = Field(
        Path("data/index"),
        description="index directory, created empty if missing: the SQLite store and this process's FAISS snapshot (with "
        "`ALEXNET_STORE_URL`, the snapshot only); `make run` uses `data/index/<weights hash>`",
    )
    store_url: SecretStr | None = Field(
        None,
        description="`postgresql://USER:PASSWORD@HOST:PORT/DB`: the gallery lives in PostgreSQL, shared by replicas on several "
        'machines (see "Scale beyond one machine"); unset: SQLite in the index directory',
    )
    store_lock_timeout_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="PostgreSQL: how long an add, delete or label change waits for another session's write lock; then 503 with "
        "`Retry-After` (so a replica frozen mid-add never hangs the others' writes)",
    )
    store_statement_timeout_s: float = Field(30.0, gt=0, le=3600, description="PostgreSQL: the longest one statement may run (then 503)")
    store_idle_in_transaction_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="PostgreSQL: the server ends a session of this service left idle inside a transaction after this long, "
        "releasing what it held",
    )
    store_keepalive_s: int = Field(
        10, ge=1, le=3600, description="PostgreSQL: TCP keepalive idle time; a connection to a vanished host is found dead in twice this"
    )
    follow_interval_s: float = Field(
        0.2,
        gt=0,
        le=60,
        description="how often each process looks for changes that other processes wrote (PostgreSQL also wakes it at once with NOTIFY)",
    )
    max_follow_lag_s: float = Field(
        10.0, gt=0, description="`/readyz` says `degraded` when the index has not been current with the store for this long"
    )
    api_key: SecretStr | None = Field(
        None, description="key for `POST /images`, `PATCH` and `DELETE /images/{id}`; unset: those answer 403"
    )
    device: str = Field("cpu", description="`cpu`, `cuda:0`, or `cuda:0,cuda:1` (two towers)")
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="`int8` (CPU): conv2-conv5, fc6 and fc7 in int8 with the ranges calibrated at export (or added by "
        "`alexnet calibrate WEIGHTS`), fc8 with fp16 weights; an image's answer does not depend on its batch. Weights "
        "without calibration run only the fc layers in int8, with ranges measured per batch (a warning says so). Speed "
        'and agreement with fp32: "Benchmarks"',
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="`info` writes the access log (method, route template, status, latency, request id); `warning` hides it "
        "(`alexnet serve --log-level`)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line, uvicorn's included, each with the request id"
    )
    cors_origins: str = Field("", description="origins a browser may call the API from, comma-separated, or `*`; empty: none")
    host: str = Field("127.0.0.1", description="bind address (the container binds `0.0.0.0`)")
    port: int = Field(8000, description="port")

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request body cap (413 before decoding)")
    max_pixels: int = Field(
        40_000_000, ge=1, description="decoded pixel limit per image (413), checked against the size the file declares"
    )
    max_files: int = Field(16, ge=1, description="images per request")
    decode_budget_mb: int = Field(
        DEFAULT_DECODE_BUDGET // 2**20,
        ge=1,
        description="MiB of decoded images in flight in the whole process, reserved from the header before a pixel is "
        "decoded: an image that needs more than all of it gets 413, one that does not fit beside the decodes running now "
        'gets 503 with `Retry-After: 1` (what each image needs: "What an upload may cost")',
    )
    reduced_decoding: bool = Field(
        True,
        description="decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the model's resize (and, for "
        "`POST /images`, the stored copy's 512 px); `false`: decode every pixel. Other formats always decode whole",
    )
    max_fields: int = Field(16, ge=1, description="non-file form fields per request")

    max_batch: int = Field(16, ge=1, description="dynamic batching: images per forward pass")
    max_queue_images: int = Field(
        16,
        ge=0,
        description="how much work may be in flight: the images of the requests being read, decoded, queued for a forward pass "
        "or in one (one per request until its images are known). Past it a request gets 503 with `Retry-After: 1` at once, "
        "from its headers, before its body is read (as TorchServe's `job_queue_size`, Triton's `max_queue_size`), counted in "
        "`alexnet_overload_rejections_total`; 0: no bound. A request whose client has hung up before its forward pass is not "
        "computed (`alexnet_abandoned_requests_total`)",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="dynamic batching: how long a batch waits for requests that have not arrived yet (those arriving are waited "
        "for: ALEXNET_BATCH_WAIT_BUSY_MS); 0: a batch is what has come when the model is free",
    )
    batch_wait_busy_ms: float = Field(
        30.0, ge=0, description="how long the batcher waits for requests that have arrived and are still decoding (full batches under load)"
    )
    exclusive_forward: bool = Field(
        True, description="on the CPU, decode uploads between forward passes, not during them (each pass runs at full speed)"
    )
    torch_threads: int = Field(0, ge=0, description="threads of the forward pass (0: one per core)")
    faiss_threads: int = Field(
        1, ge=0, description="OpenMP threads per FAISS search (concurrent searches share the cores; 0: FAISS's default)"
    )
    decode_threads: int = Field(8, ge=1, description="threads decoding uploads and calling the index")
    retain_freed_memory: bool = Field(
        True,
        description="glibc: keep freed activation memory in the process instead of returning it to the OS, so forward passes "
        "stop page-faulting (the process keeps its peak memory). Also read by the `alexnet` commands that run the model",
    )
    download: bool = Field(
        False,
        description="`alexnet train`, `evaluate`, `calibrate` and `index build`: download Fashion-MNIST (checksums verified) "
        "when it is missing, as `--download` does; nothing downloads unasked",
    )
    fashion_mnist_mirror: str = Field("", description="where such a download comes from (empty: torchvision's first mirror)")

    index_factory: str = Field(
        "auto",
        description="`auto`: exact below `ALEXNET_INDEX_AUTO_THRESHOLD` images, `PCA256,IVF<nlist>,Flat` above; `flat`; or a "
        "FAISS factory string (`HNSW32`, ...)",
    )
    index_auto_threshold: int = Field(
        DEFAULT_AUTO_THRESHOLD,
        ge=1,
        description="collection size at which `auto` switches to the compressed index (rebuilt in the background)",
    )
    index_rerank: int = Field(
        DEFAULT_RERANK, ge=0, description="candidates of a compressed index re-scored exactly with the stored vectors (0: off)"
    )
    index_nprobe: int = Field(DEFAULT_NPROBE, ge=0, description="inverted lists an IVF index searches (0: nlist / 64, at least 16)")
    near_duplicate_threshold: float | None = Field(
        None, ge=-1, le=1, description="flag adds whose cosine to a stored image is at least this"
    )
    snapshot_every: int = Field(DEFAULT_SNAPSHOT_EVERY, ge=1, description="adds/deletes between FAISS snapshots (SQLite is always durable)")

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


def read_settings() -> Settings:
    """``Settings()`` from the environment; ``ValueError`` names each variable that does not hold a usable value."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        secret = {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
        problems = "; ".join(
            f"ALEXNET_{str(err['loc'][0]).upper()}: {err['msg']}" + ("" if err["loc"][0] in secret else f" (got {err.get('input')!r})")
            for err in e.errors()
        )
        raise ValueError(problems) from None


@lru_cache
def get_settings() -> Settings:
    """The settings of ``uvicorn app.main:app --factory`` (``alexnet serve`` passes its own to ``create_app``)."""
    return read_settings()


TABLE_START = "<!-- the settings table: made by `python -m app.settings --readme` from app/settings.py; edit it there -->"
TABLE_END = "<!-- end of the settings table -->"


# The variables of `make run`, the container's entrypoint (docker/entrypoint.sh) and compose.yaml, read by the shell,
# not by a Python process: name -> (default, meaning). With the fields above, every ALEXNET_* name the project reads
# is declared here once; a test finds each name used in the tree in one of the two.
DEPLOYMENT_VARIABLES: dict[str, tuple[str, str]] = {
    "ALEXNET_DATA_DIR": ("`data`", "where `make run` and the container keep the weights, training runs and the gallery"),
    "ALEXNET_RECIPE": ("`fashion-mnist`", "the recipe of the first start's training"),
    "ALEXNET_TRAIN_ARGS": ("empty", "extra `alexnet train` options for that training (`--minutes 5`)"),
    "ALEXNET_GALLERY": ("`fashion-mnist:test`", "what the first start's gallery is built from (a folder tree or a data set)"),
    "ALEXNET_INDEX_ARGS": ("empty", "extra `alexnet index build` options for that gallery (`--limit 1000`)"),
    "ALEXNET_IMAGE": ("`alexnet-service:latest`", "compose: the image's tag"),
    "ALEXNET_BASE_IMAGE": ("`python:3.11-slim-bookworm`", "compose: the image it is built on (a build argument)"),
    "ALEXNET_PUBLISH_PORT": ("`8000`", "compose: the host port of the `api` service"),
    "ALEXNET_PG_PASSWORD": ("`alexnet`", "compose, `replicas` profile: the PostgreSQL password"),
    "ALEXNET_REPLICAS": ("`3`", "compose, `replicas` profile: service replicas behind nginx"),
    "ALEXNET_LB_PORT": ("`8080`", "compose, `replicas` profile: the host port of nginx"),
    "ALEXNET_POSTGRES_IMAGE": ("`postgres:15-bookworm`", "compose, `replicas` profile: PostgreSQL's image (or a local stand-in)"),
    "ALEXNET_NGINX_IMAGE": ("`nginx:1.27-bookworm`", "compose, `replicas` profile: nginx's image (or a local stand-in)"),
}


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:,}"
    if value == "":
        return "empty"
    return f"`{value}`"


def settings_table() -> str:
    """The README's configuration table, one row per field: variable, default, description."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `ALEXNET_{name.upper()}` | {_default(field.default)} | {description} |")
    rows += ["", "`make run`, the container's entrypoint and `compose.yaml` also read:", ""]
    rows += ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {default} | {meaning} |" for name, (default, meaning) in DEPLOYMENT_VARIABLES.items()]
    return "\n".join(rows)


def write_readme_table(readme: Path) -> bool:
    """Put ``settings_table()`` between the markers of ``readme``; True when it changed."""
    text = readme.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    new = text[:start] + "\n" + settings_table() + "\n" + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--readme"]:
        write_readme_table(Path(__file__).resolve().parents[1] / "README.md")
    else:
        print(settings_table())
