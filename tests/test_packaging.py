"""pyproject.toml declares what the code uses: no dependency that nothing imports."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO

IMPORT_NAMES = {"pyyaml": "yaml"}  # distributions whose import name differs


def test_every_runtime_dependency_is_imported_somewhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sources = "\n".join(path.read_text(encoding="utf-8") for folder in ("textvae", "scripts", "tests")
                        for path in (REPO / folder).rglob("*.py"))
    unused = []
    for requirement in project["dependencies"]:
        distribution = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        module = IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(distribution)
    assert unused == []
