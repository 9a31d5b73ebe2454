"""/openapi.json is a valid OpenAPI 3.1 document naming every route the app serves;
/docs is a vendored Swagger UI under a CSP with no external source."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from imagerelay.api.apidoc import openapi_path
from imagerelay.api.app import create_app
from imagerelay.config import Settings
from tests.support.gateway import Gateway, run_gateway

ADMIN = "openapi-admin-token"


def served_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the real app (HEAD is Starlette's automatic twin of GET).
    The console's pages are HTML for browsers (docs/console.md), not API operations: off here."""
    app = create_app(Settings(data_dir=tmp_path, console=False))
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


def assert_documented(doc: dict[str, Any], path: str, r: httpx.Response) -> Any:
    """``r`` (an answer to a call on the documented ``path``) has a documented status and
    its JSON body validates against that status's schema; returns the body."""
    method = r.request.method
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(r.status_code) in responses, f"{method} {r.request.url} -> undocumented {r.status_code}: {r.text}"
    schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
    errors = list(Draft202012Validator({**schema, "components": doc["components"]}).iter_errors(r.json()))
    assert not errors, f"{method} {r.request.url} -> {r.status_code}: {errors[0].message} at {list(errors[0].path)}"
    return r.json()


def test_answers_match_their_schemas(gateway: Gateway) -> None:
    """Real answers validate against the document's schemas (status code by status code)."""
    doc = httpx.get(gateway.base_url + "/openapi.json").json()
    key = {"Authorization": f"Bearer {gateway.tokens['Sora2Official']}"}
    calls = [
        ("GET", "/v1/models", "/v1/models", None),
        ("GET", "/v1/models/gpt-image-2", "/v1/models/{model}", None),
        ("GET", "/v1/models/nope", "/v1/models/{model}", None),
        ("GET", "/v1/pricing", "/v1/pricing", None),
        ("GET", "/v1/account/balance", "/v1/account/balance", None),
        ("GET", "/v1/account/usage", "/v1/account/usage", None),
        ("GET", "/readyz", "/readyz", None),
        ("GET", "/healthz", "/healthz", None),
        (
            "POST",
            "/v1/images/generations",
            "/v1/images/generations",
            {"model": "gpt-image-2", "prompt": "a kite", "size": "1024x1024", "quality": "low"},
        ),
        (
            "POST",
            "/v1/images/generations",
            "/v1/images/generations",
            {"model": "gpt-image-2", "prompt": "a kite", "quality": "ultra"},
        ),
    ]
    for method, url, path, body in calls:
        assert_documented(doc, path, httpx.request(method, gateway.base_url + url, headers=key, json=body, timeout=60))


@pytest.fixture(scope="module")
def admin_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with run_gateway(tmp_path_factory.mktemp("openapi-admin"), extra_env={"IMAGERELAY_ADMIN_TOKEN": ADMIN}) as g:
        yield g


