"""``alexnet serve``: start uvicorn with the service settings, in one process or several (``--workers``)."""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

__all__ = ["ERRORS", "main"]

ERRORS = ()  # settings errors are ValueErrors: printed by the dispatcher (model/console.py)


def main(argv: list[str], settings: Any = None) -> int:
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
    from app.settings import Settings, read_settings

    base: Settings = settings if settings is not None else read_settings()
    # the flags override the variables; the result is validated as the variables are
    flags = {"weights": args.weights, "index_dir": args.index, "log_level": args.log_level, "host": args.host, "port": args.port}
    changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.workers > 1 and not base.torch_threads:
        changes["torch_threads"] = max(1, (os.cpu_count() or 1) // args.workers)  # the workers' forward passes share the cores
    settings = Settings.model_validate({**base.model_dump(), **changes}) if changes else base
    store = "PostgreSQL (ALEXNET_STORE_URL)" if settings.store_url else f"index {settings.index_dir}"
    print(f"serving on http://{settings.host}:{settings.port}  (weights {settings.weights}, {store}, {args.workers} worker(s))", flush=True)
    # uvicorn's loggers go through the service's handler (app/observe.py), which writes the access log itself
    logs: dict[str, Any] = {"log_level": settings.log_level, "log_config": None, "access_log": False}
    config = uvicorn.Config(
        # one worker: the app itself; several: a factory that uvicorn's supervisor hands (pickled, with these settings)
        # to each worker process, which builds its own app and loads model and index in its own lifespan
        create_app(settings) if args.workers == 1 else functools.partial(create_app, settings),
        factory=args.workers > 1,
        workers=args.workers,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=10,
        **logs,
    )
    server = uvicorn.Server(config)
    try:
        if args.workers == 1:
            server.run()
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    # as uvicorn.run: a service that never started (its lifespan failed) exits with 3
    return 3 if args.workers == 1 and not server.started else 0
