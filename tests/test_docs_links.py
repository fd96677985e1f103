"""Every relative link in the project's Markdown resolves.

For README.md, docs/*.md, benchmarks/README.md and patches/README.md: each
relative link or image `[text](target)` / `![alt](target)` (and each
reference definition `[ref]: target`) must name a file or folder that exists,
relative to the Markdown file's folder and inside the repository; a
`#anchor` (alone, or after a `.md` target) must equal the GitHub-style slug
of a heading of the target file. Links inside fenced code blocks and inline
code are not links; `http(s):`, `mailto:` and other schemes are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})(?:\s+(.*?))?\s*$")
SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HEADING_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def markdown_files() -> list[Path]:
    docs = sorted((REPO / "docs").glob("*.md"))
    files = [REPO / "README.md", *docs, REPO / "benchmarks" / "README.md"]
    files.append(REPO / "patches" / "README.md")
    return files


def outside_fences(text: str) -> Iterator[str]:
    """The lines of `text` that are not inside a fenced code block."""
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield line
        elif (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line.strip()[len(match.group(1)) :].strip()
        ):
            fence = None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before duplicate suffixes)."""
    text = HEADING_LINK.sub(r"\1", heading)
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    found: list[str] = []
    previous = ""
    for line in outside_fences(text):
        atx = ATX_HEADING.match(line)
        if atx:
            title = re.sub(r"\s+#+$", "", atx.group(2) or "")
            found.append(title)
        elif (
            SETEXT_UNDERLINE.match(line)
            and previous.strip()
            and not previous.lstrip().startswith(("|", "-", "*", "+", ">"))
            and not ATX_HEADING.match(previous)
        ):
            found.append(previous.strip())
        previous = line
    return found


def anchors(text: str) -> set[str]:
    """Every anchor GitHub gives the headings of `text` (`x`, `x-1`, `x-2`, ...)."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_targets(text: str) -> list[str]:
    prose = "\n".join(outside_fences(text))
    prose = CODE_SPAN.sub("", prose)
    return INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose)


def broken_links(md: Path, repo: Path = REPO) -> list[str]:
    """Each relative link of `md` that does not resolve, with the reason."""
    problems: list[str] = []
    for target in link_targets(md.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        dest = (md.parent / path_part).resolve() if path_part else md.resolve()
        if not dest.is_relative_to(repo.resolve()):
            problems.append(f"{target}: outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(repo.resolve())}")
            continue
        if (
            anchor
            and dest.suffix == ".md"
            and unquote(anchor) not in anchors(dest.read_text(encoding="utf-8"))
        ):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return problems


def test_the_docs_exist() -> None:
    for md in markdown_files():
        assert md.is_file(), md
    assert len(markdown_files()) > 4, "docs/ holds no Markdown"


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md: Path) -> None:
    problems = broken_links(md)
    assert not problems, f"{md.relative_to(REPO)}: broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Conversion: AR → SDAR", "conversion-ar--sdar"),
        ("Offline: `generate(...)`", "offline-generate"),
        (
            "Self-check (run this first on new hardware)",
            "self-check-run-this-first-on-new-hardware",
        ),
        (
            "Multi-node recipe: `sdar-30b-moe` (not run here: no GPUs, one node)",
            "multi-node-recipe-sdar-30b-moe-not-run-here-no-gpus-one-node",
        ),
        ("The `vllm_sdar.convert` [recipe](x.md)", "the-vllm_sdarconvert-recipe"),
    ],
)
def test_slug_is_githubs(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Title\n\n## Part\n\n## Part\n\nSetext\n---\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#part-1) [ok](other.md#setext) [ok](#page) ![ok](../img.png)\n"
        "[ok](https://example.com/x.md#nowhere) [ok](mailto:a@b.c) `[code](nowhere.md)`\n"
        "```markdown\n[fenced](nowhere.md)\n```\n"
        "[bad file](missing.md) [bad anchor](other.md#part-2) ![bad image](img.png)\n"
        "[bad local](#nothing) [outside](../../x.md)\n"
        "[ref]: gone.md\n"
    )
    problems = broken_links(page, repo=tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        "missing.md",
        "other.md#part-2",
        "img.png",
        "#nothing",
        "../../x.md",
        "gone.md",
    ], problems
