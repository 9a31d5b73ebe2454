"""Scrub upstream text before it goes anywhere: a client answer, a usage record,
channel health, a log line.

An upstream's error text is not ours: a 400 may echo the key it was sent, a proxy's
500 page may name its host, an SDK-ish message may quote the URL. Whatever of it we
keep passes through :func:`redact` with the channel's own secrets (its key, its base
URL and host) and a few shapes of secrets in general (``sk-...`` keys, bearer
credentials, ``api-key=...`` pairs, URLs, IP addresses, long opaque tokens).

Hand-rolled because it is a dozen regular expressions over short strings; the one
part that is more than a regex - redacting any 8-character piece of the channel key,
so a key echoed cut or masked still does not show - marks spans and collapses them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

REDACTED = "[redacted]"
MAX_TEXT = 300  # upstream text kept anywhere is cut to this many characters
_KEY_PIECE = 8  # any run of this many characters of the channel key is redacted

_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(?:sk|pk|rk|sess)-[A-Za-z0-9*_.\-]{3,}",  # OpenAI-style keys, masked ones too
        r"\bbearer\s+\S+",
        r"\b(?:api[-_ ]?key|key|token|secret|password|authorization)\s*[:=]\s*\S+",
        r"\b[a-z][a-z0-9+.\-]*://\S+",  # any URL
        r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b",  # IPv4 (and port)
        r"\[?\b(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}\b\]?",  # IPv6
        r"\b[A-Za-z0-9_\-]{32,}\b",  # long opaque tokens (Azure keys are 32 hex characters)
    )
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def channel_secrets(api_key: str | None, base_url: str | None) -> tuple[str, ...]:
    """What of one channel must never show: its key, its base URL, its host."""
    found: list[str] = []
    if api_key:
        found.append(api_key)
    if base_url:
        found.append(base_url.rstrip("/"))
        try:
            host = urlsplit(base_url).hostname
        except ValueError:
            host = None
        if host:
            found.append(host)
    return tuple(found)


def redact(text: str, secrets: Iterable[str] = (), *, limit: int = MAX_TEXT) -> str:
    """``text`` with every secret and secret-shaped run replaced by ``[redacted]``,
    control characters turned into spaces, cut to ``limit`` characters."""
    # Only the start can be kept; scanning a megabyte error page would be wasted work.
    text = _CONTROL.sub(" ", text[: 4 * limit])
    mask = bytearray(len(text))
    for secret in secrets:
        _mark_secret(text, secret, mask)
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            mask[match.start() : match.end()] = b"\x01" * (match.end() - match.start())
    out: list[str] = []
    i = 0
    while i < len(text):
        if mask[i]:
            while i < len(text) and mask[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    cleaned = "".join(out).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _mark_secret(text: str, secret: str, mask: bytearray) -> None:
    """Mark every occurrence (any case) of ``secret`` and of every ``_KEY_PIECE``-long
    piece of it; a lookahead finds overlapping occurrences too."""
    if len(secret) < 4:
        return  # too short to tell from ordinary words
    pieces = (
        {secret}
        if len(secret) <= _KEY_PIECE
        else {secret[i : i + _KEY_PIECE] for i in range(len(secret) - _KEY_PIECE + 1)}
    )
    finder = re.compile("(?=(" + "|".join(re.escape(p) for p in pieces) + "))", re.IGNORECASE)
    for match in finder.finditer(text):
        start = match.start()
        end = start + len(match.group(1))
        mask[start:end] = b"\x01" * (end - start)
