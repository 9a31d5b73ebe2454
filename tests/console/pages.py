"""Page-level checks shared by the console's browser tests: the response's security headers,
named controls, and what the keyboard alone can reach."""

from __future__ import annotations

from typing import Any

# The contract's policy (CONSOLE.md), compared directive by directive.
CSP_DIRECTIVES = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data: blob:",
    "connect-src": "'self'",
    "form-action": "'self'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}


def parse_csp(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = " ".join(words[1:])
    return out


def security_header_problems(headers: dict[str, str]) -> list[str]:
    """What is missing or weaker than the contract in one console response's headers."""
    problems = []
    csp = headers.get("content-security-policy")
    if not csp:
        problems.append("no Content-Security-Policy header")
    else:
        got = parse_csp(csp)
        for directive, value in CSP_DIRECTIVES.items():
            if got.get(directive) != value:
                problems.append(f"CSP {directive} is {got.get(directive)!r}, expected {value!r}")
        weak = [d for d, v in got.items() if "unsafe-inline" in v or "unsafe-eval" in v or "*" in v.split()]
        if weak:
            problems.append(f"CSP allows unsafe sources in {weak}")
    if headers.get("x-content-type-options", "").lower() != "nosniff":
        problems.append("X-Content-Type-Options is not nosniff")
    if headers.get("referrer-policy", "").lower() != "same-origin":
        problems.append(f"Referrer-Policy is {headers.get('referrer-policy')!r}, expected same-origin")
    return problems


# Every visible form control (and button) and how it is named, by the accessible-name rules
# that matter here: <label for>/wrapping label, aria-label, aria-labelledby, title, and for
# buttons their text (or an image's alt). Returns the ones without a name.
UNNAMED_CONTROLS_JS = """
() => {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const text = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const named = (el) => {
    if (text(el.getAttribute('aria-label'))) return true;
    const ids = (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
    if (ids.some((id) => { const t = document.getElementById(id); return t && text(t.textContent); })) return true;
    if (el.labels && Array.from(el.labels).some((l) => text(l.textContent))) return true;
    if (text(el.getAttribute('title'))) return true;
    if (el.tagName === 'BUTTON' || (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type))) {
      if (text(el.textContent) || text(el.value)) return true;
      if (Array.from(el.querySelectorAll('img[alt]')).some((i) => text(i.alt))) return true;
    }
    return false;
  };
  return Array.from(document.querySelectorAll('input, select, textarea, button'))
    .filter((el) => el.type !== 'hidden' && visible(el) && !named(el))
    .map((el) => el.outerHTML.slice(0, 160));
}
"""


def unnamed_controls(page: Any) -> list[str]:
    result: list[str] = page.evaluate(UNNAMED_CONTROLS_JS)
    return result


# Marks every visible, enabled interactive element with data-kb=<n> and returns their
# descriptions, so a Tab walk can tell which of them the keyboard reached.
MARK_INTERACTIVE_JS = """
() => {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)
    && getComputedStyle(el).visibility !== 'hidden';
  const els = Array.from(document.querySelectorAll(
    'a[href], button, input, select, textarea, summary, [tabindex]'))
    .filter((el) => el.type !== 'hidden' && !el.disabled && visible(el)
      && el.getAttribute('tabindex') !== '-1' && !el.closest('[inert]'));
  return els.map((el, i) => {
    el.dataset.kb = String(i);
    const label = (el.getAttribute('aria-label') || el.textContent || el.name || el.id || '').trim();
    return el.tagName.toLowerCase() + (el.type ? '[' + el.type + ']' : '') + ' ' + label.slice(0, 60);
  });
}
"""


def tab_walk(page: Any, max_steps: int = 400) -> tuple[list[str], list[int]]:
    """Press Tab from the top of the page until focus wraps round (or max_steps).

    Returns (every visible interactive element, the data-kb indexes focused, in order, each
    once). A focusin listener records the order, so the presses need no round trip each.
    Radio groups take one Tab stop, so only one radio of a group is reached; the caller
    decides what must be reached."""
    elements: list[str] = page.evaluate(MARK_INTERACTIVE_JS)
    page.evaluate("""() => {
      window.__kbOrder = [];
      document.addEventListener('focusin', (e) => {
        const kb = e.target && e.target.dataset ? e.target.dataset.kb : undefined;
        if (kb !== undefined) window.__kbOrder.push(Number(kb));
      });
      if (document.activeElement) document.activeElement.blur();
      window.scrollTo(0, 0);
    }""")
    # Date inputs and the like take several Tab stops: press in batches until focus wraps.
    batch, order = len(elements) + 1, []
    for _ in range(max_steps // batch + 1):
        for _ in range(batch):
            page.keyboard.press("Tab")
        seen: list[int] = page.evaluate("() => window.__kbOrder")
        order = []
        for index in seen:
            if index in order:
                return elements, order  # wrapped round to the top
            order.append(index)
    return elements, order


UNREACHABLE_JS = """
(reached) => Array.from(document.querySelectorAll('[data-kb]'))
  .filter((el) => !reached.includes(Number(el.dataset.kb)))
  .filter((el) => !(el.type === 'radio' && Array.from(document.querySelectorAll(
      'input[type=radio][name="' + el.name + '"]')).some((r) => reached.includes(Number(r.dataset.kb)))))
  .map((el) => el.outerHTML.slice(0, 160))
"""


def unreachable_by_keyboard(page: Any) -> list[str]:
    """Visible interactive elements that Tab never reaches (radios count once per group)."""
    _, order = tab_walk(page)
    result: list[str] = page.evaluate(UNREACHABLE_JS, order)
    return result


# Every console page (CONSOLE.md's URL layout), by who sees it; {placeholders} are filled
# from the `ids` fixture with real rows of the demo data.
SIGNED_OUT = ["/console/signin", "/console/signup"]
USER = [
    "/console/",
    "/console/tokens",
    "/console/tokens/new",
    "/console/tokens/{token_id}",
    "/console/usage",
    "/console/pricing",
    "/console/password",
    "/console/playground",
]
ADMIN = [
    "/console/admin/",
    "/console/admin/users",
    "/console/admin/users/{user_name}",
    "/console/admin/tokens",
    "/console/admin/channels",
    "/console/admin/channels/{channel_name}",
    "/console/admin/catalog",
    "/console/admin/usage",
]


def page_cases() -> list[Any]:
    import pytest

    cases = [
        pytest.param(role, path, id=f"{role}:{path}")
        for role, paths in (("anon", SIGNED_OUT), ("user", USER), ("admin", ADMIN))
        for path in paths
    ]
    # The admin sees the user pages too, with the admin nav: the richest header, checked once.
    cases.append(pytest.param("admin", "/console/", id="admin:/console/ (home with the admin nav)"))
    return cases


# Elements that stick out past the right edge of the viewport (WCAG 1.4.10 reflow: at 375 px a
# page must not scroll sideways), ignoring those inside their own scrolling box (a natural-size
# image or a code block may scroll within its frame). Innermost offenders only.
OVERFLOW_JS = """
() => {
  const w = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (/(auto|scroll|hidden|clip)/.test(getComputedStyle(p).overflowX)) return true;
    }
    return false;
  };
  // A box past the edge, or text running out of its box (a long unbreakable word).
  const out = Array.from(document.body.querySelectorAll('*')).filter((el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || scrolls(el)) return false;
    if (r.right > w + 1) return true;
    return getComputedStyle(el).overflowX === 'visible' && el.scrollWidth > el.clientWidth + 1
      && r.left + el.scrollWidth > w + 1;
  });
  return out.filter((el) => !out.some((o) => o !== el && el.contains(o)))
    .map((el) => el.outerHTML.slice(0, 200));
}
"""


def sideways_overflow(page: Any, width: int = 375) -> list[str]:
    """What makes the page wider than `width` px (the viewport is put back afterwards)."""
    before = page.viewport_size
    page.set_viewport_size({"width": width, "height": before["height"] if before else 900})
    try:
        result: list[str] = page.evaluate(OVERFLOW_JS)
        if not result and page.evaluate("() => document.documentElement.scrollWidth") > width:
            result = ["(the document is wider than the viewport)"]
        return result
    finally:
        if before:
            page.set_viewport_size(before)
