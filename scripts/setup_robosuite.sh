#!/usr/bin/env bash
# Creates .venv-robosuite in the repository root: the toolkit plus robosuite 1.5.2 for the
# immix/RobosuiteLift-v0 task (docs/tasks.md, "robosuite Lift").
#
# A separate environment because robosuite 1.5.2 runs only with mujoco 3.3.x, while the main .venv
# resolves mujoco 4 (which robosuite's joint helpers reject). The toolkit itself accepts any mujoco >= 3.1.
# Idempotent: a second call returns in about a second.
#   bash scripts/setup_robosuite.sh && source .venv-robosuite/bin/activate
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
# torch pinned for the set-up only: a CPU wheel where one is available locally (an unpinned torch may
# resolve to a multi-GB CUDA build). Override with TORCH_SPEC="torch==X" on other machines.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV=.venv-robosuite

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_robosuite] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
VPY="$ROOT/$VENV/bin/python"
stamp="$VENV/.installed-$(cat pyproject.toml | "$VPY" -c 'import hashlib,sys;print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
  echo "[setup_robosuite] installing torch, mujoco 3.3.7, robosuite 1.5.2 and the toolkit (a few minutes)" >&2
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[robosuite,robomimic,dev]"
  "$VPY" -c "import mujoco, robosuite; assert mujoco.__version__.startswith('3.3.'), mujoco.__version__"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# Headless rendering (agentview videos) needs an EGL library; scripts/setup.sh installs Debian's.
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PATH="$ROOT/$VENV/bin:$PATH"
