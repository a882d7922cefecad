"""The duty-room board: one page and its script and style, from the package (no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)
BOARD = resources.files("hazardwatch.board")
ASSETS = {"board.js": "text/javascript; charset=utf-8", "board.css": "text/css; charset=utf-8"}


@router.get("/", response_class=HTMLResponse)
async def board() -> HTMLResponse:
    return HTMLResponse(BOARD.joinpath("index.html").read_text(encoding="utf-8"),
                        headers={"Cache-Control": "no-cache"})


@router.get("/board/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, "no such file")
    return Response(BOARD.joinpath(name).read_bytes(), media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
