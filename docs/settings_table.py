"""The configuration table of docs/configuration.md, generated from ``core.settings.Settings``.

    .venv/bin/python docs/settings_table.py           # print it
    .venv/bin/python docs/settings_table.py --write   # rewrite it between the page's CONFIG markers
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from docs.tables import main, write_between  # noqa: E402

START, END = "<!-- CONFIG -->", "<!-- /CONFIG -->"
PAGE = ROOT / "docs" / "configuration.md"


def rows() -> list[str]:
    out = ["| Setting | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = str(default) if default not in ("", None) else "(empty)"
        meaning = (field.description or "").replace("|", "\\|")
        out.append(f"| `{name}` | `PRUNER_{name.upper()}` | `{shown}` | {meaning} |")
    return out


def write(page: Path = PAGE) -> None:
    write_between(page, START, END, rows())


if __name__ == "__main__":
    main(rows, write)
