#!/usr/bin/env bash
# Creates .venv in the repository root and installs the toolkit with everything its defaults need.
# Idempotent: a second call returns in about a second. Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
# torch is pinned for the set-up only (a CPU wheel where one is available locally); the package itself
# accepts any torch >= 2.1. Override with TORCH_SPEC="torch==X" on other machines.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
stamp=".venv/.installed-$(cat pyproject.toml | "$VPY" -c 'import hashlib,sys;print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing the toolkit into .venv (first run takes a minute or two)" >&2
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[all]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Headless MuJoCo rendering needs an EGL or OSMesa library. Install Debian's when missing and possible;
# otherwise rendering (videos) is unavailable and the tests that need it skip with the reason.
if ! ldconfig -p 2>/dev/null | grep -qE 'libEGL\.so|libOSMesa\.so'; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing headless GL libraries for rendering" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 >/dev/null) \
      || echo "[setup] warning: could not install GL libraries; rendering disabled" >&2
  else
    echo "[setup] warning: no EGL/OSMesa library found; rendering (videos) disabled" >&2
  fi
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PATH="$ROOT/.venv/bin:$PATH"
