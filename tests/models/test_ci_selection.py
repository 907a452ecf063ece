"""The outside_ci marker (pyproject.toml): tests that take minutes on 2 CPU cores and repeat what a CI test already
covers are deselected by `make test` and CI, and run on request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_outside_ci_tests_are_left_out_by_default(tmp_path):
    """With the project's pytest settings (what `make test` and CI run), a test marked outside_ci is deselected;
    `-m outside_ci` runs it."""
    (tmp_path / "test_marks.py").write_text(
        "import pytest\n\ndef test_plain():\n    pass\n\n@pytest.mark.outside_ci\ndef test_long():\n    pass\n")
    repo = Path(__file__).resolve().parents[2]

    def collected(*extra: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              "-c", str(repo / "pyproject.toml"), "--rootdir", str(tmp_path), *extra,
                              str(tmp_path / "test_marks.py")], capture_output=True, text=True, cwd=tmp_path)
        return {line.split("::", 1)[1] for line in out.stdout.splitlines() if "::" in line}

    assert collected() == {"test_plain"}
    assert collected("-m", "outside_ci") == {"test_long"}
