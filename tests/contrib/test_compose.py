"""docker-compose.yml describes a real deployment and stays valid.

No Docker engine runs here; Debian's docker-compose (v1) validates and normalises a compose
file without one, so .ci/run installs that binary and the test requires it.
"""

from __future__ import annotations

import shutil
import subprocess

from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT
COMPOSE = shutil.which("docker-compose")


def test_compose_file_is_valid_and_has_the_whole_deployment() -> None:
    assert COMPOSE is not None, "docker-compose is not installed: apt-get install docker-compose (.ci/run does)"
    check = subprocess.run([COMPOSE, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    services = subprocess.run(
        [COMPOSE, "config", "--services"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert {"postgres", "redis", "beat", "flower"} <= set(services)
    assert sum(1 for s in services if s.startswith("worker")) >= 2
