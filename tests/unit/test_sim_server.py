"""The upstream simulator speaks the real OpenAI / Azure OpenAI wire protocols.

Proved against a real uvicorn socket with the official ``openai`` SDK (the final
judge of what a client sends and accepts) and with raw httpx for the rules and
faults the SDK hides (exact status codes, headers, broken connections).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AzureOpenAI, OpenAI
from PIL import Image

from imagerelay_sim.server import (
    create_upstream_app,
    parse_fault,
    sim_state,
)
from tests.support.servers import run_asgi

KEY = "sk-sim"
API_VERSION = "2025-04-01-preview"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _png(width: int = 400, height: int = 300, color: tuple[int, ...] = (200, 40, 40), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    return img


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def openai_app() -> Any:
    return create_upstream_app("openai", api_keys=(KEY, "sk-other"))


@pytest.fixture(scope="module")
def azure_app() -> Any:
    return create_upstream_app(
        "azure", api_keys=(KEY,), deployments={"gpt-image-2": "gpt-image-2", "img-legacy": "gpt-image-1"}
    )


@pytest.fixture(scope="module")
def openai_base(openai_app: Any) -> Iterator[str]:
    with run_asgi(openai_app) as base:
        yield base


@pytest.fixture(scope="module")
def azure_base(azure_app: Any) -> Iterator[str]:
    with run_asgi(azure_app) as base:
        yield base


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts without faults, recorded requests or cache."""
    apps = [request.getfixturevalue(name) for name in ("openai_app", "azure_app") if name in request.fixturenames]
    for app in apps:
        state = sim_state(app)
        state.clear_faults()
        state.clear_requests()
        state.cache = state.incompressible = False
        state.latency_s = 0.0
    yield


