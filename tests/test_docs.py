"""The README is the front door (at most ~150 lines) and docs/ holds the reference: every relative
link and image in them resolves to a file of the repository, and every #anchor to a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks are not links
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]  # http:, mailto: are not checked here


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert {p.name for p in PAGES} >= {"README.md", "cli.md", "extending.md", "results.md", "reliability.md", "architecture.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    dead = []
    for link in links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            dead.append(link)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(link)
    assert dead == []


def test_the_check_finds_a_dead_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](missing.md) [bad anchor](#nowhere)\n```\n[in code](nothing.md)\n```\n")
    found = [link for link in links(page) if not (page.parent / link.partition("#")[0]).exists()
             or link.partition("#")[2] not in anchors(page)]
    assert found == ["missing.md", "#nowhere"]
