"""The models a key may call (``/v1/models``, the SDK's ``models.list``/``retrieve``) and
the signed image files that ``response_format=url`` answers point at."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from imagerelay.api.deps import authenticate, services_of
from imagerelay.api.responses import json_response
from imagerelay.blobs import BlobMissing
from imagerelay.domain.capabilities import model_object
from imagerelay.errors import NotFound
from imagerelay.imagestore import media_type


async def list_models(request: Request) -> Response:
    token = await authenticate(request)
    services = services_of(request)
    relay = services.relay
    data = [
        model_object(relay.offered_route(token.group, model))
        for model in relay.models_for(token.group)
        if token.allowed_models is None or model in token.allowed_models
    ]  # what this key may call
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """The SDK's ``models.retrieve``; the ``imagerelay`` field is what the route accepts."""
    token = await authenticate(request)
    route = services_of(request).relay.offered_route(token.group, request.path_params["model"])
    return json_response(model_object(route))


async def image_file(request: Request) -> Response:
    name = request.path_params["name"]
    store = services_of(request).store
    gone = NotFound("This image link is invalid or has expired; request the image again.")
    if store.resolve(name, request.query_params.get("expires", ""), request.query_params.get("sig", "")) is None:
        raise gone
    try:
        blob = await store.open(name)  # a store failure is a 503 (StoreUnavailable)
    except BlobMissing:
        raise gone from None
    headers = {"cache-control": "private, max-age=3600"}
    if blob.path is not None:  # a local file: sendfile, ranges and validators
        await blob.aclose()
        return FileResponse(blob.path, media_type=media_type(name), headers=headers)
    if blob.size is not None:
        headers["content-length"] = str(blob.size)
    return StreamingResponse(blob.chunks, media_type=media_type(name), headers=headers)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/files/images/{name}", image_file, methods=["GET"]),
]
