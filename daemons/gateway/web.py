"""The gateway's web page: `GET /` (daemons/gateway/static/index.html, app.js, app.css; no build step, no
CDN) and `GET /v1/info`, what the page needs to know about the model that the OpenAI routes do not say.

    GET /                 the page (try the voice: stream + play with Web Audio, downloads, cloning)
    GET /static/{file}    its script and style sheet
    GET /v1/info          {"object":"info","random_weights": true|false|null, "languages": [...]|null,
                           "formats": [...], "sample_rate": 24000, "samples_per_frame": 1920,
                           "voice_aliases": [...], "auth_required": bool}

`random_weights` comes from the model's manifest when the model directory is on this machine
(`manifest.json` -> `source.random_weights`, set by scripts/convert.py for checkpoints that
scripts/make_checkpoint.py made), else from the talker's last `done` (null before the first request). The
page shows a "noise" banner when it is true, and also when a speech response carries
`X-Qwen3-TTS-Random-Weights: true`. No key is needed for any of these routes; the page sends the key the
user typed (kept in localStorage) as `Authorization: Bearer` on the API calls.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .audio import FORMATS

if TYPE_CHECKING:
    from .http import Gateway

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# The page is served from the board itself: it may load nothing from anywhere else.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' blob:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


def languages(model_dir) -> list[str] | None:
    try:
        man = json.loads((Path(model_dir) / "manifest.json").read_text())
        return ["auto", *sorted(man["languages"])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # the model is on another machine: the page offers its own list


def routes(gw: "Gateway") -> list[Route]:
    langs = languages(gw.cfg.model_dir)

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in FILES:  # a fixed list: nothing else of the package can be read through here
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)

    async def info(request: Request):
        return JSONResponse({"object": "info", "random_weights": gw.random_weights, "languages": langs,
                             "formats": list(FORMATS), "sample_rate": 24000, "samples_per_frame": 1920,
                             "voice_aliases": sorted(gw.g.voice_aliases),
                             "auth_required": bool(gw.g.api_keys)})

    return [Route("/", index, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/v1/info", info, methods=["GET"])]
