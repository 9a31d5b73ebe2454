"""The request parameters of the Images API, as one table.

Each :class:`ParamRule` says what a parameter is (its JSON type, its allowed values or
range on a route, read from the route's :class:`~imagerelay.catalog.model.ParamProfile`),
which routes accept it, whether it is forwarded upstream, the purpose named in advice
("use group X for *quality control*"), whether only one endpoint takes it, and what
``GET /v1/models/{id}`` publishes for it. Acceptance, the type and range checks,
pass-through, the messages and the published capabilities all read this table
(:mod:`imagerelay.domain.validation`, :mod:`imagerelay.domain.capabilities`), so a new
parameter is one row here (plus a field on ``ParamProfile`` if routes differ on it), and
a new model with new values (qualities, formats, sizes) is a catalog edit.

Rules that tie two parameters together (``background=transparent`` needs png or webp,
``output_compression`` needs a lossy format) are explicit functions in validation, not
rows: a table of cross-field rules would be a language of its own.

Row order is the order values are checked and listed in messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from imagerelay.catalog.model import Endpoint, ParamProfile

__all__ = ["ALWAYS", "BY_NAME", "HINTED", "ON_REQUEST", "PARAMS", "UPSTREAM", "ParamRule", "accepts"]

Kind = Literal["string", "integer", "boolean", "choice", "size"]
Published = Literal["values", "flag"]


def _always(_: ParamProfile) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class ParamRule:
    """One request parameter.

    ``accepted`` says whether a route with a profile takes the parameter at all (for
    ``stream``: whether ``true`` is taken; ``false`` is harmless everywhere). ``values``
    gives the allowed values of a ``choice``; ``bounds`` the inclusive range of an
    ``integer``, with ``range_names_route`` adding "for <route>" to the message when the
    range is the route's own. ``purpose`` is ``None`` for parameters every route takes
    (nothing to advise). ``on_request`` says the value is a field of ``ImageRequest``.
    """

    name: str
    kind: Kind
    accepted: Callable[[ParamProfile], bool] = _always
    values: Callable[[ParamProfile], Sequence[str]] | None = None
    bounds: Callable[[ParamProfile], tuple[int, int]] | None = None
    range_names_route: bool = False
    purpose: str | None = None
    upstream: bool = True
    endpoint: Endpoint | None = None  # None: both endpoints
    on_request: bool = True
    published: Published | None = None  # what capabilities() shows, when not shown by hand
    default: object = None  # the ImageRequest value when the caller gives none
    unsupported_note: str | None = None  # why a route refuses it, instead of advice

    @property
    def hinted(self) -> bool:
        return self.purpose is not None


PARAMS: tuple[ParamRule, ...] = (
    ParamRule("prompt", "string", upstream=False),  # required and bounded: checked first, by hand
    ParamRule("model", "string", upstream=False, on_request=False),  # resolved to the route before
    ParamRule(
        "n",
        "integer",
        accepted=lambda p: p.n_max > 1,
        bounds=lambda p: (1, p.n_max),
        purpose="several images per call",
        default=1,
    ),
    ParamRule("response_format", "choice", values=lambda p: ("b64_json", "url"), upstream=False, default="b64_json"),
    ParamRule("user", "string"),
    ParamRule("safety_identifier", "string", on_request=False),
    ParamRule("size", "size", accepted=lambda p: p.size != "reject", purpose="explicit sizes"),
    ParamRule(
        "quality",
        "choice",
        accepted=lambda p: p.quality is not None,
        values=lambda p: p.quality or (),
        purpose="quality control",
        published="values",
    ),
    ParamRule(
        "background",
        "choice",
        accepted=lambda p: p.background is not None,
        values=lambda p: p.background or (),
        purpose="background control",
        published="values",
    ),
    ParamRule(
        "output_format",
        "choice",
        accepted=lambda p: p.output_formats is not None,
        values=lambda p: p.output_formats or (),
        purpose="jpeg or webp output",
        published="values",
    ),
    ParamRule(
        "output_compression",
        "integer",
        accepted=lambda p: p.output_compression,
        bounds=lambda p: (0, 100),
        purpose="output compression",
        published="flag",
    ),
    ParamRule(
        "moderation",
        "choice",
        accepted=lambda p: p.moderation is not None,
        values=lambda p: p.moderation or (),
        purpose="moderation control",
        published="values",
    ),
    ParamRule("stream", "boolean", accepted=lambda p: p.streaming, purpose="streaming", upstream=False, default=False),
    ParamRule(
        "partial_images",
        "integer",
        accepted=lambda p: p.streaming and p.partial_images_max > 0,
        bounds=lambda p: (0, p.partial_images_max),
        range_names_route=True,
        purpose="streaming partial images",
    ),
    ParamRule(
        "input_fidelity",
        "choice",
        accepted=lambda p: p.input_fidelity,
        values=lambda p: ("high", "low"),
        purpose="input fidelity control",
        endpoint="edits",
        on_request=False,
        published="flag",
        unsupported_note="gpt-image-2 always processes input images at high fidelity",
    ),
)

BY_NAME = {rule.name: rule for rule in PARAMS}
# Taken by every route (``n`` is bounded by the profile's ``n_max``); listed in table order.
ALWAYS = frozenset(rule.name for rule in PARAMS if not rule.hinted or rule.name == "n")
# Parameters whose absence on a route is explained with hints.
HINTED = tuple(rule.name for rule in PARAMS if rule.hinted)
# Forwarded upstream, in the caller's order (response_format and stream are the gateway's).
UPSTREAM = frozenset(rule.name for rule in PARAMS if rule.upstream)
# ImageRequest fields read from the body, with their value when not given.
ON_REQUEST = tuple((rule.name, rule.default) for rule in PARAMS if rule.on_request)


def accepts(profile: ParamProfile, param: str) -> bool:
    """Whether a route with ``profile`` accepts ``param`` at all (any value)."""
    rule = BY_NAME.get(param)
    return rule is not None and rule.accepted(profile)