@pytest.fixture
def client(openai_base: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=openai_base + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def azure(azure_base: str) -> Iterator[AzureOpenAI]:
    with AzureOpenAI(
        azure_endpoint=azure_base, api_key=KEY, api_version=API_VERSION, azure_deployment="gpt-image-2", max_retries=0
    ) as c:
        yield c


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def _faults(http: httpx.Client, base: str, *faults: dict[str, Any]) -> None:
    r = http.post(base + "/_sim/faults", json=list(faults))
    assert r.status_code == 200, r.text


def _gen(http: httpx.Client, base: str, **body: Any) -> httpx.Response:
    return http.post(base + "/v1/images/generations", json={"prompt": "a small red boat", **body}, headers=AUTH)


# =========================================================================== openai: SDK


def test_sdk_generate_returns_real_images_and_official_fields(client: OpenAI, openai_app: Any) -> None:
    raw = client.images.with_raw_response.generate(
        model="gpt-image-2", prompt="a lighthouse", size="1024x1536", quality="low", output_format="jpeg", n=2
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0
    resp = raw.parse()
    assert resp.created > 0 and resp.data is not None and len(resp.data) == 2
    images = [_decode(d.b64_json or "") for d in resp.data]
    assert all((img.format, img.size) == ("JPEG", (1024, 1536)) for img in images)
    assert resp.data[0].b64_json != resp.data[1].b64_json, "each of n images differs"
    assert (resp.size, resp.quality, resp.output_format, resp.background) == ("1024x1536", "low", "jpeg", "opaque")
    assert resp.usage is not None and resp.usage.output_tokens > 0
    assert resp.usage.input_tokens_details.text_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    logged = sim_state(openai_app).recorded()[-1]
    assert logged["path"] == "/v1/images/generations" and logged["json"]["model"] == "gpt-image-2"
    assert logged["headers"]["authorization"] == f"Bearer {KEY}"


def test_sdk_generate_transparent_webp_and_auto_defaults(client: OpenAI) -> None:
    resp = client.images.generate(model="gpt-image-2", prompt="a logo", background="transparent", output_format="webp")
    assert resp.data is not None
    img = _decode(resp.data[0].b64_json or "")
    assert (img.format, img.size, img.mode) == ("WEBP", (1024, 1024), "RGBA")
    assert (resp.size, resp.quality, resp.background) == ("1024x1024", "medium", "transparent")


def test_sdk_edit_single_file(client: OpenAI, openai_app: Any) -> None:
    src = _png(800, 400, (20, 20, 220))
    resp = client.images.edit(model="gpt-image-2", image=("src.png", src, "image/png"), prompt="add a moon")
    assert resp.data is not None
    img = _decode(resp.data[0].b64_json or "")
    assert img.size == (1536, 1024), "auto picks the landscape size for a landscape source"
    r, _g, b = img.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    assert b > r, "the result is derived from the (blue) source"
    assert resp.usage is not None and resp.usage.input_tokens_details.image_tokens > 0
    parts = sim_state(openai_app).recorded()[-1]["parts"]
    image_part = next(p for p in parts if p["filename"])
    assert image_part["name"] == "image" and image_part["content_type"] == "image/png"
    assert image_part["sha256"] == hashlib.sha256(src).hexdigest() and image_part["size"] == len(src)
    assert {p["name"]: p.get("value") for p in parts if not p["filename"]} == {
        "prompt": "add a moon",
        "model": "gpt-image-2",
    }


def test_sdk_edit_several_files_and_mask(client: OpenAI, openai_app: Any, tmp_path: Path) -> None:
    first = _png(512, 512, (200, 30, 30))
    path = tmp_path / "second.png"
    path.write_bytes(_png(300, 300, (30, 200, 30)))
    mask = _png(512, 512, (0, 0, 0, 0), mode="RGBA")
    resp = client.images.edit(
        model="gpt-image-2",
        image=[("first.png", first, "image/png"), path, ("third.jpg", _jpeg(), "image/jpeg")],
        mask=("mask.png", mask, "image/png"),
        prompt="combine them",
        size="1024x1024",
    )
    assert resp.data is not None and _decode(resp.data[0].b64_json or "").size == (1024, 1024)
    parts = [p for p in sim_state(openai_app).recorded()[-1]["parts"] if p["filename"]]
    assert [(p["name"], p["content_type"]) for p in parts] == [
        ("image[]", "image/png"),
        ("image[]", "image/png"),
        ("image[]", "image/jpeg"),
        ("mask", "image/png"),
    ]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def test_sdk_streaming_generation_gets_every_partial_and_completed(client: OpenAI) -> None:
    stream = client.images.generate(
        model="gpt-image-2", prompt="a forest", size="1536x1024", stream=True, partial_images=3
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    assert [getattr(e, "partial_image_index", None) for e in events[:3]] == [0, 1, 2]
    for e in events:
        img = _decode(e.b64_json)
        assert (img.format, img.size) == ("PNG", (1536, 1024))
    assert len({e.b64_json for e in events}) == 4, "previews differ from each other and from the final image"
    done = events[-1]
    assert done.usage is not None and done.usage.output_tokens >= 300, "each partial adds 100 output tokens"


def test_sdk_streaming_edit_uses_image_edit_events(client: OpenAI) -> None:
    stream = client.images.edit(
        model="gpt-image-2", image=("a.png", _png(), "image/png"), prompt="snow", stream=True, partial_images=1
    )
    assert [e.type for e in stream] == ["image_edit.partial_image", "image_edit.completed"]


def test_sdk_streaming_without_partials_sends_only_completed(client: OpenAI) -> None:
    events = list(client.images.generate(model="gpt-image-2", prompt="x", stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]


def test_sdk_errors_map_to_sdk_exceptions(openai_base: str, client: OpenAI) -> None:
    with (
        OpenAI(base_url=openai_base + "/v1", api_key="sk-wrong-key-0000", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        bad.images.generate(model="gpt-image-2", prompt="x")
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as rf:
        client.images.generate(model="gpt-image-2", prompt="x", response_format="b64_json")
    assert (rf.value.code, rf.value.param) == ("unknown_parameter", "response_format")


def test_sdk_retries_a_429_honouring_retry_after(openai_base: str, openai_app: Any, http: httpx.Client) -> None:
    _faults(http, openai_base, {"type": "429", "count": 1, "retry_after_ms": 50})
    with OpenAI(base_url=openai_base + "/v1", api_key=KEY, max_retries=2) as c:
        resp = c.images.generate(model="gpt-image-2", prompt="x")
    assert resp.data
    assert len(sim_state(openai_app).recorded()) == 2


# =========================================================================== openai: wire rules (httpx)


def test_missing_and_wrong_key_are_401_official_shape(http: httpx.Client, openai_base: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = http.post(openai_base + "/v1/images/generations", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"


def test_octet_stream_part_is_rejected_like_the_real_api(http: httpx.Client, openai_base: str) -> None:
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        data={"prompt": "x", "model": "gpt-image-2"},
        files=[("image[]", ("a.png", _png(), "image/png")), ("image[]", ("b.png", _png(), "application/octet-stream"))],
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_file_mimetype"
    assert r.json()["error"]["param"] == "image[1]"
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        data={"prompt": "x"},
        files={"image": ("a.png", _png(), "application/octet-stream")},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "image[0]")


def test_multipart_image_field_variants(http: httpx.Client, openai_base: str) -> None:
    for name in ("image", "image[]", "image[0]"):
        r = http.post(
            openai_base + "/v1/images/edits",
            headers=AUTH,
            data={"prompt": "x", "n": "2", "size": "1024x1024"},
            files={name: ("a.png", _png(), "image/png")},
        )
        assert r.status_code == 200, (name, r.text)
        assert len(r.json()["data"]) == 2


def test_json_edit_form_with_data_urls(http: httpx.Client, openai_base: str, openai_app: Any) -> None:
    url = "data:image/png;base64," + base64.b64encode(_png(600, 600, (10, 180, 10))).decode()
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        json={
            "model": "gpt-image-2",
            "prompt": "x",
            "images": [{"image_url": url}, {"image_url": url}],
            "output_format": "jpeg",
            "output_compression": 50,
        },
    )
    assert r.status_code == 200, r.text
    img = _decode(r.json()["data"][0]["b64_json"])
    assert (img.format, img.size) == ("JPEG", (1024, 1024))
    logged = sim_state(openai_app).recorded()[-1]["json"]["images"][0]["image_url"]
    assert logged.startswith("<") and "sha256=" in logged, "big data URLs are logged as a digest"
    bad = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        json={"prompt": "x", "images": [{"image_url": "data:application/pdf;base64,AAAA"}]},
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "unsupported_file_mimetype")
    missing = http.post(openai_base + "/v1/images/edits", headers=AUTH, json={"prompt": "x"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "missing_required_parameter")


@pytest.mark.parametrize(
    ("body", "param", "code", "fragment"),
    [
        ({"size": "1792x936"}, "size", "invalid_value", "divisible by 16"),
        ({"size": "3856x2176"}, "size", "invalid_value", "3840"),
        ({"size": "3840x1024"}, "size", "invalid_value", "3:1"),
        ({"size": "512x512"}, "size", "invalid_value", "655360"),
        (
            {"model": "gpt-image-1", "size": "1254x836"},
            "size",
            "invalid_value",
            "Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'",
        ),
        ({"model": "nope"}, "model", "invalid_value", "The model 'nope' does not exist."),
        ({"n": 11}, "n", "integer_above_max_value", "<= 10"),
        ({"n": "2"}, "n", "invalid_type", "expected an integer"),
        ({"quality": "hd"}, "quality", "invalid_value", "'low', 'medium', 'high', and 'auto'"),
        ({"background": "transparent", "output_format": "jpeg"}, "background", "invalid_value", "jpeg"),
        ({"output_compression": 50}, "output_compression", "invalid_value", "PNG"),
        ({"partial_images": 4}, "partial_images", "integer_above_max_value", "<= 3"),
        ({"style": "vivid"}, "style", "unknown_parameter", "Unknown parameter: 'style'."),
        ({"prompt": ""}, "prompt", "missing_required_parameter", "'prompt'"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length", "32000"),
        ({"stream": "yes"}, "stream", "invalid_type", "boolean"),
    ],
)
def test_generation_parameter_validation(
    http: httpx.Client, openai_base: str, body: dict[str, Any], param: str, code: str, fragment: str
) -> None:
    r = _gen(http, openai_base, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code)
    assert fragment in err["message"]


def test_input_fidelity_is_rejected_for_gpt_image_2_only(http: httpx.Client, openai_base: str) -> None:
    files = {"image": ("a.png", _png(), "image/png")}
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        files=files,
        data={"prompt": "x", "model": "gpt-image-2", "input_fidelity": "high"},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "input_fidelity")
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        files=files,
        data={"prompt": "x", "model": "gpt-image-1", "input_fidelity": "high"},
    )
    assert r.status_code == 200, r.text


def test_bad_json_and_mask_mismatch(http: httpx.Client, openai_base: str) -> None:
    r = http.post(
        openai_base + "/v1/images/generations", headers={**AUTH, "content-type": "application/json"}, content=b"{nope"
    )
    assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        data={"prompt": "x"},
        files=[("image", ("a.png", _png(400, 300), "image/png")), ("mask", ("m.png", _png(10, 10), "image/png"))],
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "mask")
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        data={"prompt": "x"},
        files={"image": ("a.png", b"not an image", "image/png")},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_image_file")


def test_models_and_unknown_urls(http: httpx.Client, openai_base: str, openai_app: Any) -> None:
    models = http.get(openai_base + "/v1/models", headers=AUTH).json()
    assert "gpt-image-2" in [m["id"] for m in models["data"]]
    r = http.post(openai_base + "/v1/images/variations", headers=AUTH, json={"a": 1})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    logged = sim_state(openai_app).recorded()
    assert [(e["method"], e["path"]) for e in logged] == [("GET", "/v1/models"), ("POST", "/v1/images/variations")]
    assert logged[-1]["json"] == {"a": 1}, "wrong URLs are logged too, to debug connectors"
    r = http.get(openai_base + "/v1/images/generations", headers=AUTH)
    assert r.status_code == 405 and "Invalid method" in r.json()["error"]["message"]


# =========================================================================== azure


def test_azure_sdk_generate_with_deployment(azure: AzureOpenAI, azure_app: Any) -> None:
    raw = azure.images.with_raw_response.generate(prompt="a harbour at night", size="1536x1024")
    assert raw.headers.get("apim-request-id")
    resp = raw.parse()
    assert resp.data is not None and _decode(resp.data[0].b64_json or "").size == (1536, 1024)
    assert resp.quality == "high", "Azure renders omitted quality as high"
    item = resp.data[0].model_dump()
    assert item.get("content_filter_results", {}).get("violence", {}).get("filtered") is False
    logged = sim_state(azure_app).recorded()[-1]
    assert logged["path"] == "/openai/deployments/gpt-image-2/images/generations"
    assert logged["query"] == {"api-version": API_VERSION}
    assert logged["headers"]["api-key"] == KEY and "authorization" not in logged["headers"]
    assert "model" not in logged["json"], "the SDK sends no model when none is given"


def test_azure_sdk_edit_and_stream(azure: AzureOpenAI, azure_app: Any) -> None:
    resp = azure.images.edit(image=[("a.png", _png(), "image/png"), ("b.png", _png(), "image/png")], prompt="x")
    assert resp.data is not None and _decode(resp.data[0].b64_json or "").size == (1536, 1024)
    assert sim_state(azure_app).recorded()[-1]["path"] == "/openai/deployments/gpt-image-2/images/edits"
    events = list(azure.images.generate(prompt="x", stream=True, partial_images=2, size="1024x1024"))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]


def test_azure_rejects_a_body_model_on_deployment_urls(azure: AzureOpenAI, http: httpx.Client, azure_base: str) -> None:
    """gpt-image-2 deployments answer a body ``model`` with 400 (upstream-protocols.md).

    The SDK puts ``model=`` in the body even with ``azure_deployment`` set, so callers
    (and the gateway's azure connector) must leave it out, as against real Azure.
    """
    url = azure_base + f"/openai/deployments/gpt-image-2/images/generations?api-version={API_VERSION}"
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x", "model": "gpt-image-2"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "The model 'gpt-image-2' does not exist.",
        "type": "image_generation_user_error",
        "param": "model",
        "code": "invalid_value",
    }
    with pytest.raises(openai.BadRequestError):
        azure.images.generate(model="gpt-image-2", prompt="x")
    r = http.post(
        url.replace("generations", "edits"),
        headers={"api-key": KEY},
        data={"prompt": "x", "model": "gpt-image-2"},
        files={"image": ("a.png", _png(), "image/png")},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "model")


def test_azure_url_rules(http: httpx.Client, azure_base: str) -> None:
    dep = azure_base + "/openai/deployments/{}/images/generations"
    ok = {"prompt": "x", "size": "1024x1024"}
    r = http.post(dep.format("gpt-image-2"), headers={"api-key": KEY}, json=ok)
    assert (r.status_code, r.json()["error"]) == (404, {"code": "404", "message": "Resource not found"})
    r = http.post(dep.format("gpt-image-2") + "?api-version=2024-02-01", headers={"api-key": KEY}, json=ok)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "BadRequest")
    r = http.post(dep.format("missing") + f"?api-version={API_VERSION}", headers={"api-key": KEY}, json=ok)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "DeploymentNotFound")
    r = http.post(dep.format("gpt-image-2") + f"?api-version={API_VERSION}", headers={"api-key": "wrong"}, json=ok)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "401")
    assert "Access denied" in r.json()["error"]["message"]
    r = http.post(
        dep.format("gpt-image-2") + f"?api-version={API_VERSION}", headers={"Authorization": f"Bearer {KEY}"}, json=ok
    )
    assert r.status_code == 200, "Entra-style bearer auth is accepted too"
    r = http.post(
        dep.format("gpt-image-2") + f"?api-version={API_VERSION}",
        headers={"api-key": KEY},
        json={**ok, "output_format": "webp"},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "output_format")
    r = http.post(
        dep.format("img-legacy") + f"?api-version={API_VERSION}",
        headers={"api-key": KEY},
        json={"prompt": "x", "size": "1280x720"},
    )
    assert (r.status_code, r.json()["error"]["param"]) == (400, "size"), "size rules follow the deployment's model"
    r = http.post(azure_base + "/openai/deployments/gpt-image-2/chat/completions", headers={"api-key": KEY}, json={})
    assert r.status_code == 404


