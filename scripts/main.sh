#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the main job on the built-in default task.
# Extra arguments are passed to `dpi-quickstart`.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
exec dpi-quickstart "$@"
