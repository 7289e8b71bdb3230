"""A short soak (bench/soak.py runs the long one): moving MLflow, an MLflow restart, a flapping
endpoint and concurrent scrapes; nothing fails, nothing overlaps, every run counted once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from soak import soak  # noqa: E402


def test_short_soak(tmp_path):
    result = soak(tmp_path, duration=20, scrapers=2, max_scrapes=5000)
    assert result["exit_code"] == 0
    assert result["scrapes_failed"] == 0 and result["scrapes_ok"] > 100
    assert result["overlapping_polls"] == 0
    assert result["runs_finished"] > 20
    assert result["runs_counted"] == result["runs_finished"]  # each finished run exactly once
    assert result["cost_exported"] == pytest.approx(result["cost_expected"], abs=1e-9)
    assert result["rss_mib_late"] < result["rss_mib_early"] + 30  # flat, give or take the allocator