def test_azure_v1_form(http: httpx.Client, azure_base: str, azure_app: Any) -> None:
    url = azure_base + "/openai/v1/images/generations"
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x", "model": "gpt-image-2", "size": "1024x1024"})
    assert r.status_code == 200, r.text
    r = http.post(
        url + "?api-version=preview",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "x", "model": "gpt-image-2"},
    )
    assert r.status_code == 200, r.text
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x", "model": "other"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "DeploymentNotFound")
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "model")
    r = http.post(
        url + "?api-version=2025-04-01-preview", headers={"api-key": KEY}, json={"prompt": "x", "model": "gpt-image-2"}
    )
    assert r.status_code == 400


def test_azure_sdk_v1_form_with_openai_client(azure_base: str) -> None:
    with OpenAI(base_url=azure_base + "/openai/v1", api_key=KEY, max_retries=0, default_headers={"api-key": KEY}) as c:
        resp = c.images.generate(model="gpt-image-2", prompt="x", size="1024x1024")
    assert resp.data and resp.quality == "high"


def test_azure_fault_shapes(http: httpx.Client, azure_base: str) -> None:
    _faults(
        http,
        azure_base,
        {"type": "content_filter", "count": 1},
        {"type": "429", "count": 1, "retry_after": 3},
        {"type": "503", "count": 1},
    )
    url = azure_base + f"/openai/deployments/gpt-image-2/images/generations?api-version={API_VERSION}"
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "contentFilter" and err["inner_error"]["code"] == "ResponsibleAIPolicyViolation"
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x"})
    assert (r.status_code, r.headers["retry-after"], r.json()["error"]["code"]) == (429, "3", "429")
    r = http.post(url, headers={"api-key": KEY}, json={"prompt": "x"})
    assert (r.status_code, r.json()["error"]["code"]) == (503, "ServiceUnavailable")
    assert http.post(url, headers={"api-key": KEY}, json={"prompt": "x"}).status_code == 200


