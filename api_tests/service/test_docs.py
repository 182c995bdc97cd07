"""The README stays complete: every setting, problem code and job error code is documented."""

from __future__ import annotations

from pathlib import Path

from core.errors import JobErrorCode, ProblemCode
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
