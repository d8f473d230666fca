"""``python -m diffpolicy_immix.experiments experiment=<name> [key=value ...]`` (same as ``dpi-compare``)."""

import sys

from .compare import compare_cli

if __name__ == "__main__":
    sys.exit(compare_cli())