# =========================================================================== faults


@pytest.mark.timing
def test_latency_fault_fixed_and_jitter(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "latency", "latency_s": 0.4, "count": 1})
    start = time.monotonic()
    assert _gen(http, openai_base, size="1024x1024").status_code == 200
    assert time.monotonic() - start >= 0.4
    start = time.monotonic()
    _gen(http, openai_base, size="1024x1024")
    assert time.monotonic() - start < 0.4, "count=1: only the next request was slowed"
    _faults(http, openai_base, {"type": "latency", "latency_s": 0.1, "latency_jitter_s": 0.3, "seed": 3})
    for _ in range(2):
        start = time.monotonic()
        _gen(http, openai_base)
        assert 0.1 <= time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("fault", "status", "etype", "code"),
    [
        ({"type": "500"}, 500, "server_error", None),
        ({"type": "server_error"}, 500, "server_error", None),
        ({"type": "503"}, 503, "server_error", "server_is_overloaded"),
        ({"type": "401"}, 401, "invalid_request_error", "invalid_api_key"),
        ({"type": "moderation"}, 400, "image_generation_user_error", "moderation_blocked"),
        ({"type": "status", "status": 502}, 502, "server_error", None),
    ],
)
def test_error_faults(
    http: httpx.Client, openai_base: str, fault: dict[str, Any], status: int, etype: str, code: str | None
) -> None:
    _faults(http, openai_base, {**fault, "count": 1})
    r = _gen(http, openai_base)
    assert r.status_code == status
    err = r.json()["error"]
    assert (err["type"], err["code"]) == (etype, code) and set(err) == {"message", "type", "param", "code"}
    assert r.headers["x-request-id"]
    assert _gen(http, openai_base).status_code == 200


