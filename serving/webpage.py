"""The page a person can use: ``GET /`` (plain HTML + JS + CSS shipped in ``serving/static``) and
``GET /v1/model`` (what the page needs to know about the served model).

The page and its two static files are public (no secret in them); every call the page makes
(``/v1/model``, ``/v1/classify``) goes through the same API key rules as any client, with the key
typed into the page and kept in the tab's ``sessionStorage``. No build step, no CDN: the files
are served as they are in the package, under a strict Content-Security-Policy.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from fdkd.serving.errors import RETRY_AFTER
from fdkd.serving.openapi import errors, ok

# URL path -> (file in serving/static, media type); the whole set of files the page is made of
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/ui/page.css": ("page.css", "text/css; charset=utf-8"),
}
PUBLIC_PATHS = frozenset(STATIC)  # served without an API key (middleware.EXEMPT is built from it)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' blob: data:; media-src 'self' blob:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# (401 where the server has a key: fdkd.serving.openapi.document adds it to every route the key guards)
MODEL_INFO_RESPONSES = ok({"type": "object", "required": ["name", "version", "artifact", "modality", "class_names",
                                                         "preprocessing"]}, "the served model") | errors(503)


@lru_cache(maxsize=len(STATIC))
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()  # fdkd.serving, installed or not


def _file_route(name: str, media_type: str):
    async def route() -> Response:
        return Response(_read(name), media_type=media_type, headers=HEADERS)

    return route


def add_page_routes(app: FastAPI, state) -> None:
    """``GET /``, its static files and ``GET /v1/model`` on ``app``; ``state`` is the app's ``State``."""
    for path, (name, media_type) in STATIC.items():
        app.add_api_route(path, _file_route(name, media_type), methods=["GET"], response_class=Response,
                          summary=f"The page: {name}", responses={200: {"description": name, "content": {
                              media_type.split(";")[0]: {"schema": {"type": "string"}}}}})

    @app.get("/v1/model", responses=MODEL_INFO_RESPONSES)
    async def model_info():
        """The served model: name, version, artifact, modality, class names and preprocessing constants, and
        whether the server runs with ``--allow-unvalidated`` (``validated`` false: this artifact did not pass
        validation in the mode it runs in; ``warnings`` say why)."""
        m = state.model
        reason = state.unready_reason()  # what readiness says: loading, refused, draining, batcher down
        if reason or m is None:
            return JSONResponse({"error": f"model not ready: {reason or 'loading'}"}, 503, headers=RETRY_AFTER)
        return {"name": m.name, "version": m.version, "artifact": m.artifact, "platform": m.platform,
                "modality": m.modality, "class_names": m.class_names, "preprocessing": m.frontend.to_dict(),
                "allow_unvalidated": bool(state.settings.allow_unvalidated), "validated": m.validated,
                "warnings": list(m.warnings)}
