"""Print the configuration table of docs/api.md from ``core.settings.Settings``.

    .venv/bin/python docs/settings_table.py     # paste between the CONFIG markers
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import Settings  # noqa: E402


def rows() -> list[str]:
    out = ["| Setting | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = str(default) if default not in ("", None) else "(empty)"
        meaning = (field.description or "").replace("|", "\\|")
        if name == "log_level":
            meaning = meaning or "Log level: DEBUG, INFO, WARNING, ERROR."
        out.append(f"| `{name}` | `PRUNER_{name.upper()}` | `{shown}` | {meaning} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
