"""Upstream text is scrubbed of the channel's secrets and of secret-shaped runs."""

from __future__ import annotations

import pytest

from imagerelay.errors import ApiError
from imagerelay.upstreams.base import UpstreamFailure
from imagerelay.upstreams.redact import MAX_TEXT, REDACTED, channel_secrets, redact

KEY = "az-0123456789abcdefghij"
BASE = "https://my-resource.openai.azure.com/openai"


@pytest.mark.parametrize(
    "text",
    [
        f"Invalid key {KEY} supplied",
        f"key ending in {KEY[-10:]}",  # a piece of the key
        f"key starting {KEY[:9]}***",
        f"POST {BASE}/deployments/x failed",
        "calling my-resource.openai.azure.com timed out",
        "Incorrect API key provided: sk-proj-********************************abcd.",
        "Authorization: Bearer eyJhbGciOi.abc.def",
        "api-key=abc123 rejected",
        "upstream 10.0.3.7:8443 refused",
        "upstream [fe80::1] refused",
        "token 0123456789abcdef0123456789abcdef is not valid",
    ],
)
def test_secrets_and_addresses_are_redacted(text: str) -> None:
    out = redact(text, channel_secrets(KEY, BASE))
    assert REDACTED in out
    for secret in (
        KEY,
        KEY[-10:],
        KEY[:9],
        "my-resource",
        "10.0.3.7",
        "fe80::1",
        "sk-proj",
        "eyJhbGciOi",
        "abc123",
        "0123456789abcdef0123456789abcdef",
    ):
        assert secret not in out


def test_ordinary_error_text_survives() -> None:
    text = "Invalid value: 'huge'. Supported values are: 'low', 'medium', 'high' and 'auto'."
    assert redact(text, channel_secrets(KEY, BASE)) == text


def test_control_characters_and_length_are_bounded() -> None:
    out = redact("line one\r\nline two\x00" + "x" * 1000)
    assert "\n" not in out and "\x00" not in out and len(out) <= MAX_TEXT


def test_a_failure_is_scrubbed_in_detail_message_and_param() -> None:
    failure = UpstreamFailure(
        "client",
        f"HTTP 400 bad {KEY}",
        status=400,
        client_error=ApiError(f"The upstream rejected the request: {KEY}", param=KEY),
    )
    failure.redacted(channel_secrets(KEY, BASE))
    assert KEY not in failure.detail and KEY not in str(failure)
    assert failure.client_error is not None
    assert KEY not in failure.client_error.message and failure.client_error.param is None


def test_case_changes_and_characters_that_grow_when_lowered_do_not_shift_redaction() -> None:
    text = "İİİİ " + KEY.upper() + " and " + KEY
    out = redact(text, channel_secrets(KEY, None))
    assert KEY not in out and KEY.upper() not in out and KEY[:8].upper() not in out
    assert out.startswith("İİİİ ")
