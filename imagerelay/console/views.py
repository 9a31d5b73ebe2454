"""What the user pages show, as pure functions of catalog data and records: group
explanations, quick-start snippets, form parsing, dates and the usage chart."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape
from starlette.datastructures import FormData

from imagerelay.catalog.loader import Catalog, ResolvedRoute
from imagerelay.domain.capabilities import billing_summary, example_body, params_summary
from imagerelay.domain.records import DAY_S, DaySum
from imagerelay.errors import InvalidRequest

KEY_PLACEHOLDER = "sk-PASTE-YOUR-KEY-HERE"


@dataclass(frozen=True, slots=True)
class ModelLine:
    model: str
    route: str
    summary: str  # "$0.03 per call, no size or quality"


@dataclass(frozen=True, slots=True)
class GroupSummary:
    name: str
    description: str
    models: tuple[ModelLine, ...]


def route_summary(route: ResolvedRoute) -> str:
    return f"{billing_summary(route)}, {params_summary(route)}"


def group_summaries(catalog: Catalog, groups: tuple[str, ...]) -> list[GroupSummary]:
    out = []
    for group in groups:
        lines = []
        for model in catalog.models_by_group.get(group, ()):
            route = catalog.route(group, model)
            assert route is not None
            lines.append(ModelLine(model, route.spec.name, route_summary(route)))
        spec = catalog.groups[group]
        out.append(GroupSummary(group, spec.description, tuple(lines)))
    return out


@dataclass(frozen=True, slots=True)
class Snippet:
    model: str
    summary: str
    curl: str
    python: str


def snippets(catalog: Catalog, group: str, base_url: str, key: str | None) -> list[Snippet]:
    """curl and OpenAI Python SDK calls for each model of ``group``; ``key`` None puts a
    marked placeholder where the key goes (the secret is shown only when created)."""
    secret = key or KEY_PLACEHOLDER
    out = []
    for model in catalog.models_by_group.get(group, ()):
        route = catalog.route(group, model)
        assert route is not None
        body = example_body(route)
        curl = (
            f"curl {shlex.quote(base_url + '/images/generations')} \\\n"
            f"  -H {shlex.quote('Authorization: Bearer ' + secret)} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(body))}"
        )
        args = "".join(f"    {k}={json.dumps(v)},\n" for k, v in body.items())
        python = (
            "import base64\n\nfrom openai import OpenAI\n\n"
            f"client = OpenAI(base_url={json.dumps(base_url)}, api_key={json.dumps(secret)})\n"
            f"result = client.images.generate(\n{args})\n"
            'with open("image.png", "wb") as f:\n'
            "    f.write(base64.b64decode(result.data[0].b64_json))\n"
        )
        out.append(Snippet(model, route_summary(route), curl, python))
    return out


# -- forms ---------------------------------------------------------------------------------


def _int_field(form: FormData, name: str) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise InvalidRequest(f"{name} must be a whole number.", param=name)
    return int(raw)


def token_body(form: FormData, *, models: tuple[str, ...] | None) -> dict[str, Any]:
    """The API body (``TOKEN_FIELDS``) a token form stands for; an empty limit is none.
    ``models``: the group's models when the form offers a model list, else None."""
    body: dict[str, Any] = {"name": str(form.get("name") or "").strip() or "default"}
    cap = str(form.get("spend_cap_usd") or "").strip()
    body["spend_cap_usd"] = cap or None
    body["rpm"] = _int_field(form, "rpm")
    body["concurrency"] = _int_field(form, "concurrency")
    expires = str(form.get("expires") or "").strip()
    body["expires_at"] = None
    if expires:
        day = parse_day(expires, "expires")
        body["expires_at"] = float(day + DAY_S)  # the end of that UTC day
    if models is not None:
        chosen = [str(v) for v in form.getlist("allowed_models")]
        body["allowed_models"] = chosen if chosen and set(chosen) != set(models) else None
    return body


def parse_day(text: str, field: str) -> int:
    """``YYYY-MM-DD`` (UTC) as a unix time at its start."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{field} must be a date (YYYY-MM-DD).", param=field) from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def day_text(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d")


def time_text(unix: float | None) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if unix is not None else ""


# -- chart ---------------------------------------------------------------------------------


def usage_chart(days: list[DaySum], first_day: int, last_day: int) -> Markup:
    """An inline SVG (no script: CSP-safe) of spend per day as bars and calls per day as a
    line, over every day from ``first_day`` to ``last_day`` (days since the epoch)."""
    by_day = {d.day: d for d in days}
    span = list(range(first_day, last_day + 1))
    width, height, left, bottom, top = 720, 220, 56, 28, 16
    plot_w, plot_h = width - left - 40, height - bottom - top
    max_cost = max((by_day[d].cost_micros for d in span if d in by_day), default=0) or 1
    max_calls = max((by_day[d].calls for d in span if d in by_day), default=0) or 1
    step = plot_w / max(len(span), 1)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title chart-desc" '
        'xmlns="http://www.w3.org/2000/svg">',
        '<title id="chart-title">Spend and calls per day</title>',
        f'<desc id="chart-desc">Bars: spend per day (peak {escape(_usd(max_cost))}); '
        f"line: calls per day (peak {max_calls}), {escape(day_text(first_day * DAY_S))} to "
        f"{escape(day_text(last_day * DAY_S))}.</desc>",
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
        f'<text x="4" y="{top + 10}">{escape(_usd(max_cost))}</text>',
        f'<text x="{left + plot_w + 4}" y="{top + 10}">{max_calls} calls</text>',
    ]
    points = []
    for i, day in enumerate(span):
        d = by_day.get(day)
        cost, calls = (d.cost_micros, d.calls) if d else (0, 0)
        bar_h = plot_h * cost / max_cost
        x = left + i * step
        parts.append(
            f'<rect class="bar" x="{x + step * 0.15:.1f}" y="{top + plot_h - bar_h:.1f}" '
            f'width="{step * 0.7:.1f}" height="{bar_h:.1f}"><title>{escape(day_text(day * DAY_S))}: '
            f"{escape(_usd(cost))}, {calls} calls</title></rect>"
        )
        points.append(f"{x + step / 2:.1f},{top + plot_h - plot_h * calls / max_calls:.1f}")
    if points:
        parts.append(f'<polyline class="calls" points="{" ".join(points)}"/>')
    label_every = max(1, len(span) // 6)
    for i in range(0, len(span), label_every):
        parts.append(f'<text x="{left + i * step:.1f}" y="{height - 8}">{escape(day_text(span[i] * DAY_S)[5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _usd(micros: int) -> str:
    from imagerelay.console.web import money

    return money(micros)
