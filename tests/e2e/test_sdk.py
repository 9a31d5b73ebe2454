"""The official openai package is the judge of compatibility."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import png_bytes
from tests.support.gateway import Gateway


def client(gateway: Gateway, group: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=gateway.tokens[group], max_retries=0, **kw)  # type: ignore[arg-type]


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    return img


def test_generate_each_route(gateway: Gateway) -> None:
    img = client(gateway, "default").images.generate(model="gpt-image-2", prompt="a lighthouse")
    assert img.data and decode(img.data[0].b64_json).size == (1024, 1024)

    vip = client(gateway, "default").images.generate(model="gpt-image-2-vip", prompt="a lighthouse", size="1280x544")
    assert decode(vip.data[0].b64_json).size == (1280, 544)

    for group in ("Sora2Official", "GPTImage2 Enterprise"):
        off = client(gateway, group).images.generate(
            model="gpt-image-2",
            prompt="a lighthouse",
            size="1024x1536",
            quality="low",
            output_format="jpeg",
            output_compression=60,
            n=2,
        )
        assert len(off.data) == 2
        assert off.output_format == "jpeg" and off.quality == "low" and off.size == "1024x1536"
        first = decode(off.data[0].b64_json)
        assert first.format == "JPEG" and first.size == (1024, 1536)
        assert off.usage is not None and off.usage.output_tokens > 0


def test_transparent_webp(gateway: Gateway) -> None:
    res = client(gateway, "Sora2Official").images.generate(
        model="gpt-image-2", prompt="a sticker", background="transparent", output_format="webp", size="1024x1024"
    )
    img = decode(res.data[0].b64_json)
    assert img.format == "WEBP" and img.mode == "RGBA"
    assert img.getextrema()[3][0] < 255  # some pixel really is transparent


def test_edit_one_and_several_files(gateway: Gateway, tmp_path: Path) -> None:
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes(600, 400, (10, 200, 10)))
    b = tmp_path / "b.png"
    b.write_bytes(png_bytes(300, 300, (10, 10, 200)))
    c = client(gateway, "Sora2Official")
    with a.open("rb") as fa:
        one = c.images.edit(model="gpt-image-2", image=fa, prompt="make it red", size="1536x1024")
    assert decode(one.data[0].b64_json).size == (1536, 1024)
    with a.open("rb") as fa, b.open("rb") as fb:
        many = c.images.edit(model="gpt-image-2", image=[fa, fb], prompt="combine them")
    out = decode(many.data[0].b64_json)
    # size=auto on an edit follows the first image's orientation, like the official API.
    assert out.size == (1536, 1024)
    assert many.usage is not None and many.usage.input_tokens_details.image_tokens > 0

    vip = client(gateway, "default")
    with a.open("rb") as fa:
        res = vip.images.edit(model="gpt-image-2-vip", image=fa, prompt="blue", size="2048x1152")
    assert decode(res.data[0].b64_json).size == (2048, 1152)


def test_response_format_url_then_download(gateway: Gateway) -> None:
    for group, model in (("default", "gpt-image-2"), ("GPTImage2 Enterprise", "gpt-image-2")):
        res = client(gateway, group).images.generate(model=model, prompt="a kite", response_format="url")
        url = res.data[0].url
        assert url and url.startswith(gateway.base_url) and res.data[0].b64_json is None
        got = httpx.get(url)
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(got.content)).size == (1024, 1024)
        # The signature covers the name and expiry: any change is refused.
        tampered = httpx.get(url.replace("sig=", "sig=0"))
        assert tampered.status_code == 404
        assert tampered.json()["error"]["code"] == "not_found"


def test_quality_on_vip_is_bad_request(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, "default").images.generate(
            model="gpt-image-2-vip", prompt="x", size="2048x2048", quality="high"
        )
    err = info.value.body
    assert isinstance(err, dict)
    assert err["param"] == "quality"
    assert "Sora2Official" in err["message"] and "GPTImage2 Enterprise" in err["message"]


def test_size_on_default_route_is_bad_request(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, "default").images.generate(model="gpt-image-2", prompt="x", size="1024x1024")
    assert info.value.body["param"] == "size"  # type: ignore[index]
    assert "gpt-image-2-vip" in info.value.body["message"]  # type: ignore[index]


def test_auto_on_vip_is_bad_request(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, "default").images.generate(model="gpt-image-2-vip", prompt="x", size="auto")
    assert info.value.body["param"] == "size"  # type: ignore[index]
    assert "2048x2048" in info.value.body["message"]  # type: ignore[index]


def test_vip_near_miss_names_nearest(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, "default").images.generate(model="gpt-image-2-vip", prompt="x", size="3840x2000")
    assert "3840x2160" in info.value.body["message"]  # type: ignore[index]


def test_model_not_in_group(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway, "Sora2Official").images.generate(model="gpt-image-2-vip", prompt="x")
    body = info.value.body
    assert body["code"] == "model_not_found"  # type: ignore[index]
    assert "Sora2Official" in body["message"] and "gpt-image-2" in body["message"]  # type: ignore[index]


def test_bad_token(gateway: Gateway) -> None:
    bad = openai.OpenAI(base_url=gateway.v1, api_key="sk-not-a-real-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(model="gpt-image-2", prompt="x")


def test_models_lists_group_models(gateway: Gateway) -> None:
    ids = sorted(m.id for m in client(gateway, "default").models.list())
    assert ids == ["gpt-image-2", "gpt-image-2-vip"]
    ids = [m.id for m in client(gateway, "GPTImage2 Enterprise").models.list()]
    assert ids == ["gpt-image-2"]


def test_stream_generation(gateway: Gateway) -> None:
    stream = client(gateway, "Sora2Official").images.generate(
        model="gpt-image-2", prompt="a fox", stream=True, partial_images=2, size="1024x1024"
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert decode(events[-1].b64_json).size == (1024, 1024)
    assert events[-1].usage.output_tokens > 0


def test_stream_edit(gateway: Gateway, tmp_path: Path) -> None:
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes(512, 512))
    with a.open("rb") as fa:
        stream = client(gateway, "GPTImage2 Enterprise").images.edit(
            model="gpt-image-2", image=fa, prompt="red", stream=True, partial_images=1
        )
        types = [e.type for e in stream]
    assert types == ["image_edit.partial_image", "image_edit.completed"]
