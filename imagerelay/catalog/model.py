"""The catalog schema: groups, models, parameter profiles, routes and channels.

The catalog is operator data. It is parsed and cross-checked once at start-up
(``imagerelay.catalog.loader``) into frozen objects that the hot path reads without
any further work.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Endpoint = Literal["generations", "edits"]
SizeMode = Literal["reject", "table", "official"]
ChannelType = Literal["simulator", "openai", "azure", "openai-compatible"]
BillingMode = Literal["per_call", "usage"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _parse_wxh(value: str) -> tuple[int, int]:
    w, sep, h = value.partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ValueError(f"size {value!r} is not WIDTHxHEIGHT")
    return int(w), int(h)


class ParamProfile(BaseModel):
    """Which request parameters a route accepts, and within which values.

    ``None`` for a value list means the parameter is not accepted at all on the route
    (sending it is a 400 that points at a route that does accept it).
    """

    model_config = _FROZEN

    size: SizeMode
    # For size == "table": ratio -> tier -> "WxH" (e.g. {"16:9": {"4K": "3840x2160"}}).
    size_table: dict[str, dict[str, str]] = Field(default_factory=dict)
    # What the upstream renders when the caller gives no size ("auto" for official routes).
    default_size: str = "auto"
    quality: tuple[str, ...] | None = None
    n_max: int = Field(default=1, ge=1, le=10)
    background: tuple[str, ...] | None = None
    output_formats: tuple[str, ...] | None = None
    output_compression: bool = False
    moderation: tuple[str, ...] | None = None
    streaming: bool = False
    partial_images_max: int = Field(default=0, ge=0, le=3)
    input_fidelity: bool = False
    max_prompt_chars: int = Field(default=32000, ge=1)
    max_input_images: int = Field(default=16, ge=1, le=16)
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1)

    @field_validator("size_table")
    @classmethod
    def _table_sizes_parse(cls, table: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for ratio, tiers in table.items():
            for tier, size in tiers.items():
                try:
                    _parse_wxh(size)
                except ValueError as exc:
                    raise ValueError(f"size_table[{ratio!r}][{tier!r}]: {exc}") from None
        return table

    def table_sizes(self) -> frozenset[str]:
        return frozenset(s for tiers in self.size_table.values() for s in tiers.values())


class ModelPrices(BaseModel):
    """Official usage prices in USD per 1M tokens (Decimal, never float)."""

    model_config = _FROZEN

    text_input: Decimal
    cached_text_input: Decimal
    image_input: Decimal
    cached_image_input: Decimal
    image_output: Decimal
    text_output: Decimal = Decimal("0")


class ModelSpec(BaseModel):
    model_config = _FROZEN

    prices_per_million: ModelPrices | None = None
    description: str = ""


class GroupSpec(BaseModel):
    model_config = _FROZEN

    description: str = ""
    # Multiplies usage-billed prices (GPTImage2 Enterprise: 1.2).
    multiplier: Decimal = Decimal("1")


class Billing(BaseModel):
    model_config = _FROZEN

    mode: BillingMode
    # USD per successful call, for mode == "per_call".
    price_per_call: Decimal | None = None


class RouteSpec(BaseModel):
    model_config = _FROZEN

    group: str
    model: str
    name: str
    description: str = ""
    endpoints: tuple[Endpoint, ...] = ("generations", "edits")
    params: str  # name of a ParamProfile
    billing: Billing
    pool: str  # channels whose ``pools`` contain this name serve the route
    # Model name sent upstream (channels may map it further, e.g. to an Azure deployment).
    upstream_model: str | None = None
    # The model whose usage prices apply (defaults to upstream_model, then model).
    price_model: str | None = None
    # Whitespace keep-alive interval for non-streaming calls on this route (seconds);
    # callers can also ask per request with the X-Imagerelay-Keepalive header.
    keepalive_s: float | None = Field(default=None, ge=1, le=60)
    # Upstream attempts per call on this route (failover and retries); None: the
    # gateway's IMAGERELAY_MAX_ATTEMPTS. Set lower for a stricter route.
    max_attempts: int | None = Field(default=None, ge=1, le=20)


class ChannelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ChannelType
    pools: tuple[str, ...]
    base_url: str | None = None
    # Name of an environment variable holding the key (keys never live in the catalog file).
    api_key_env: str | None = None
    api_version: str | None = None
    # Azure only: "deployment" (/openai/deployments/{deployment}/...?api-version=) or
    # "v1" (/openai/v1/... with the deployment name as model).
    azure_form: Literal["deployment", "v1"] = "deployment"
    max_connections: int = Field(default=100, ge=1)
    # Map of route upstream_model -> model/deployment name this channel expects.
    model_map: dict[str, str] = Field(default_factory=dict)
    priority: int = 0
    weight: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=180.0, gt=0)
    enabled: bool = True
    # How to reach the upstream: an http://, https:// or socks5:// proxy (None: the
    # HTTPS_PROXY/HTTP_PROXY/NO_PROXY environment), a PEM CA bundle file for a private
    # upstream (None: the system's), and whether to verify its certificate at all.
    proxy: str | None = None
    ca_bundle: str | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _needs_base_url(self) -> ChannelSpec:
        if self.type in ("azure", "openai-compatible") and not self.base_url:
            raise ValueError(f"type {self.type} needs base_url")
        return self

    @field_validator("proxy")
    @classmethod
    def _proxy_scheme(cls, proxy: str | None) -> str | None:
        if proxy is not None and not proxy.lower().startswith(("http://", "https://", "socks5://", "socks5h://")):
            raise ValueError("must be an http://, https:// or socks5:// URL")
        return proxy


class CatalogFile(BaseModel):
    """The raw catalog document as an operator writes it (YAML or JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: dict[str, GroupSpec]
    models: dict[str, ModelSpec]
    param_profiles: dict[str, ParamProfile]
    routes: tuple[RouteSpec, ...]
    channels: tuple[ChannelSpec, ...] = ()
    # Pools where simulator channels may serve beside real ones (otherwise refused: a
    # customer of a real route must never get a locally rendered picture by chance).
    mixed_simulator_pools: tuple[str, ...] = ()
