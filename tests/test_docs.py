"""README.md is a short guide and docs/ holds the rest: every relative link resolves, every generated section lives
in exactly one page (the one its writer writes), and no page cites notes that are not in the repository."""

import importlib
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "DATA.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
MARKER = re.compile(r"<!-- ([\w-]+):(begin|end) -->")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


@pytest.fixture(scope="module")
def updater():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield importlib.import_module("update_readme")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code: where a link is a link."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE.sub(lambda m: m.group(0)[1:-1], heading.strip().lower())
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def test_the_readme_is_a_short_guide():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    for heading in ("## Install", "## Quick start", "## Your own model and data", "## Key result", "## Commands",
                    "## Python API", "## Documentation"):
        assert heading in lines


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_every_generated_section_lives_once_in_its_writers_page(updater):
    texts = {page: page.read_text(encoding="utf-8") for page in PAGES}
    registered = {name: updater.page(name, ROOT) for name in [*updater.SECTIONS, *updater.WRITTEN_ELSEWHERE]}
    for name, page in registered.items():
        begin, end = updater.markers(name)
        holders = [p.relative_to(ROOT) for p, text in texts.items() for _ in range(text.count(begin))]
        assert holders == [page.relative_to(ROOT)], f"{begin} is in {holders}, expected once in {page}"
        assert texts[page].count(end) == 1 and texts[page].index(begin) < texts[page].index(end)
    found = {m.group(1) for text in texts.values() for m in MARKER.finditer(prose(text))}
    assert found <= set(registered), f"sections no script writes: {sorted(found - set(registered))}"


def test_scripts_that_write_a_section_name_its_marker_and_page(updater):
    for name, (page, writer) in updater.WRITTEN_ELSEWHERE.items():
        source = (ROOT / writer).read_text(encoding="utf-8")
        assert f"<!-- {name}:begin -->" in source, f"{writer} does not write section {name}"
        assert page in source, f"{writer} does not say it writes {page}"


def test_no_page_cites_notes_outside_the_repository():
    files = [*PAGES, *(ROOT / "romer").rglob("*.py"), *(ROOT / "romer").rglob("*.yaml"),
             *(ROOT / "scripts").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    cited = [f"{f.relative_to(ROOT)}: {note}" for f in files for note in ("FACTS.md", "ROMER.md")
             if note in f.read_text(encoding="utf-8")]
    assert not cited, cited


def test_readmes_config_is_the_shipped_example_and_loads(tmp_path):
    """README's YAML is examples/my-moe.yaml (after its comment header), and it is a valid config once its paths
    point at files that exist."""
    from romer.experiment.config_file import load_config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    example = (ROOT / "examples" / "my-moe.yaml").read_text(encoding="utf-8")
    assert example.endswith(block)
    for name in ("eval.txt", "calibration.txt", "ARC-Easy-Test.jsonl"):
        (tmp_path / name).write_text("one line of text\n")
    local = example.replace("/path/to/", f"{tmp_path}/").replace(f"{tmp_path}/my-moe", "olmoe-tiny")
    config_path = tmp_path / "my-moe.yaml"
    config_path.write_text(local)
    config = load_config(str(config_path))
    assert config.models == ["olmoe-tiny"] and config.eval.dataset == "text"
    assert config.calibration.data_path.endswith("calibration.txt")


def test_every_generated_section_matches_the_committed_results(updater):
    """The numbers in README and docs are what the committed results render to, byte for byte: a number edited by
    hand, or results committed without `scripts/update_readme.py`, fails here."""
    for name, section in updater.SECTIONS.items():
        text = (ROOT / section.page).read_text(encoding="utf-8")
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        committed = text.split(begin)[1].split(end)[0].strip("\n")
        assert committed == section.render(ROOT).strip("\n"), f"{section.page}: section {name} is stale"
