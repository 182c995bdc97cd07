"""The README stays complete: every setting, problem code and job error code is documented."""

from __future__ import annotations

from pathlib import Path

from core.jobs.error_codes import JobErrorCode, ProblemCode
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("<!-- CONFIG -->", 1)[1].split("<!-- /CONFIG -->", 1)[0]
    missing = [n for n in Settings.model_fields if f"| `PRUNER_{n.upper()}` |" not in table]
    assert not missing, f"run: .venv/bin/python docs/settings_table.py --write ({missing})"


def test_every_problem_code_is_in_the_readme() -> None:
    assert [c.value for c in ProblemCode if f"| `{c.value}` |" not in README] == []


def test_every_job_error_code_is_documented() -> None:
    assert [c.value for c in JobErrorCode if f"`{c.value}`" not in DOCS] == []


def _keys(value: object, path: str = "") -> set[str]:
    """Every key path in a JSON value (list items share their list's path)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{path}.{k}"} | _keys(v, f"{path}.{k}")}
    if isinstance(value, list):
        return {p for item in value for p in _keys(item, f"{path}[]")}
    return set()


def test_the_readme_sample_report_is_a_whole_current_report() -> None:
    """The sample is a Report as the code writes it today: it validates, and it has exactly
    the fields a report has (none missing, none that no longer exist)."""
    import json

    from core.jobs.report import Report

    section = README.split("## A sample report", 1)[1]
    sample = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    report = Report.model_validate(sample)
    assert _keys(sample) == _keys(report.model_dump(mode="json"))
