from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from app.figures import kernels_png
from app.state import ModelDep

router = APIRouter(tags=["web"])

# The page's script and styles are inline; nothing else loads from anywhere but this server.
CSP = "; ".join(
    ["default-src 'self'", "img-src 'self' blob: data:", "style-src 'self' 'unsafe-inline'", "script-src 'self' 'unsafe-inline'"]
)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The web page: upload a picture, see its top-5 and the similar stored images."""
    html = resources.files("app").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP})


_figures: dict[str, bytes] = {}  # weights hash -> Figure 3 of those weights (drawn once)


@router.get("/model/kernels.png", response_class=Response, responses={200: {"content": {"image/png": {}}}}, tags=["model"])
async def kernels(model: ModelDep) -> Response:
    """The served weights' 96 first-layer kernels as in the paper's Figure 3: each tower's 48 side by side."""
    key = model.predictor.weights_hash
    if key not in _figures:
        towers = [tower.conv1.conv.weight for tower in model.predictor.model.tower_pair]  # type: ignore[union-attr]
        _figures[key] = await run_in_threadpool(kernels_png, towers)
    headers = {"Cache-Control": "public, max-age=86400", "ETag": f'"{key[:16]}"'}
    return Response(_figures[key], media_type="image/png", headers=headers)
