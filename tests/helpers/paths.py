"""Where things are: the repository root (docs, README, docker-compose.yml) and the tests folder."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
