"""The documentation points at things that exist: README.md and docs/*.md.

- every relative Markdown link resolves to a file (or folder) of the repository, and a link's
  `#anchor` names a heading of its target (GitHub's slugs);
- every test the docs cite is defined: `tests/x/test_y.py::test_name` in that file, a bare
  `test_name` (`test_x[...]` without its parameters, `test_x_*` as a prefix) under tests/ or
  experiments/;
- every repository path the docs quote (`omni_jax/...`, `configs/...`, `experiments/...`,
  `convert/...`, `tests/...`, `docs/...`, in inline code or code blocks) exists;
- no page sends the reader to a file they do not have (the project's internal spec).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
PATH = re.compile(r"(?<![\w./-])((?:omni_jax|configs|experiments|convert|tests|docs)/[\w./*-]*)")
TEST_NAME = re.compile(r"^(?:(tests/[\w/]+\.py)::)?(test_\w+?)(\*)?(?:\[.*\])?$")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(text: str) -> str:
    """The page without its code blocks and inline code (where links are not links)."""
    return INLINE.sub(" ", FENCE.sub(" ", text))


def code_spans(text: str) -> list[str]:
    """The contents of inline code spans (outside code blocks)."""
    return [m.group(2).strip() for m in INLINE.finditer(FENCE.sub(" ", text))]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, links reduced to their text,
    punctuation (but hyphens and underscores) dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, counts = set(), {}
    for match in HEADING.finditer(FENCE.sub(" ", page.read_text())):
        slug = github_slug(match.group(2))
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def is_defined(name: str, prefix: bool, file: str | None, definitions: dict[str, set[str]]) -> bool:
    files = [file] if file else list(definitions)
    return any(any(d.startswith(name) if prefix else d == name for d in definitions.get(f, ())) for f in files)


@pytest.fixture(scope="module")
def definitions() -> dict[str, set[str]]:
    """{file relative to the root: the test functions it defines} under tests/ and experiments/."""
    found = {}
    for folder in ("tests", "experiments"):
        for path in (ROOT / folder).rglob("*.py"):
            found[str(path.relative_to(ROOT))] = set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)\s*\(",
                                                                path.read_text(), re.M))
    return found


def test_there_are_pages_to_check():
    assert (ROOT / "README.md").exists() and len(PAGES) > 1, PAGES


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in (resolved, *resolved.parents):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (resolved.is_dir() or resolved.suffix != ".md"):
            problems.append(f"{target}: an anchor into something that is not a Markdown page")
        elif anchor and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)} "
                            f"(has: {sorted(anchors(resolved))})")
    assert not problems, f"{page_id(page)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_cited_tests_exist(page, definitions):
    problems = []
    for span in code_spans(page.read_text()):
        match = TEST_NAME.match(span)
        if not match:
            continue
        file, name, star = match.groups()
        if file and file not in definitions:
            problems.append(f"{span}: no file {file}")
        elif not is_defined(name, bool(star), file, definitions):
            problems.append(f"{span}: no `def {name}{'…' if star else ''}` in {file or 'tests/ or experiments/'}")
    assert not problems, f"{page_id(page)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_quoted_repository_paths_exist(page):
    text = page.read_text()
    quoted = code_spans(text) + [block.group(0) for block in FENCE.finditer(text)]
    problems = set()
    for chunk in quoted:
        for path in PATH.findall(chunk):
            path = path.rstrip(".")
            path = path.split("::")[0]
            if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                problems.add(path)
    assert not problems, f"{page_id(page)} quotes paths that do not exist: {sorted(problems)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_sends_readers_to_files_they_do_not_have(page):
    found = re.findall(r".{0,40}(?:SPEC(?:\.md| ?§)|\.\./shared|/work/).{0,40}", page.read_text())
    assert not found, (
        f"{page_id(page)} refers to the project's internal spec or to paths outside the repository: {found}"
    )


def test_slugs_are_githubs():
    assert github_slug("What `make demo` shows") == "what-make-demo-shows"
    assert github_slug("Qwen2 (`experiments/bench_qwen2.py`)") == "qwen2-experimentsbench_qwen2py"
    assert github_slug("What fits (`omni-jax plan`)") == "what-fits-omni-jax-plan"
    assert github_slug("Known XLA:CPU hang") == "known-xlacpu-hang"
