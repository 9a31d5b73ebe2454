"""The user pages over HTTP against the real gateway: a key created in the console works
on the API and is refused once revoked there; quick start and pricing come from the
catalog; usage filters, totals and the CSV export show the user's own calls only."""

from __future__ import annotations

import csv
import html
import io
import re
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.console.http import Visitor
from tests.support.gateway import Gateway, run_gateway
from tests.support.services import drop_postgres_database, fresh_postgres_database

PASSWORD = "correct horse battery"
NEW_KEY = re.compile(r'<code id="new-key"[^>]*>(sk-[^<]+)</code>')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"IMAGERELAY_SIGNUP": "open", "IMAGERELAY_SIGNUP_CREDIT_USD": "5"}
    dropped = None
    if request.param == "postgresql":  # sessions, sign-up and the per-day sums on both databases
        env["IMAGERELAY_DATABASE_URL"], dropped = fresh_postgres_database()
    try:
        with run_gateway(tmp_path_factory.mktemp("userpages"), extra_env=env) as g:
            yield g
    finally:
        if dropped:
            drop_postgres_database(dropped)


def new_user(gw: Gateway) -> Visitor:
    v = Visitor(gw.base_url, address=f"203.0.113.{secrets.randbelow(250) + 1}")
    name = "p" + secrets.token_hex(4)
    assert v.post("/console/signup", {"name": name, "password": PASSWORD, "confirm": PASSWORD}).status_code == 303
    return v


def create_key(v: Visitor, group: str, **limits: str) -> tuple[str, int, str]:
    """(secret, id, page) of a key made through the console form."""
    page = v.post(
        "/console/tokens/new", {"name": f"key-{group}", "group": group, **limits}, csrf_from="/console/tokens/new"
    )
    assert page.status_code == 200, page.text[:500]
    secret = NEW_KEY.search(page.text)
    token_id = re.search(r'action="/console/tokens/(\d+)"', page.text)
    assert secret and token_id
    return secret.group(1), int(token_id.group(1)), html.unescape(page.text)


def generate(gw: Gateway, key: str, **body: object) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/images/generations",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-image-2", "prompt": "a lighthouse", **body},
        timeout=120,
    )


def test_group_picker_explains_each_group_from_the_catalog(gw: Gateway) -> None:
    with new_user(gw) as v:
        page = html.unescape(v.get("/console/tokens/new").text)
    assert "gpt-image-2</strong>: $0.03 per call, no size or quality" in page
    assert "gpt-image-2-vip</strong>: $0.03 per call, one of 30 sizes, no quality" in page
    assert "official price ×1.2, quality and custom sizes" in page  # GPTImage2 Enterprise


