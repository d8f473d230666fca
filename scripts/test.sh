#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the test suite.
#   scripts/test.sh            the default suite (a few minutes on 2 cores)
#   scripts/test.sh --slow     also the long end-to-end runs (marked `slow`)
#   scripts/test.sh -k knn     any other pytest arguments pass through
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
args=()
for a in "$@"; do
  if [ "$a" = "--slow" ]; then args+=(-m "slow or not slow"); else args+=("$a"); fi
done
exec python -m pytest "${args[@]}"
