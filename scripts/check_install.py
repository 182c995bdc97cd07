"""Is this project installed in the running Python, with the extras asked for?

    .venv/bin/python scripts/check_install.py worker dev   # exit 0: yes; 1: says what is not

``./run`` asks this before each start, so that ``pip install`` only runs when something is
missing (a fresh clone, a new dependency in pyproject.toml, a new console script). Standard
library only, plus the ``packaging`` that pip carries: it runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def missing(extras: list[str], pyproject: Path = ROOT / "pyproject.toml",
            bin_dir: Path = Path(sys.prefix) / "bin") -> list[str]:
    """What is not installed: the project, a console script, or a requirement (absent, or a
    version outside its specifier)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    try:
        if metadata.version(project["name"]) != project["version"]:
            return [f"{project['name']} {project['version']}"]
    except metadata.PackageNotFoundError:
        return [project["name"]]
    found = [f"the {name} command" for name in project.get("scripts", {})
             if not (bin_dir / name).exists()]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(line)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{line} (installed: {version})")
    return found


if __name__ == "__main__":
    absent = missing(sys.argv[1:])
    if absent:
        print("not installed: " + ", ".join(absent))
    sys.exit(1 if absent else 0)
