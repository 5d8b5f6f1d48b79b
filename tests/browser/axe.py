"""Accessibility checks in the browser tests with axe-core (Deque, MPL-2.0), vendored in tests/data/axe-core/ so that
no test downloads anything. `violations(page)` injects axe into the page as it stands and runs the WCAG 2.1 A and AA
rules (about 0.1-0.3 s a page); `assert_accessible(page, where)` fails with each violation's rule id, impact, help text and the selectors
of the elements that break it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

AXE_JS = Path(__file__).resolve().parents[1] / "data" / "axe-core" / "axe.min.js"
# WCAG 2.0 and 2.1, levels A and AA (axe's tag names: https://github.com/dequelabs/axe-core/blob/develop/doc/API.md)
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


# axe checks markup, and the markup of a page does not depend on the store behind it: each test that runs on both
# backends renders the same templates from the same data twice. So axe runs on the SQLite pass only
# (tests/browser/conftest.py clears this while a PostgreSQL-parametrised test runs); the PostgreSQL pass still loads every
# page and makes every other check. Without PostgreSQL configured, every test runs axe.
RUN = {"axe": True}


@cache
def _source() -> str:
    return AXE_JS.read_text(encoding="utf-8")


def violations(page) -> list[dict]:
    """axe's WCAG 2.1 A/AA violations of the page in its current state, and the ARIA results axe could not decide
    ("needs review": an aria-label on an element whose role does not allow one, a reference to an id that is not on
    the page), which a screen reader gets wrong all the same. The script is evaluated through the browser's
    debugging protocol, so the app's Content-Security-Policy, which forbids inline scripts, stays on. On the
    PostgreSQL pass of a test that runs on both backends it returns [] (see RUN)."""
    if not RUN["axe"]:
        return []
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(f"() => {{ {_source()}\n }}")
    return page.evaluate(
        """async (tags) => {
            const r = await window.axe.run(document, {runOnly: {type: 'tag', values: tags}});
            const show = (v, review) => ({id: v.id + (review ? ' (needs review)' : ''), impact: v.impact, help: v.help,
                                          targets: v.nodes.map(n => n.target.join(' ')),
                                          summary: v.nodes.length ? v.nodes[0].failureSummary : ''});
            return r.violations.map(v => show(v, false))
                .concat(r.incomplete.filter(v => v.id.startsWith('aria-')).map(v => show(v, true)));
        }""", TAGS)


def describe(found: list[dict], where: str) -> str:
    lines = []
    for v in found:
        targets = ", ".join(v["targets"][:5]) + (f" (+{len(v['targets']) - 5} more)" if len(v["targets"]) > 5 else "")
        lines.append(f"{where}: {v['id']} [{v['impact']}] {v['help']} -> {targets}")
    return "\n".join(lines)


def assert_accessible(page, where: str | None = None) -> None:
    found = violations(page)
    assert not found, describe(found, where or page.url)
