"""The documentation stays true to the code:

- docs/configuration.md and docs/metrics.md are what scripts/gendocs.py (`make docs`) writes from
  audit_guard/config.py and audit_guard/telemetry.py today (hand-copied tables drifted: a metric
  went missing from the README's);
- every setting has a description (the generated page's "meaning" column);
- every relative link in README.md and docs/*.md points at a file that exists, and at a heading
  that exists when it names one;
- README.md stays the front door: at most 200 lines, the two commands, the whole flag vocabulary.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

from audit_guard import flags
from audit_guard.config import Settings
from audit_guard.telemetry import INSTRUMENTS

REPO = Path(__file__).resolve().parents[3]
DOCS = REPO / "docs"
README = REPO / "README.md"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]


def load_gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", REPO / "scripts" / "gendocs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENDOCS = load_gendocs()


# ------------------------------------------------------------------------------ generated pages


@pytest.mark.parametrize("name", sorted(GENDOCS.PAGES))
def test_generated_page_is_up_to_date(name: str) -> None:
    page = DOCS / name
    assert page.is_file(), f"{page.relative_to(REPO)} is missing: run `make docs`"
    expected = GENDOCS.PAGES[name]()
    assert page.read_text(encoding="utf-8") == expected, (
        f"{page.relative_to(REPO)} differs from what scripts/gendocs.py generates from the code: "
        "run `make docs` and commit the result (never edit the page by hand)")


def test_gendocs_check_reports_drift_and_make_docs_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(GENDOCS, "DOCS", tmp_path)
    monkeypatch.setattr(GENDOCS, "REPO", tmp_path.parent)
    assert GENDOCS.main(["--check"]) == 1  # no pages at all
    assert GENDOCS.main([]) == 0
    assert GENDOCS.main(["--check"]) == 0
    stale = tmp_path / "metrics.md"
    stale.write_text(stale.read_text().replace("| `audit_rule_matches_total` |", "| `x` |"))
    assert GENDOCS.main(["--check"]) == 1
    assert "metrics.md" in capsys.readouterr().err


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        for sub in candidates:
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                found += _models(sub)
    return found


def test_every_setting_is_described() -> None:
    undescribed = []
    for model in _models(Settings):
        assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue  # a section: its docstring describes it
            if not (field.description or "").strip():
                undescribed.append(f"{model.__name__}.{name}")
    assert not undescribed, f"give these fields a Field(description=...): {undescribed}"


def test_generated_pages_name_every_key_env_and_metric() -> None:
    config = GENDOCS.configuration_page()
    for env in ("AUDIT_GUARD_RECONCILE__WINDOW_S", "AUDIT_GUARD_EXPORTER__PERMANENT_CODES",
                "AUDIT_GUARD_NAIVE_TIMEZONE", "AUDIT_GUARD_DEADLETTER__MAX_BYTES"):
        assert f"`{env}`" in config
    assert "| `url` | string | required |" in config  # reconcile.counter_targets items
    metrics = GENDOCS.metrics_page()
    for name in INSTRUMENTS:
        assert f"| `{name}` |" in metrics
    assert "| `audit_rule_matches_total` | counter | `{record}` | `rule`, `severity` |" in metrics


# ------------------------------------------------------------------------------------- links


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    dashes, repeats suffixed -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", _without_code_blocks(markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)


def relative_links(markdown: str) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", _without_code_blocks(markdown))
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


def test_github_anchors_follow_githubs_rules() -> None:
    page = "# A `b` c\n## Completeness: missing records, nginx's counters\n## A b c\n```\n# no\n```"
    assert github_anchors(page) == {
        "a-b-c", "completeness-missing-records-nginxs-counters", "a-b-c-1"}
    assert relative_links("[x](docs/a.md#b) [y](https://e.org) `[z](no.md)`") == ["docs/a.md#b"]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(
                target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


# ------------------------------------------------------------------------------------ README


def test_readme_is_the_front_door() -> None:
    readme = README.read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md is the front door: move detail to docs/"
    for command in ("make demo", "make test"):
        assert command in readme
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_readme_flag_table_is_the_whole_vocabulary() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split("\n## What gets flagged\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([^`]+)` \|", section, re.M))
    vocabulary = {flags.truncated(r) for r in flags.TRUNCATION_REASONS} | {
        flags.DELAYED, flags.DUPLICATE, flags.MALFORMED, flags.MISSING_RECORD, flags.LATE_RECORD,
        flags.missing_field("<name>"), flags.invalid_field("<name>"), flags.rule("<name>"),
        flags.truncated_attribute("<key>"),
    }
    assert rows == vocabulary, {"not in README": vocabulary - rows, "not a flag": rows - vocabulary}
