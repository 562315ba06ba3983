"""The tier rule holds itself up: a fast-tier test that starts a Python process fails with the fix."""

import multiprocessing
import subprocess
import sys

import pytest


def test_a_python_process_fails_a_fast_tier_test():
    for start in (lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
                  lambda: subprocess.run("python3 -c pass", shell=True, check=True),
                  lambda: multiprocessing.get_context("spawn").Process(target=print).start()):
        with pytest.raises(pytest.fail.Exception, match="starts a Python process .* mark the test @pytest.mark.slow"):
            start()
    assert subprocess.run(["true"]).returncode == 0  # other programs (git, wandb's service) stay allowed
