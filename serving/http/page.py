"""`GET /`: one static page to try a served model in a browser (page/index.html).

Plain HTML and JavaScript, no build step and nothing fetched from elsewhere: it
lists the vision models (`GET /v2/vision/models`), sends a dropped picture to
classify or segment, and shows the top labels or the mask over the picture.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).with_name("page") / "index.html"


async def index(request: web.Request) -> web.Response:
    return web.Response(
        body=PAGE.read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