def test_rate_limit_fault_sends_retry_after(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "rate_limit", "count": 1, "retry_after": 2, "retry_after_ms": 1500})
    r = _gen(http, openai_base)
    assert r.status_code == 429
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "1500")
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_custom_status_body_and_message(http: httpx.Client, openai_base: str) -> None:
    _faults(
        http,
        openai_base,
        {"type": "status", "status": 504, "body": {"oops": 1}, "count": 1},
        {"type": "500", "message": "custom", "headers": {"x-should-retry": "false"}, "count": 1},
    )
    r = _gen(http, openai_base)
    assert (r.status_code, r.json()) == (504, {"oops": 1})
    r = _gen(http, openai_base)
    assert (r.json()["error"]["message"], r.headers["x-should-retry"]) == ("custom", "false")


def test_connection_reset(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "reset", "count": 1})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        _gen(http, openai_base)
    assert _gen(http, openai_base).status_code == 200, "the server keeps serving"


def test_connection_reset_with_h11_server(openai_app: Any) -> None:
    with run_asgi(openai_app, http="h11") as base, httpx.Client() as c:
        c.post(base + "/_sim/faults", json={"type": "reset", "count": 1})
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            c.post(base + "/v1/images/generations", json={"prompt": "x"}, headers=AUTH)
        c.post(base + "/_sim/faults", json={"type": "truncate", "count": 1})
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(base + "/v1/images/generations", json={"prompt": "x"}, headers=AUTH)


