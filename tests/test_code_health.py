"""Code health that review would otherwise have to catch: no dead imports or undefined names
(pyflakes) anywhere in the package, the scripts or the tests."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "pyflakes", "textvae", "scripts", "tests"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

