"""The README and docs/ hold together: every relative link resolves, and CI still finds its test command.

A link resolves when its file exists and its `#anchor`, if any, is a heading of that file, slugged as
GitHub does (lowercase, punctuation dropped, spaces to '-', a repeated heading gets -1, -2, ...).
`.ci/run` extracts the first fenced block after `<!-- ci:test-command -->` with awk and runs it; the same
awk program, read from `.ci/run`, must still find a command there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

DOCS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link and code markup dropped, lowercase, punctuation out, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, '_', '-' and spaces
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"``[^`]*``|`[^`]*`", "", line)  # a link written inside inline code is not a link
        out.extend(LINK.findall(line))
    return out


def test_the_docs_are_there() -> None:
    names = {p.name for p in DOCS}
    assert {
        "README.md",
        "study-file.md",
        "train-config.md",
        "clusters.md",
        "benchmarks.md",
        "troubleshooting.md",
        "architecture.md",
    } <= names


def test_slug_follows_github() -> None:
    assert slug("Shared studies (PostgreSQL, several drivers)") == "shared-studies-postgresql-several-drivers"
    assert slug("`tpe`: running trials counted by their reports") == "tpe-running-trials-counted-by-their-reports"
    assert slug("bf16 on a CPU (`train.precision: auto`)") == "bf16-on-a-cpu-trainprecision-auto"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def _python_extract(readme: str, marker: str) -> str:
    """What .ci/run's awk does: the lines of the first fenced block after the marker line."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    out, started = [], False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            if started:
                break
            started = True
            continue
        if started:
            out.append(line)
    return "\n".join(out)


def test_the_readme_test_command_is_still_extractable() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- ci:test-command -->", "<!-- ci:main-command -->"):
        assert readme.count(marker) == 1, marker
    cmd = _python_extract(readme, "<!-- ci:test-command -->")
    assert cmd.startswith("python3 -m venv .venv") and "pip install -q torch==" in cmd
    assert 'pip install -q -e ".[dev]"' in cmd and "python -m pytest tests/unit tests/integration" in cmd
    assert "\n" not in cmd  # one line, as .ci/run echoes and runs it
    main_cmd = _python_extract(readme, "<!-- ci:main-command -->")
    assert main_cmd.endswith("sftune run studies/quickstart.yaml")

    # The very awk program .ci/run runs, read from it, finds the same command.
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    m = re.search(r"awk '([^']*)' README\.md", ci)
    assert m, ".ci/run no longer extracts the command with awk: update this test with it"
    if shutil.which("awk") is None:
        pytest.skip("no awk here to run .ci/run's program")
    got = subprocess.run(["awk", m.group(1), str(REPO / "README.md")], capture_output=True, text=True, check=True)
    assert got.stdout.rstrip("\n") == cmd


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_docs_page_says_what_it_is_for_and_links_back(doc: Path) -> None:
    paragraphs = [p for p in doc.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    assert paragraphs[0].startswith("# "), f"{doc.name}: no title"
    assert "](../README.md" in paragraphs[1], f"{doc.name}: its opening paragraph does not link back to the README"
