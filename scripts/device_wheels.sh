#!/usr/bin/env bash
# Gathers, on a machine with access to PyPI, the wheels that a GPU machine without network access needs to
# run the toolkit on top of its own PyTorch image: every runtime dependency of the toolkit (with the maze and
# pusht extras) that such an image does not already hold, at the versions installed in this checkout's
# .venv (the versions the test suite ran with), built for the GPU machine's Python.
#   bash scripts/device_wheels.sh [PYTHON_VERSION]     (default 3.12; writes .whl/, ignored by git)
# scripts/gpu_check.sh installs them from .whl/ with --no-index into a venv that sees the image's torch.
# Left out on purpose: torch, numpy, scipy, matplotlib, pillow, scikit-learn, opencv (headless), pyarrow,
# h5py and the other packages a CUDA PyTorch image carries; and, to stay within what can be carried
# (~40 MB here), imageio-ffmpeg (videos), mujoco-studio (MuJoCo's viewer, not imported by `import mujoco`)
# and gymnasium-robotics (PointMaze: the GPU checks do not use it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYVER="${1:-3.12}"
source "$ROOT/scripts/setup.sh" >/dev/null
DEST="$ROOT/.whl"
NAMES=(zarr numcodecs donfig google-crc32c gymnasium farama-notifications mujoco mujoco-core glfw pyopengl
  hydra-core omegaconf lap gym-pusht pymunk cffi pycparser shapely pygame antlr4-python3-runtime)
# name==version of each, as installed in .venv (a command substitution, so that a missing one stops the script)
PINS_TEXT="$(python - "${NAMES[@]}" <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"{name}: not installed in .venv (run bash scripts/setup.sh first)")
EOF
)"
mapfile -t PINS <<<"$PINS_TEXT"
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
# The last pin, antlr4-python3-runtime 4.9.3 (hydra-core's), is published as a source archive only: its
# wheel is built.
pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest "$DEST.tmp" "${PINS[@]:0:${#PINS[@]}-1}"
pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$DEST.tmp" "${PINS[-1]}"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST (carry .whl to the GPU machine)"
