"""Static checks that catch real bugs: undefined names, unused imports, syntax errors."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_ruff_pyflakes_clean():
    proc = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "--select", "F,E9", "exporter", "tests", "bench",
                           "alerts", "dashboards"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
