"""``alexnet serve``: start uvicorn with the service settings, in one process or several (``--workers``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["ERRORS", "main"]

ERRORS = ()  # settings errors are ValueErrors: printed by the dispatcher (model/console.py)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alexnet serve", description="Start the HTTP service (settings: ALEXNET_* variables).")
    parser.add_argument("--host", help="bind address (default ALEXNET_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default ALEXNET_PORT or 8000)")
    parser.add_argument("--weights", help="weights file (default ALEXNET_WEIGHTS)")
    parser.add_argument("--index", help="index directory (default ALEXNET_INDEX_DIR)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="service processes on one port, sharing the gallery (each follows the store's change log; default 1)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default ALEXNET_LOG_LEVEL or info")
    args = parser.parse_args(argv[1:])
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    # flags become the settings' variables, so that worker processes (which build their own app) read the same
    for flag, var in ((args.weights, "ALEXNET_WEIGHTS"), (args.index, "ALEXNET_INDEX_DIR"), (args.log_level, "ALEXNET_LOG_LEVEL")):
        if flag:
            os.environ[var] = flag
    if args.workers > 1 and not os.environ.get("ALEXNET_TORCH_THREADS"):
        # each worker's forward passes share the cores with the others'
        os.environ["ALEXNET_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    store = "PostgreSQL (ALEXNET_STORE_URL)" if settings.store_url else f"index {settings.index_dir}"
    print(f"serving on http://{host}:{port}  (weights {settings.weights}, {store}, {args.workers} worker(s))", flush=True)
    # uvicorn's loggers go through the service's handler (app/observe.py), which writes the access log itself
    logs: dict[str, Any] = {"log_level": settings.log_level, "log_config": None, "access_log": False}
    if args.workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, timeout_graceful_shutdown=10, **logs)
    else:  # uvicorn's supervisor: each worker imports the factory and loads model and index in its own lifespan
        uvicorn.run(
            "app.main:app",
            factory=True,
            workers=args.workers,
            host=host,
            port=port,
            **logs,
            timeout_graceful_shutdown=10,
        )
    return 0
