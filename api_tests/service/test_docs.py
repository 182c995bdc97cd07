"""docs/api.md stays complete: every setting and every problem code is documented."""

from __future__ import annotations

from pathlib import Path

from core.errors import ProblemCode
from core.settings import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = DOC.split("<!-- CONFIG -->", 1)[1].split("<!-- /CONFIG -->", 1)[0]
    missing = [n for n in Settings.model_fields if f"| `PRUNER_{n.upper()}` |" not in table]
    assert not missing, f"regenerate with: .venv/bin/python docs/settings_table.py ({missing})"


def test_every_problem_code_is_documented() -> None:
    assert [c.value for c in ProblemCode if f"| `{c.value}` |" not in DOC] == []
