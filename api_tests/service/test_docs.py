"""The docs stay true to the code: generated tables are current, every route, problem code and
job error code is documented in its one home, the sample report is a whole current Report,
README.md stays a short front door, and every relative link leads somewhere."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from core.jobs.error_codes import JobErrorCode, ProblemCode
from core.jobs.public import JobLinks, JobPublic
from core.jobs.report import Report
from core.settings import Settings
from service.errors import ApiError
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
API = (DOCS / "api.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md"))]


def _generator(name: str) -> ModuleType:
    """docs/<name>.py, a script rather than a package module."""
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _between(text: str, start: str, end: str) -> list[str]:
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n").splitlines()


@pytest.mark.parametrize("name", ["settings_table", "spec_table"])
def test_the_generated_tables_are_current(name: str) -> None:
    table = _generator(name)
    on_page = _between(table.PAGE.read_text(), table.START, table.END)
    assert on_page == table.rows(), f"run: .venv/bin/python docs/{name}.py --write"


def test_every_setting_and_spec_field_has_a_row() -> None:
    """The control: the generators miss nothing (a field a walk skipped would pass the
    'current' test above)."""
    settings = "\n".join(_generator("settings_table").rows())
    assert [n for n in Settings.model_fields if f"| `PRUNER_{n.upper()}` |" not in settings] == []
    spec = "\n".join(_generator("spec_table").rows())
    for path in ("pruning.method", "pruning.nm", "pruning.schedule.kind",
                 "pruning.schedule.every_steps", "pruning.schedule.rounds",
                 "finetune.distill.temperature", "analysis.sensitivity.amounts",
                 "search.per_layer", "limits.timeout_s", "notify.url"):
        assert f"| `{path}` |" in spec, path
    assert '`"semi_structured"`' in spec


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table under ``header`` (split on unescaped pipes)."""
    lines = text.split(header, 1)[1].strip("\n").split("\n\n", 1)[0].splitlines()[1:]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_every_problem_code_is_in_api_md_with_its_status() -> None:
    documented = {row[0].strip("`"): int(row[1])
                  for row in _table_rows(API, "| `code` | Status | When |")}
    statuses = {cls.code.value: cls.status for cls in _subclasses(ApiError)}
    assert set(documented) == {c.value for c in ProblemCode}
    assert {c: s for c, s in documented.items() if c in statuses} == statuses


def _subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    return [s for sub in cls.__subclasses__() for s in (sub, *_subclasses(sub))]


def test_every_job_error_code_has_a_row_in_api_md() -> None:
    documented = [row[0].strip("`") for row in _table_rows(API, "| `code` | When |")]
    assert sorted(documented) == sorted(c.value for c in JobErrorCode)


def test_every_field_of_the_job_is_in_api_md() -> None:
    section = API.split("### The job", 1)[1].split("\n#", 1)[0]
    assert [f for f in JobPublic.model_fields if f"`{f}`" not in section] == []
    assert [f for f in JobLinks.model_fields if f"`{f}`" not in section] == []


def test_the_endpoint_table_is_the_openapi_document(tmp_path: Path) -> None:
    """Every route the API documents in OpenAPI has a row, and every row is a route."""
    openapi: dict[str, Any] = create_app(Settings(data_dir=tmp_path)).openapi()
    served = {(method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
              for path, operations in openapi["paths"].items() for method in operations}
    cells = " ".join(row[0] for row in _table_rows(API, "| Method and path | Answers | Errors |"))
    documented = {(method, re.sub(r"\{[^}]*\}", "{}", path)) for method, path in
                  re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", cells)}
    assert documented == served


def _keys(value: object, path: str = "") -> set[str]:
    """Every key path in a JSON value (list items share their list's path)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{path}.{k}"} | _keys(v, f"{path}.{k}")}
    if isinstance(value, list):
        return {p for item in value for p in _keys(item, f"{path}[]")}
    return set()


def _json_after(text: str, heading: str) -> Any:
    return json.loads(text.split(heading, 1)[1].split("```json", 1)[1].split("```", 1)[0])


SAMPLE = _json_after((DOCS / "engine.md").read_text(), "### A sample report")


def test_the_sample_report_is_a_whole_current_report() -> None:
    """The sample in docs/engine.md is a Report as the code writes it today: it validates,
    and it has exactly the fields a report has (none missing, none that no longer exist)."""
    report = Report.model_validate(SAMPLE)
    assert _keys(SAMPLE) == _keys(report.model_dump(mode="json"))


def _is_excerpt(part: Any, whole: Any) -> bool:
    """``part`` is ``whole`` with some object keys left out, every value it keeps unchanged."""
    if isinstance(part, dict) and isinstance(whole, dict):
        return all(k in whole and _is_excerpt(v, whole[k]) for k, v in part.items())
    return bool(part == whole)


def test_the_readme_report_is_an_excerpt_of_the_sample() -> None:
    excerpt = _json_after(README, "## What comes back")
    assert _is_excerpt(excerpt, SAMPLE)
    assert not _is_excerpt({"accuracy": {"delta_total": 0.5}}, SAMPLE)  # the check can fail
    assert len(excerpt) >= 3


def test_the_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= 200


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in _links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no heading)")
    assert broken == []


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A title (`x.y`)\n[ok](#a-title-xy) [bad](#nope) [gone](missing.md)\n")
    assert _anchors(page) == {"a-title-xy"}
    assert _links(page) == ["#a-title-xy", "#nope", "missing.md"]
