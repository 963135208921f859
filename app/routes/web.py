from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

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
