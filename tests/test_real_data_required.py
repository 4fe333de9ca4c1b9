"""CI cannot go green without the real data: real_data tests fail, not skip, under CI."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

REAL_DATA_TEST = "tests/pipeline/data/test_sources.py::test_truncated_file_is_named"


def _pytest(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ.update(CIFAR10_LOCAL=str(tmp_path / "missing"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", REAL_DATA_TEST],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_missing_data_fails_under_ci_and_skips_elsewhere(tmp_path):
    under_ci = _pytest(tmp_path, CI="true")
    assert under_ci.returncode == 1, under_ci.stdout
    assert "required here" in under_ci.stdout and "missing" in under_ci.stdout
    elsewhere = _pytest(tmp_path)
    assert elsewhere.returncode == 0 and "1 skipped" in elsewhere.stdout, elsewhere.stdout


def test_ci_script_refuses_to_run_without_the_data(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        env={**os.environ, "CIFAR10_LOCAL": str(tmp_path / "missing")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'missing'}" in result.stderr and "cifar-10-batches-bin" in result.stderr
