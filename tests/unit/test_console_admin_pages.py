"""The admin console's channel form -> the admin API's channel body (console/admin_pages.py)."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from imagerelay.console.admin_pages import channel_body
from imagerelay.errors import InvalidRequest


def form(**fields: object) -> FormData:
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            pairs.append((key, str(v)))
    return FormData(pairs)


def test_add_reads_numbers_pools_map_and_key() -> None:
    body = channel_body(
        form(
            name=" ch1 ",
            type="openai",
            pools=["a", "b"],
            priority="2",
            weight="3",
            timeout_s="12.5",
            model_map="gpt-image-2 = dep-1\n\n x=y ",
            api_key=" sk-1 ",
            base_url="",
            verify="1",
        ),
        editing=False,
    )
    assert body == {
        "name": "ch1",
        "type": "openai",
        "pools": ["a", "b"],
        "priority": 2,
        "weight": 3,
        "timeout_s": 12.5,
        "verify": True,
        "model_map": {"gpt-image-2": "dep-1", "x": "y"},
        "api_key": "sk-1",
    }


def test_edit_keeps_key_and_proxy_unless_asked() -> None:
    body = channel_body(form(pools="a", base_url="https://up.example/v1"), editing=True)
    assert "api_key" not in body and "proxy" not in body
    assert body["base_url"] == "https://up.example/v1" and body["api_version"] is None and body["verify"] is False
    body = channel_body(form(pools="a", remove_key="1", clear_proxy="1"), editing=True)
    assert body["api_key"] is None and body["proxy"] is None
    body = channel_body(form(pools="a", api_key="sk-new", proxy="http://u:p@h:1", remove_key="1"), editing=True)
    assert body["api_key"] == "sk-new" and body["proxy"] == "http://u:p@h:1"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"priority": "1.5"}, "priority"),
        ({"weight": "many"}, "weight"),
        ({"timeout_s": "nan"}, "timeout_s"),
        ({"timeout_s": "0"}, "timeout_s"),
        ({"timeout_s": "inf"}, "timeout_s"),
        ({"model_map": "no-equals"}, "model_map"),
        ({"model_map": "=x"}, "model_map"),
    ],
)
def test_unreadable_fields_are_refused_by_name(fields: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        channel_body(form(name="c", type="openai", pools="a", **fields), editing=False)
    assert err.value.param == param
