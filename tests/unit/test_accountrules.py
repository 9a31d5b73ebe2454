"""The one reading of token and user settings shared by the admin API, the self-service
API and the CLI: refuse, never clamp; absent means unchanged, null means no limit."""

from __future__ import annotations

from typing import Any

import pytest

from imagerelay.domain.accountrules import token_changes, user_changes
from imagerelay.errors import InvalidRequest, UnknownParameter

MODELS = ("gpt-image-2", "gpt-image-2-vip")


def test_absent_fields_are_unchanged_and_null_clears() -> None:
    assert token_changes({}) == {}
    assert token_changes({"rpm": None, "spend_cap_usd": None, "allowed_models": None, "expires_at": None}) == {
        "rpm_limit": None,
        "spend_cap_micros": None,
        "allowed_models": None,
        "expires_at": None,
    }


def test_values_become_columns() -> None:
    assert token_changes(
        {
            "name": "ci",
            "rpm": 5,
            "concurrency": 2,
            "spend_cap_usd": "1.5",
            "allowed_models": ["gpt-image-2", "gpt-image-2"],
            "expires_at": 10,
        },
        models=MODELS,
    ) == {
        "name": "ci",
        "rpm_limit": 5,
        "concurrency_limit": 2,
        "spend_cap_micros": 1_500_000,
        "allowed_models": ("gpt-image-2",),
        "expires_at": 10.0,
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": None}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"concurrency": 10**7}, "concurrency"),
        ({"spend_cap_usd": 5}, "spend_cap_usd"),
        ({"spend_cap_usd": "-1"}, "spend_cap_usd"),
        ({"allowed_models": []}, "allowed_models"),
        ({"allowed_models": "gpt-image-2"}, "allowed_models"),
        ({"allowed_models": ["dall-e-3"]}, "allowed_models"),
        ({"expires_at": -1}, "expires_at"),
        ({"expires_at": float("inf")}, "expires_at"),
    ],
)
def test_bad_token_fields_are_refused_with_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        token_changes(body, models=MODELS)
    assert refused.value.param == param


def test_user_changes() -> None:
    groups = ("default", "Sora2Official")
    assert user_changes({"disabled": True, "allowed_groups": ["default"]}, groups=groups) == {
        "disabled": True,
        "allowed_groups": ("default",),
    }
    assert user_changes({"allowed_groups": None}, groups=groups) == {"allowed_groups": None}
    with pytest.raises(UnknownParameter):
        user_changes({"balance_usd": "5"}, groups=groups)
    with pytest.raises(InvalidRequest):
        user_changes({"is_admin": 1}, groups=groups)
    with pytest.raises(InvalidRequest):
        user_changes({"allowed_groups": ["VIP"]}, groups=groups)
