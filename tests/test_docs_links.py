"""The README and docs/ link to each other by relative paths and anchors: each must resolve."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(text):
    """The text outside fenced code blocks, where links are links."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", _prose(page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _links():
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text())):
            if not re.match(r"[a-z]+://", target):
                yield pytest.param(page, target, id=f"{page.name}->{target}")


@pytest.mark.parametrize("page,target", list(_links()))
def test_every_relative_link_and_anchor_resolves(page, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.name} links to {path}, which does not exist"
    if anchor and linked.suffix == ".md":
        assert anchor in _anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"


def test_the_readme_stays_a_one_minute_read():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the detail into docs/"