def test_truncated_body(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "truncate", "count": 1})
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete|complete message body"):
        _gen(http, openai_base)


def test_invalid_json(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "invalid_json", "count": 1})
    r = _gen(http, openai_base)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()


def test_b64_faults(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "data_url_prefix", "count": 1})
    b64 = _gen(http, openai_base, output_format="jpeg").json()["data"][0]["b64_json"]
    assert b64.startswith("data:image/jpeg;base64,")
    assert _decode(b64.split(",", 1)[1]).format == "JPEG"

    for prompt in ("one", "two", "three"):  # whatever the length, padding must be missing
        _faults(http, openai_base, {"type": "no_padding", "count": 1})
        b64 = _gen(http, openai_base, prompt=prompt).json()["data"][0]["b64_json"]
        assert not b64.endswith("=") and len(b64) % 4 != 0
        assert _decode(b64 + "=" * (-len(b64) % 4)).format == "PNG"

    _faults(http, openai_base, {"type": "bad_base64", "count": 1})
    b64 = _gen(http, openai_base).json()["data"][0]["b64_json"]
    with pytest.raises(binascii.Error):
        base64.b64decode(b64, validate=True)
    with pytest.raises((binascii.Error, OSError, ValueError)):
        _decode(b64)


def test_stream_cut_and_stream_error(client: OpenAI, http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "stream_cut", "count": 1})
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.images.generate(model="gpt-image-2", prompt="x", stream=True, partial_images=2):
            got.append(event.type)
    assert got == ["image_generation.partial_image"]

    _faults(http, openai_base, {"type": "stream_cut", "count": 1})
    body = {"prompt": "x", "stream": True, "partial_images": 2}
    with http.stream("POST", openai_base + "/v1/images/generations", json=body, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in r.iter_bytes():
                pass

    _faults(http, openai_base, {"type": "stream_cut", "count": 1})  # single-event stream: cut inside it
    with pytest.raises(openai.APIConnectionError):
        list(client.images.generate(model="gpt-image-2", prompt="x", stream=True))

    _faults(http, openai_base, {"type": "stream_error", "count": 1})
    got = []
    with pytest.raises(openai.APIError, match="server had an error"):
        for event in client.images.generate(model="gpt-image-2", prompt="x", stream=True, partial_images=2):
            got.append(event.type)
    assert got == ["image_generation.partial_image"]


def test_stream_error_without_partials_and_invalid_json_frames(
    client: OpenAI, http: httpx.Client, openai_base: str
) -> None:
    _faults(http, openai_base, {"type": "stream_error", "count": 1})
    with pytest.raises(openai.APIError):
        list(client.images.generate(model="gpt-image-2", prompt="x", stream=True))
    _faults(http, openai_base, {"type": "invalid_json", "count": 1})
    body = {"prompt": "x", "stream": True, "partial_images": 1, "size": "1024x1024"}
    r = http.post(openai_base + "/v1/images/generations", json=body, headers=AUTH)
    first, second = [f for f in r.text.split("\n\n") if f]
    with pytest.raises(ValueError):
        json.loads(first.split("data: ", 1)[1])
    assert json.loads(second.split("data: ", 1)[1])["type"] == "image_generation.completed"


def test_non_stream_variants_of_stream_faults(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "stream_error", "count": 1})
    assert _gen(http, openai_base).status_code == 500
    _faults(http, openai_base, {"type": "stream_cut", "count": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        _gen(http, openai_base)


def test_sse_framing_is_exact(http: httpx.Client, openai_base: str) -> None:
    body = {"prompt": "x", "stream": True, "partial_images": 1, "size": "1024x1024"}
    text = http.post(openai_base + "/v1/images/generations", json=body, headers=AUTH).text
    frames = [f for f in text.split("\n\n") if f]
    assert [f.split("\n")[0] for f in frames] == [
        "event: image_generation.partial_image",
        "event: image_generation.completed",
    ]
    assert all(f.split("\n")[1].startswith("data: {") for f in frames)


def test_count_order_rate_and_endpoint_filters(http: httpx.Client, openai_base: str) -> None:
    _faults(http, openai_base, {"type": "500", "count": 2}, {"type": "429", "count": 1})
    assert [_gen(http, openai_base).status_code for _ in range(4)] == [500, 500, 429, 200]

    def run() -> list[int]:
        http.delete(openai_base + "/_sim/faults")
        _faults(http, openai_base, {"type": "503", "rate": 0.5, "seed": 7, "count": 16})
        return [_gen(http, openai_base, size="1024x1024").status_code for _ in range(17)]

    first = run()
    assert 2 <= first[:16].count(503) <= 14 and first[16] == 200
    assert run() == first, "a seeded rate is repeatable"

    http.delete(openai_base + "/_sim/faults")
    _faults(http, openai_base, {"type": "500", "endpoint": "edits"})
    assert _gen(http, openai_base).status_code == 200
    r = http.post(
        openai_base + "/v1/images/edits",
        headers=AUTH,
        data={"prompt": "x"},
        files={"image": ("a.png", _png(), "image/png")},
    )
    assert r.status_code == 500
    state = http.get(openai_base + "/_sim/faults").json()["faults"]
    assert state[0]["type"] == "server_error" and state[0]["fired"] == 1 and state[0]["seen"] == 1
    assert http.delete(openai_base + "/_sim/faults").json() == {"faults": []}
    assert r.status_code == 500 and _gen(http, openai_base).status_code == 200


def test_fault_schema_errors(http: httpx.Client, openai_base: str) -> None:
    for bad in (
        {"type": "explode"},
        {"type": "500", "count": 0},
        {"type": "500", "rate": 2},
        {"type": "500", "typo": 1},
        {"type": "500", "endpoint": "variations"},
    ):
        r = http.post(openai_base + "/_sim/faults", json=bad)
        assert r.status_code == 400, bad
    assert http.get(openai_base + "/_sim/faults").json()["faults"] == []
    with pytest.raises(ValueError):
        parse_fault([])


def test_requests_log(http: httpx.Client, openai_base: str) -> None:
    _gen(http, openai_base, size="1024x1024")
    http.post(
        openai_base + "/v1/images/edits?trace=1",
        headers=AUTH,
        data={"prompt": "y"},
        files={"image": ("a.png", _png(), "image/png")},
    )
    log = http.get(openai_base + "/_sim/requests").json()["requests"]
    assert [e["path"] for e in log] == ["/v1/images/generations", "/v1/images/edits"]
    assert log[0]["json"] == {"prompt": "a small red boat", "size": "1024x1024"} and log[0]["method"] == "POST"
    assert log[1]["query"] == {"trace": "1"} and log[1]["form"] == {"prompt": "y"}
    assert http.delete(openai_base + "/_sim/requests").json() == {"requests": []}
    assert http.get(openai_base + "/_sim/requests").json()["requests"] == []


def test_cache_mode_and_incompressible_4k(http: httpx.Client, openai_base: str, openai_app: Any) -> None:
    r = http.post(openai_base + "/_sim/config", json={"cache": True, "incompressible": True})
    assert r.json()["cache"] is True
    body = {"prompt": "bench", "size": "3840x2160", "quality": "high"}
    t0 = time.monotonic()
    first = _gen(http, openai_base, **body)
    t1 = time.monotonic()
    second = _gen(http, openai_base, **body)
    t2 = time.monotonic()
    b64 = first.json()["data"][0]["b64_json"]
    assert 25_000_000 <= len(b64) <= 34_000_000
    assert second.json()["data"][0]["b64_json"] == b64
    assert _decode(b64).size == (3840, 2160)
    print(f"\n4K incompressible answer: first {t1 - t0:.2f}s, cached {t2 - t1:.2f}s, {len(b64) / 1e6:.1f} MB base64")
    assert http.post(openai_base + "/_sim/config", json={"cache": "yes"}).status_code == 400


def test_constructor_latency_and_flags() -> None:
    app = create_upstream_app("openai", latency_s=0.3, cache=True)
    assert sim_state(app).cache is True
    with run_asgi(app) as base, httpx.Client() as c:
        start = time.monotonic()
        assert c.post(base + "/v1/images/generations", json={"prompt": "x"}, headers=AUTH).status_code == 200
        assert time.monotonic() - start >= 0.3
        assert c.get(base + "/_sim/health").json() == {"ok": True, "protocol": "openai"}
