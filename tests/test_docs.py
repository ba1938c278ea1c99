"""The documentation users read: generated tables current, links resolving, a short README,
results with repository-relative commands, and no reference to documents users do not have."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

TEXT_SUFFIXES = {".md", ".py", ".sh", ".yaml", ".toml", ".json", ".txt", ".cfg"}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_the_results_tables_are_generated_from_the_current_json():
    result = run_script("results_tables.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_relative_link_resolves_and_every_docs_page_is_linked_from_the_readme():
    result = run_script("check_links.py")
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in readme, page.name


def test_the_readme_is_short_and_keeps_the_ci_test_command():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert any(re.match(r'^pip install -e "\.\[dev\]" && pytest', line) for line in lines)


def test_results_record_repository_relative_commands():
    for path in sorted((REPO / "docs" / "results").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data if isinstance(data, list) else [data]:
            assert entry.get("command"), (path.name, entry.get("name"))
            assert "commit" in entry and entry.get("hardware"), (path.name, entry.get("name"))
        assert not re.search(r"/(work|tmp|root|home)/", path.read_text(encoding="utf-8")), path.name


def test_no_file_cites_the_developers_spec():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    files = [REPO / name for name in tracked if (REPO / name).suffix in TEXT_SUFFIXES and (REPO / name).is_file()]
    files += [path for folder in ("textvae", "tests", "docs", "scripts") for path in (REPO / folder).rglob("*")
              if path.suffix in TEXT_SUFFIXES]
    citing = sorted({str(path.relative_to(REPO)) for path in files
                     if "SPEC \u00a7" in path.read_text(encoding="utf-8", errors="replace")})
    assert citing == []
