"""Browser helpers for the console tests: Debian's chromium driven by Playwright, axe-core,
screenshots and the browser console's complaints. Plain functions; conftest.py wraps them
as fixtures so test modules can also call them directly.

Why Debian's chromium and not `playwright install`: the machines (and CI) reach package
registries only, so a downloaded browser build cannot be fetched; the `chromium` package can.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
WIDTHS = (375, 1280)
VIEWPORT_HEIGHT = 900

# axe-core from the npm registry (`npm pack axe-core@4.14.1`), MPL-2.0, licence next to it.
AXE_FILE = Path(__file__).with_name("vendor") / "axe-core-4.14.1.min.js"
# The package's own sri-history.json entry for axe.min.js 4.14.1: a changed file fails loudly.
AXE_SRI = "sha256-KTSJmUUM3yhJqOcLeRL8LahahJ2jnA0NU5T1HUqe2Vw="
# Impacts that fail a page; "moderate"/"minor" findings are reported by axe but tolerated.
BLOCKING_IMPACTS = ("serious", "critical")


def chromium_path() -> str:
    """Debian's chromium, or a skip (a failure in CI, where IMAGERELAY_REQUIRE_SERVICES=1)."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("IMAGERELAY_REQUIRE_SERVICES") == "1":
        pytest.fail("chromium is required in CI but is not on PATH (.ci/run installs the Debian package)")
    pytest.skip("chromium not on PATH: `apt-get install chromium` to run the console browser tests")


def axe_source() -> str:
    data = AXE_FILE.read_bytes()
    sri = "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert sri == AXE_SRI, f"{AXE_FILE.name} does not match the published axe-core 4.14.1 ({sri})"
    return data.decode()


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Run axe-core in the page; return its violations (all impacts).

    The script goes in through the DevTools protocol (``page.evaluate``), not a <script> tag:
    the console's CSP rightly forbids inline scripts, and the test must not weaken it."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    result: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return result


def describe_violations(violations: list[dict[str, Any]], url: str) -> str:
    lines = [f"axe-core found {len(violations)} serious/critical accessibility violation(s) on {url}:"]
    for v in violations:
        lines.append(f"- [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"][:5]:
            target = " ".join(str(t) for t in node.get("target", []))
            summary = (node.get("failureSummary") or "").replace("\n", " ")
            lines.append(f"    at {target}: {summary}")
            lines.append(f"      {node.get('html', '')[:160]}")
        if len(v["nodes"]) > 5:
            lines.append(f"    ... and {len(v['nodes']) - 5} more element(s)")
    return "\n".join(lines)


def check_axe(page: Any) -> list[dict[str, Any]]:
    """Fail the test on serious/critical violations; return the tolerated (moderate/minor) ones."""
    violations = axe_violations(page)
    blocking = [v for v in violations if v.get("impact") in BLOCKING_IMPACTS]
    if blocking:
        pytest.fail(describe_violations(blocking, page.url), pytrace=False)
    return violations


def save_screenshots(page: Any, name: str) -> list[Path]:
    """Full-page PNGs of the current page at each width in WIDTHS, in artifacts/screenshots/.

    The viewport is put back afterwards so the test carries on as it was."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = page.viewport_size
    saved = []
    try:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": VIEWPORT_HEIGHT})
            path = SCREENSHOTS / f"{name}-{width}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
    finally:
        if before:
            page.set_viewport_size(before)
    return saved


@dataclass
class ConsoleLog:
    """What the browser said while a page was open: console errors/warnings, uncaught
    exceptions and Content-Security-Policy violations (from the DOM event, which names the
    blocked resource and directive, and from chromium's 'Refused to ...' console lines)."""

    errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _on_console(self, msg: Any) -> None:
        text = msg.text
        if msg.type in ("error", "warning"):
            self.errors.append(f"{msg.type}: {text}")
        if "Content Security Policy" in text or text.startswith("[csp-violation]"):
            self.csp.append(text)


# Installed in every page before its own scripts: reports each securitypolicyviolation event
# as a console line that ConsoleLog recognises.
CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) => {
  console.error('[csp-violation] ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline')
    + ' at ' + e.sourceFile + ':' + e.lineNumber);
});
"""
