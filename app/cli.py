"""``alexnet serve``: start uvicorn with the service settings."""

from __future__ import annotations

import argparse
import logging

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alexnet serve", description="Start the HTTP service (settings: ALEXNET_* variables).")
    parser.add_argument("--host", help="bind address (default ALEXNET_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default ALEXNET_PORT or 8000)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv[1:])

    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"serving on http://{host}:{port}  (weights {settings.weights}, index {settings.index_dir})", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0
