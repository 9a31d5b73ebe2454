"""``/openapi.json`` and the ``/docs`` page (Swagger UI, vendored: no CDN).

The document is built once from :data:`operations.OPERATIONS` (one entry per route) and
:data:`schemas.SCHEMAS`. Swagger UI 5.35.0 (Apache-2.0, from the npm package
``swagger-ui-dist``; licence and notice beside it in ``assets/``) is served from the
package, and the page's Content-Security-Policy allows this origin only.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata, resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagerelay.api.apidoc.operations import OPERATIONS
from imagerelay.api.apidoc.schemas import SCHEMAS
from imagerelay.errors import NotFound

SWAGGER_UI_VERSION = "5.35.0"
# The files the page needs, and nothing else: name -> media type.
ASSETS = {
    f"swagger-ui-bundle-{SWAGGER_UI_VERSION}.js": "application/javascript",
    f"swagger-ui-{SWAGGER_UI_VERSION}.css": "text/css",
    "docs-init.js": "application/javascript",
    f"swagger-ui-{SWAGGER_UI_VERSION}.LICENSE.txt": "text/plain",
    f"swagger-ui-{SWAGGER_UI_VERSION}.NOTICE.txt": "text/plain",
    f"swagger-ui-bundle-{SWAGGER_UI_VERSION}.js.LICENSE.txt": "text/plain",
}
# Swagger UI sets inline styles and draws icons as data: URIs; nothing leaves this origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_CONVERTOR = re.compile(r"\{([^}:]+):[^}]+\}")


def openapi_path(starlette_path: str) -> str:
    """``/v1/models/{model:path}`` -> ``/v1/models/{model}``."""
    return _CONVERTOR.sub(r"{\1}", starlette_path)


_SECURITY = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (sk-...): its group picks the routes."},
    "admin": {"type": "http", "scheme": "bearer", "description": "IMAGERELAY_ADMIN_TOKEN, or an admin user's API key."},
    "metrics": {
        "type": "http",
        "scheme": "bearer",
        "description": "IMAGERELAY_METRICS_TOKEN (else the admin credential).",
    },
}


def build_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in OPERATIONS.items():
        paths.setdefault(openapi_path(path), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagerelay",
            "version": metadata.version("imagerelay"),
            "description": "OpenAI-compatible image generation gateway: the public API (/v1), "
            "the account API and the admin API (/admin).",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in ("images", "jobs", "models", "account", "admin", "operations")],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": _SECURITY},
    }


@cache
def _document_bytes() -> bytes:
    return orjson.dumps(build_document())


@cache
def _asset(name: str) -> bytes:
    return resources.files("imagerelay.api.apidoc").joinpath("assets", name).read_bytes()


async def openapi_json(request: Request) -> Response:
    return Response(_document_bytes(), media_type="application/json")


_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>imagerelay API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui-{SWAGGER_UI_VERSION}.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle-{SWAGGER_UI_VERSION}.js"></script>
<script src="/docs/assets/docs-init.js"></script>
</body>
</html>
""".encode()


async def docs_page(request: Request) -> Response:
    return Response(_PAGE, media_type="text/html", headers={"content-security-policy": DOCS_CSP})


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = ASSETS.get(name)
    if media is None:
        raise NotFound("No such file.")
    return Response(
        _asset(name),
        media_type=media,
        headers={
            "cache-control": "public, max-age=86400",
            "content-security-policy": DOCS_CSP,
            "x-content-type-options": "nosniff",
        },
    )


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/docs/assets/{name}", docs_asset, methods=["GET"]),
]
