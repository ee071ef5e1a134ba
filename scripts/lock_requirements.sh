#!/usr/bin/env bash
# Regenerates requirements.lock, the Docker image's dependencies: the runtime
# dependencies of pyproject.toml ([project] dependencies, no extras) and their own
# dependencies, each pinned (==) with the sha256 of every file of the pinned version,
# resolved for the image's Python (the version in the Dockerfile's PYTHON_IMAGE) on
# Linux, whatever Python or OS this runs on.
#
# Usage: scripts/lock_requirements.sh [UV-PIP-COMPILE OPTIONS]
#   with no options, pins already in the lock are kept while they still satisfy
#   pyproject.toml; --upgrade moves every pin to the newest release,
#   --upgrade-package NAME only that one.
#
# Needs uv (python3 -m pip install uv): on PATH, in .venv/bin, or given as UV=/path/to/uv.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-}
if [ -z "$uv" ]; then
  if command -v uv >/dev/null 2>&1; then
    uv=uv
  elif [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
  else
    echo "uv not found: python3 -m pip install uv (or set UV=/path/to/uv)" >&2
    exit 1
  fi
fi

# ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm  ->  3.11.13
python_version=$(sed -n 's/^ARG PYTHON_IMAGE=python:\([0-9][0-9.]*\)-.*/\1/p' Dockerfile)
[ -n "$python_version" ] || {
  echo "no 'ARG PYTHON_IMAGE=python:X.Y.Z-...' in the Dockerfile" >&2
  exit 1
}

exec "$uv" pip compile pyproject.toml \
  --quiet \
  --no-config \
  --generate-hashes \
  --python-version "$python_version" \
  --python-platform linux \
  --custom-compile-command "scripts/lock_requirements.sh" \
  --output-file requirements.lock \
  "$@"
