"""A console visitor over plain HTTP (httpx): its own cookies, the forms' CSRF tokens read
from the pages, as a browser would send them. For the server-side rules (CSRF, cookies,
sessions, throttling) that need no JavaScript."""

from __future__ import annotations

import re
from typing import Any

import httpx

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
SESSION = "imagerelay_session"


class Visitor:
    def __init__(self, base_url: str, *, address: str | None = None, prefix: str = "") -> None:
        # X-Forwarded-For from loopback (trusted by default): each visitor its own client
        # address, so the per-address sign-in throttle of one test does not reach another.
        headers = {"x-forwarded-for": address} if address else {}
        self.prefix = prefix
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Visitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(self.prefix + path, **kw)

    def csrf(self, path: str = "/console/signin") -> str:
        page = self.get(path)
        found = CSRF_FIELD.search(page.text)
        assert found, f"no CSRF field on {path} ({page.status_code}): {page.text[:300]}"
        return found.group(1)

    def post(self, path: str, data: dict[str, Any], *, csrf_from: str | None = None, **kw: Any) -> httpx.Response:
        """POST a form with the CSRF token of the page ``csrf_from`` (default: ``path``)."""
        token = self.csrf(csrf_from or path)
        return self.http.post(self.prefix + path, data={"csrf_token": token, **data}, **kw)

    def sign_in(self, name: str, password: str) -> httpx.Response:
        return self.post("/console/signin", {"name": name, "password": password})

    @property
    def session(self) -> str | None:
        return self.http.cookies.get(SESSION)


def set_cookie_header(response: httpx.Response, name: str) -> str:
    """The Set-Cookie header line for cookie ``name``."""
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(name + "="):
            return value
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")