def test_key_created_in_the_console_works_then_revoked_is_refused(gw: Gateway) -> None:
    with new_user(gw) as v:
        key, token_id, page = create_key(v, "GPTImage2 Enterprise", spend_cap_usd="2.50")
        # Shown once, with the quick start filled in for this group's model.
        assert page.count(key) >= 3  # the key, the curl and the Python snippets
        assert f"{gw.base_url}/v1" in page and "/images/generations" in page and '"model": "gpt-image-2"' in page
        later = html.unescape(v.get(f"/console/tokens/{token_id}").text)
        assert key not in later and "sk-PASTE-YOUR-KEY-HERE" in later
        listing = v.get("/console/tokens").text
        assert key not in listing and key[:7] in listing and "cap $2.50" in listing
        ok = generate(gw, key, quality="high", size="1024x1024")
        assert ok.status_code == 200, ok.text
        revoked = v.post(f"/console/tokens/{token_id}/revoke", {}, csrf_from=f"/console/tokens/{token_id}")
        assert revoked.status_code == 303
        refused = generate(gw, key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"
        assert "revoked" in v.get("/console/tokens").text


def test_limits_edit_and_validation(gw: Gateway) -> None:
    with new_user(gw) as v:
        _, token_id, _ = create_key(v, "default")
        path = f"/console/tokens/{token_id}"
        bad = v.post(path, {"name": "k", "rpm": "many"})
        assert bad.status_code == 400 and "rpm must be a whole number" in bad.text
        bad_cap = v.post(path, {"name": "k", "spend_cap_usd": "-3"})
        assert bad_cap.status_code == 400 and "spend_cap_usd" in bad_cap.text
        saved = v.post(
            path,
            {
                "name": "renamed",
                "rpm": "30",
                "concurrency": "2",
                "allowed_models": "gpt-image-2-vip",
                "expires": "2099-01-31",
            },
        )
        assert saved.status_code == 303
        listing = html.unescape(v.get("/console/tokens").text)
        assert "renamed" in listing and "30 per minute" in listing and "2 at once" in listing
        assert "only gpt-image-2-vip" in listing and "expires 2099-02-01 00:00 UTC" in listing
        cleared = v.post(path, {"name": "renamed"})  # empty fields: no limits
        assert cleared.status_code == 303 and "none" in v.get("/console/tokens").text
    with new_user(gw) as other:  # someone else's key is not found
        assert other.get(path).status_code == 404
        assert other.post(path, {"name": "mine now"}, csrf_from="/console/").status_code == 404


def test_usage_totals_filters_and_csv(gw: Gateway) -> None:
    with new_user(gw) as v, new_user(gw) as stranger:
        a, a_id, _ = create_key(v, "default")
        b, _, _ = create_key(v, "default")
        s, _, _ = create_key(stranger, "default")
        for key in (a, a, b, s):
            assert generate(gw, key).status_code == 200
        assert generate(gw, a, model="gpt-image-2-vip", size="1x1").status_code == 400  # refused: no charge
        page = v.get("/console/usage")
        assert page.status_code == 200 and "<svg" in page.text
        total_calls = int(re.search(r'id="total-calls">(\d+)<', page.text).group(1))  # type: ignore[union-attr]
        assert total_calls >= 3
        only_a = v.get("/console/usage", params={"token": str(a_id), "status": "ok"}).text
        assert 'id="total-calls">2<' in only_a and 'id="total-spend">$0.06<' in only_a
        export = v.get("/console/usage.csv", params={"token": str(a_id), "status": "ok"})
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        assert "attachment" in export.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert len(rows) == 2 and {r["token_id"] for r in rows} == {str(a_id)}
        assert all(r["cost_usd"] == "0.030000" and r["status"] == "200" for r in rows)
        everything = list(csv.DictReader(io.StringIO(v.get("/console/usage.csv").text)))
        assert len(everything) == total_calls
        theirs = {r["request_id"] for r in csv.DictReader(io.StringIO(stranger.get("/console/usage.csv").text))}
        assert theirs and not theirs & {r["request_id"] for r in everything}
        balance = re.search(r'id="balance">\$([\d.]+)<', page.text)
        assert balance and balance.group(1) == "4.91"  # $5 sign-up credit, three $0.03 calls


def test_usage_csv_is_formula_safe(gw: Gateway) -> None:
    """The user's export goes through the admin export's writer: a key name a spreadsheet
    would run as a formula is quoted with a leading apostrophe."""
    with new_user(gw) as v:
        key, key_id, _ = create_key(v, "default", name='=HYPERLINK("http://example.com","x")')
        minus, _, _ = create_key(v, "default", name="-2+3")
        assert generate(gw, key).status_code == 200 and generate(gw, minus).status_code == 200
        rows = list(csv.DictReader(io.StringIO(v.get("/console/usage.csv").text)))
        assert sorted(r["token"][:6] for r in rows) == ["'-2+3 ", "'=HYPE"], rows
        assert all(r["cost_usd"] == "0.030000" for r in rows)


def test_pricing_matrix_of_the_users_groups(gw: Gateway) -> None:
    with new_user(gw) as v:
        page = html.unescape(v.get("/console/pricing").text)
    for group in ("default", "Sora2Official", "GPTImage2 Enterprise"):
        assert f"<td>{group}</td>" in page
    assert "$0.03 per call" in page and "usage ×1.2" in page and "/ 1M tokens" in page
