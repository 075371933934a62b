#!/usr/bin/env bash
# Lint and types (the README's "Lint and types", and .ci/run before the tests): ruff's lint and
# format check over the repository, mypy (strict) over collector/, tests/ and bench/ (the `files` of
# [tool.mypy] in pyproject.toml). The tools are in the test extra that scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0  # all three run, so one pass reports every finding
python3 -m ruff check . || status=1
python3 -m ruff format --check . || status=1
python3 -m mypy || status=1
exit "$status"