def test_account_admin_and_job_answers_match_their_schemas(admin_gw: Gateway) -> None:
    """The routes the token, channel and job-list branches added: their real answers
    (successes and the errors they document) validate against the document."""
    gw = admin_gw
    doc = httpx.get(gw.base_url + "/openapi.json").json()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    user = {"Authorization": f"Bearer {gw.tokens['Sora2Official']}"}

    def call(method: str, url: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        r = httpx.request(method, gw.base_url + url, headers=headers, json=body, timeout=60)
        return r.status_code, assert_documented(doc, path, r)

    # admin keys: create (secret once), list (no secret), read, change, revoke
    status, created = call(
        "POST",
        "/admin/tokens",
        "/admin/tokens",
        admin,
        {"user": "doc-user", "group": "Sora2Official", "rpm": 5, "spend_cap_usd": "2.50"},
    )
    assert status == 201 and created["token"].startswith("sk-"), created
    tid = created["id"]
    status, page = call("GET", "/admin/tokens?user=doc-user", "/admin/tokens", admin)
    assert status == 200 and [k["id"] for k in page["data"]] == [tid] and created["token"] not in str(page)
    assert call("GET", "/admin/tokens?status=nope", "/admin/tokens", admin)[0] == 400
    assert call("GET", "/admin/tokens?user=nobody", "/admin/tokens", admin)[0] == 404
    assert call("GET", "/admin/tokens", "/admin/tokens", user)[0] == 403
    assert call("GET", f"/admin/tokens/{tid}", "/admin/tokens/{token_id}", admin)[0] == 200
    status, patched = call(
        "PATCH",
        f"/admin/tokens/{tid}",
        "/admin/tokens/{token_id}",
        admin,
        {"name": "renamed", "rpm": None, "allowed_models": ["gpt-image-2"]},
    )
    assert status == 200 and patched["name"] == "renamed" and patched["limits"]["rpm"] is None
    assert call("PATCH", f"/admin/tokens/{tid}", "/admin/tokens/{token_id}", admin, {"rmp": 3})[0] == 400
    assert call("PATCH", "/admin/tokens/999999", "/admin/tokens/{token_id}", admin, {"rpm": 3})[0] == 404
    status, revoked = call("DELETE", f"/admin/tokens/{tid}", "/admin/tokens/{token_id}", admin)
    assert status == 200 and revoked["status"] == "revoked"
    # users
    status, users = call("GET", "/admin/users", "/admin/users", admin)
    assert status == 200 and any(u["name"] == "doc-user" for u in users["data"])
    status, changed = call(
        "PATCH", "/admin/users/doc-user", "/admin/users/{name}", admin, {"allowed_groups": ["Sora2Official"]}
    )
    assert status == 200 and changed["allowed_groups"] == ["Sora2Official"]
    assert call("PATCH", "/admin/users/nobody", "/admin/users/{name}", admin, {"disabled": True})[0] == 404

    # self-service keys
    status, mine = call("POST", "/v1/account/tokens", "/v1/account/tokens", user, {"name": "laptop", "rpm": 10})
    assert status == 201 and mine["token"].startswith("sk-") and mine["group"] == "Sora2Official"
    status, page = call("GET", "/v1/account/tokens", "/v1/account/tokens", user)
    assert status == 200 and mine["id"] in [k["id"] for k in page["data"]] and mine["token"] not in str(page)
    status, patched = call(
        "PATCH",
        f"/v1/account/tokens/{mine['id']}",
        "/v1/account/tokens/{token_id}",
        user,
        {"concurrency": 2, "expires_at": None},
    )
    assert status == 200 and patched["limits"]["concurrency"] == 2
    assert call("PATCH", f"/v1/account/tokens/{tid}", "/v1/account/tokens/{token_id}", user, {"rpm": 1})[0] == 404
    assert call("POST", "/v1/account/tokens", "/v1/account/tokens", user, {"group": "no-such-group"})[0] == 403
    status, _ = call("POST", "/v1/account/tokens", "/v1/account/tokens", user, {"rpm": 0})
    assert status == 400
    assert call("DELETE", f"/v1/account/tokens/{mine['id']}", "/v1/account/tokens/{token_id}", user)[0] == 200

    # jobs
    status, job = call(
        "POST",
        "/v1/images/jobs",
        "/v1/images/jobs",
        user,
        {"endpoint": "generations", "model": "gpt-image-2", "prompt": "a kite", "size": "1024x1024", "quality": "low"},
    )
    assert status == 202
    status, jobs = call("GET", "/v1/images/jobs?limit=5", "/v1/images/jobs", user)
    assert status == 200 and job["id"] in [j["id"] for j in jobs["data"]]
    assert call("GET", "/v1/images/jobs?limit=101", "/v1/images/jobs", user)[0] == 400
    assert call("GET", "/v1/images/jobs?before=nope", "/v1/images/jobs", user)[0] == 400

    # channels added at run time: change, refuse a bad field, remove
    status, channels = call("GET", "/admin/channels", "/admin/channels", admin)
    pools = next(c["pools"] for c in channels["data"] if c["type"] == "simulator")
    status, added = call(
        "POST",
        "/admin/channels",
        "/admin/channels",
        admin,
        {"name": "doc-sim", "type": "simulator", "pools": pools, "priority": -5},
    )
    assert status == 201, added
    assert (
        call(
            "POST",
            "/admin/channels",
            "/admin/channels",
            admin,
            {"name": "doc-sim2", "type": "simulator", "pools": pools, "wieght": 2},
        )[0]
        == 400
    )
    status, ch = call(
        "PATCH", "/admin/channels/doc-sim", "/admin/channels/{name}", admin, {"weight": 3, "enabled": False}
    )
    assert status == 200 and ch["weight"] == 3 and ch["enabled"] is False
    assert call("PATCH", "/admin/channels/doc-sim", "/admin/channels/{name}", admin, {"weight": 0})[0] == 400
    assert call("PATCH", "/admin/channels/nope", "/admin/channels/{name}", admin, {"weight": 2})[0] == 404
    catalog = next(c["name"] for c in channels["data"] if c["source"] == "catalog")
    assert call("PATCH", f"/admin/channels/{catalog}", "/admin/channels/{name}", admin, {"weight": 2})[0] == 409
    status, gone = call("DELETE", "/admin/channels/doc-sim", "/admin/channels/{name}", admin)
    assert status == 200 and gone["deleted"] is True
    assert call("DELETE", "/admin/channels/doc-sim", "/admin/channels/{name}", admin)[0] == 404
