"""/openapi.json is a valid OpenAPI 3.1 document naming every route the app serves;
/docs is a vendored Swagger UI under a CSP with no external source."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from openapi_spec_validator import validate
from starlette.routing import Route

from imagerelay.api.apidoc import openapi_path
from imagerelay.api.app import create_app
from imagerelay.config import Settings
from tests.support.gateway import Gateway


def served_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the real app (HEAD is Starlette's automatic twin of GET)."""
    app = create_app(Settings(data_dir=tmp_path))
    ops = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: only plain routes are expected (a Mount would hide paths)"
        for method in route.methods or ():
            if method != "HEAD":
                ops.add((method, openapi_path(route.path)))
    return ops


def test_document_is_valid_openapi_31(gateway: Gateway) -> None:
    r = httpx.get(gateway.base_url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises with the offending location


def test_every_served_route_is_documented(gateway: Gateway, tmp_path: Path) -> None:
    doc = httpx.get(gateway.base_url + "/openapi.json").json()
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = served_operations(tmp_path)
    missing = sorted(served - documented)
    assert not missing, f"served but not documented (add to imagerelay/api/apidoc/operations.py): {missing}"
    stale = sorted(documented - served)
    assert not stale, f"documented but not served (remove from imagerelay/api/apidoc/operations.py): {stale}"


def test_edits_document_multipart_and_json(gateway: Gateway) -> None:
    doc = httpx.get(gateway.base_url + "/openapi.json").json()
    content = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert "image[]" in doc["components"]["schemas"]["EditRequestMultipart"]["properties"]
    model = doc["paths"]["/v1/models/{model}"]["get"]
    assert model["parameters"][0]["name"] == "model"


def test_docs_page_has_no_external_source(gateway: Gateway) -> None:
    r = httpx.get(gateway.base_url + "/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert not re.search(r"https?:|\*", csp), csp
    assert "<script>" not in r.text  # no inline script (the CSP would refuse it)
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(ref.startswith("/docs/assets/") for ref in refs), refs
    for ref in refs:
        asset = httpx.get(gateway.base_url + ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert httpx.get(gateway.base_url + "/docs/assets/..%2Fschemas.py").status_code == 404
    assert httpx.get(gateway.base_url + "/docs/assets/swagger-ui-5.35.0.LICENSE.txt").text.lstrip().startswith("Apache")


def test_answers_match_their_schemas(gateway: Gateway) -> None:
    """Real answers validate against the document's schemas (status code by status code)."""
    from jsonschema import Draft202012Validator

    doc = httpx.get(gateway.base_url + "/openapi.json").json()
    key = {"Authorization": f"Bearer {gateway.tokens['Sora2Official']}"}
    calls = [
        ("GET", "/v1/models", "/v1/models", None), ("GET", "/v1/models/gpt-image-2", "/v1/models/{model}", None),
        ("GET", "/v1/models/nope", "/v1/models/{model}", None), ("GET", "/v1/pricing", "/v1/pricing", None),
        ("GET", "/v1/account/balance", "/v1/account/balance", None),
        ("GET", "/v1/account/usage", "/v1/account/usage", None), ("GET", "/readyz", "/readyz", None),
        ("GET", "/healthz", "/healthz", None),
        ("POST", "/v1/images/generations", "/v1/images/generations",
         {"model": "gpt-image-2", "prompt": "a kite", "size": "1024x1024", "quality": "low"}),
        ("POST", "/v1/images/generations", "/v1/images/generations", {"model": "gpt-image-2", "prompt": "a kite",
                                                                    "quality": "ultra"}),
    ]
    for method, url, path, body in calls:
        r = httpx.request(method, gateway.base_url + url, headers=key, json=body, timeout=60)
        response = doc["paths"][path][method.lower()]["responses"][str(r.status_code)]
        schema = response["content"]["application/json"]["schema"]
        errors = list(Draft202012Validator({**schema, "components": doc["components"]}).iter_errors(r.json()))
        assert not errors, f"{method} {url} -> {r.status_code}: {errors[0].message} at {list(errors[0].path)}"
