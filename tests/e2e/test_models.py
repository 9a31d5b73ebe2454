"""GET /v1/models and /v1/models/{id}: the official SDK's models API, with the route's
capabilities for the caller's group as the ``imagerelay`` extension field."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.gateway import Gateway


def client(gateway: Gateway, group: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=gateway.tokens[group], max_retries=0)


def test_sdk_retrieve_official_route(gateway: Gateway) -> None:
    model = client(gateway, "Sora2Official").models.retrieve("gpt-image-2")
    assert model.id == "gpt-image-2" and model.object == "model"
    caps = model.model_extra["imagerelay"]  # type: ignore[index]
    assert caps["group"] == "Sora2Official" and caps["route"] == "official-mixed"
    assert caps["quality"] == ["low", "medium", "high", "auto"]
    assert caps["output_format"] == ["png", "jpeg", "webp"]
    assert caps["n"] == {"min": 1, "max": 10}
    assert caps["streaming"] == {"supported": True, "partial_images_max": 3}
    assert caps["size"]["mode"] == "rules" and caps["size"]["max_edge"] == 3840 and caps["size"]["auto"] is True
    assert caps["billing"] == {
        "mode": "usage",
        "multiplier": "1",
        "usd_per_million_tokens": {
            "text_input": "5",
            "cached_text_input": "1.25",
            "image_input": "8",
            "cached_image_input": "2",
            "image_output": "30",
        },
    }


def test_enterprise_price_carries_the_multiplier(gateway: Gateway) -> None:
    caps = client(gateway, "GPTImage2 Enterprise").models.retrieve("gpt-image-2").model_extra["imagerelay"]  # type: ignore[index]
    assert caps["billing"]["multiplier"] == "1.2"
    assert caps["billing"]["usd_per_million_tokens"]["image_output"] == "36"


def test_legacy_routes(gateway: Gateway) -> None:
    sdk = client(gateway, "default")
    legacy = sdk.models.retrieve("gpt-image-2").model_extra["imagerelay"]  # type: ignore[index]
    assert legacy["size"] == {"mode": "fixed", "default": "1024x1024"}
    assert legacy["quality"] is None and legacy["streaming"]["supported"] is False
    assert legacy["billing"] == {"mode": "per_call", "price_per_call_usd": "0.03"}
    vip = sdk.models.retrieve("gpt-image-2-vip").model_extra["imagerelay"]  # type: ignore[index]
    assert vip["size"]["mode"] == "table" and len(vip["size"]["values"]) == 30
    assert vip["size"]["table"]["16:9"]["4K"] == "3840x2160" and vip["size"]["values"][-1] in ("3840x2160", "2880x2880")


def test_list_carries_the_same_extension(gateway: Gateway) -> None:
    sdk = client(gateway, "default")
    listed = {m.id: m.model_extra["imagerelay"] for m in sdk.models.list()}  # type: ignore[index]
    assert set(listed) == {"gpt-image-2", "gpt-image-2-vip"}
    assert listed["gpt-image-2-vip"] == sdk.models.retrieve("gpt-image-2-vip").model_extra["imagerelay"]  # type: ignore[index]


def test_model_outside_the_group_is_an_official_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway, "Sora2Official").models.retrieve("gpt-image-2-vip")
    err = caught.value.body
    assert isinstance(err, dict)
    assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "invalid_request_error"
    assert "group Sora2Official" in err["message"] and "gpt-image-2" in err["message"]


def test_retrieve_needs_a_key(gateway: Gateway) -> None:
    r = httpx.get(gateway.v1 + "/models/gpt-image-2")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_pricing_unchanged(gateway: Gateway) -> None:
    r = httpx.get(
        gateway.v1 + "/pricing", headers={"Authorization": f"Bearer {gateway.tokens['GPTImage2 Enterprise']}"}
    )
    entry = r.json()["data"][0]
    assert entry["billing_mode"] == "usage" and entry["multiplier"] == "1.2"
    assert entry["usd_per_million_tokens"]["image_output"] == "36"


def test_pricing_prints_plain_decimals(gateway: Gateway) -> None:
    """$30.00 per million was printed "3E+1" (Decimal.normalize) before capabilities shared the code."""
    r = httpx.get(gateway.v1 + "/pricing", headers={"Authorization": f"Bearer {gateway.tokens['Sora2Official']}"})
    assert r.json()["data"][0]["usd_per_million_tokens"]["image_output"] == "30"
