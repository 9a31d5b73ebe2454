"""The layers of docs/architecture.md hold: the domain imports no storage, HTTP or wiring,
and the HTTP edge and the console never build database queries (they ask services)."""

from __future__ import annotations

import ast
from pathlib import Path

import imagerelay

PACKAGE = Path(imagerelay.__file__).parent


def _imports(room: str) -> dict[str, set[str]]:
    """Every module each file under ``room`` imports (top level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / room).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(PACKAGE))] = names
    return found


def _offenders(room: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for file, names in _imports(room).items():
        bad = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            out[file] = bad
    return out


def test_the_domain_imports_no_storage_http_or_wiring() -> None:
    forbidden = (
        "imagerelay.storage",
        "imagerelay.api",
        "imagerelay.console",
        "imagerelay.services",
        "imagerelay.relay",
        "imagerelay.jobs",
        "sqlalchemy",
        "starlette",
    )
    assert _imports("domain"), "no domain modules found"
    assert _offenders("domain", forbidden) == {}


def test_handlers_and_pages_never_query_the_database() -> None:
    for room in ("api", "console"):
        assert _imports(room), f"no {room} modules found"
        assert _offenders(room, ("sqlalchemy", "imagerelay.storage.schema", "imagerelay.storage.db")) == {}
