"""Per-seed scores of a sampling sweep's chosen setting on every episode block, and pooled over blocks.

A sampling sweep's test may be rerun on more episodes (e.g. immiscible_pusht_1000_noise_scale_test100
re-tests the runs of immiscible_pusht_1000_noise_scale on 100 episodes, the first 50 of which are the
earlier test). This script reads the earlier evaluations (validation and the first test block) and the
longer test, and prints per method and seed: validation, test episodes 1..n1, the new block n1+1..n2
(from the two means), the whole longer test, and validation and test pooled (episode-weighted), each with
its mean over seeds, the paired difference from the baseline and their seed-bootstrap intervals. The CSV
it writes (``--out``) keeps the per-seed values for re-aggregation.

    python scripts/pool_splits.py \\
        --earlier docs/results/immiscible/pusht_1000_noise_scale/all_evaluations.csv \\
        --longer docs/results/immiscible/pusht_1000_noise_scale_test100/sampling_sweep.csv \\
        --setting "sampler=ddim,steps=100,init_noise_scale=0.9" --episodes 50 50 100 \\
        --out docs/results/immiscible/pusht_1000_noise_scale_test100/pooled_splits.csv

Where the methods chose different settings, ``--sweep`` takes one sampling sweep's CSV and pools the
validation and test rows at each method's own chosen setting (its ``chosen`` column):

    python scripts/pool_splits.py \\
        --sweep docs/results/immiscible/pusht_1000_noise_scale_dose/sampling_sweep.csv --episodes 50 100 \\
        --out docs/results/immiscible/pusht_1000_noise_scale_dose/pooled_splits.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffpolicy_immix.experiments.aggregate import diff_ci, mean_ci
from diffpolicy_immix.utils.io import atomic_write


def _read(path: Path, split: str, setting: str | None, metric: str) -> dict[str, dict[int, float]]:
    """``{method: {seed: value}}`` of the rows of ``split`` at ``setting`` (None: each method's chosen one)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        needed = {"method", "seed", "split", metric} | ({"setting"} if setting is not None else {"chosen"})
        missing = needed - set(reader.fieldnames or [])
        if missing:
            sys.exit(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            at = row["setting"] == setting if setting is not None else row["chosen"] == "1"
            if row["split"] == split and at:
                out[row["method"]][int(row["seed"])] = float(row[metric])
    if not out:
        sys.exit(
            f"{path}: no {split} rows at " + (f"setting {setting!r}" if setting is not None else "a chosen setting")
        )
    return out


Table = dict[str, dict[int, float]]  # {method: {seed: value}}
Score = Callable[[str, int], float]  # a block's score of (method, seed)


def _pooled(a: float, n_a: int, b: float, n_b: int) -> float:
    """The mean over the episodes of two blocks, from their means ``a``, ``b`` and episode counts."""
    return (n_a * a + n_b * b) / (n_a + n_b)


def _longer_test_blocks(args: argparse.Namespace) -> tuple[dict[str, Score], list[Table], str]:
    """An earlier validation + test and a longer test at one setting: five blocks."""
    if not (args.earlier and args.longer and args.setting) or len(args.episodes) != 3:
        sys.exit(
            "give --earlier, --longer, --setting and --episodes VAL TEST1 TEST2, or --sweep and --episodes VAL TEST"
        )
    n_val, n1, n2 = args.episodes
    if not 0 < n1 < n2:
        sys.exit(f"--episodes: the longer test ({n2}) must hold more episodes than the first ({n1})")
    val = _read(args.earlier, "validation", args.setting, args.metric)
    first = _read(args.earlier, "test", args.setting, args.metric)
    longer = _read(args.longer, "test", args.setting, args.metric)
    keep = [m for m in longer if m in val and m in first]
    val, first, longer = ({m: d[m] for m in keep} for d in (val, first, longer))
    blocks = {
        f"validation ({n_val})": lambda m, s: val[m][s],
        f"test 1-{n1}": lambda m, s: first[m][s],
        f"test {n1 + 1}-{n2}": lambda m, s: (n2 * longer[m][s] - n1 * first[m][s]) / (n2 - n1),
        f"test 1-{n2}": lambda m, s: longer[m][s],
        f"validation + test ({n_val + n2})": lambda m, s: _pooled(val[m][s], n_val, longer[m][s], n2),
    }
    return blocks, [val, first, longer], args.setting


def _sweep_blocks(args: argparse.Namespace) -> tuple[dict[str, Score], list[Table], str]:
    """One sweep's validation and test, each method at its own chosen setting: three blocks."""
    if args.earlier or args.longer or args.setting or len(args.episodes) != 2:
        sys.exit("--sweep takes --episodes VAL TEST and none of --earlier, --longer, --setting")
    n_val, n_test = args.episodes
    val = _read(args.sweep, "validation", None, args.metric)
    test = _read(args.sweep, "test", None, args.metric)
    keep = [m for m in test if m in val]
    val, test = ({m: d[m] for m in keep} for d in (val, test))
    blocks = {
        f"validation ({n_val})": lambda m, s: val[m][s],
        f"test ({n_test})": lambda m, s: test[m][s],
        f"validation + test ({n_val + n_test})": lambda m, s: _pooled(val[m][s], n_val, test[m][s], n_test),
    }
    return blocks, [val, test], "each method's chosen setting"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--earlier", type=Path, help="CSV with the validation and first test rows")
    p.add_argument("--longer", type=Path, help="CSV with the longer test's rows")
    p.add_argument("--setting", help="the chosen setting's slug, as in the CSVs")
    p.add_argument("--sweep", type=Path, help="instead: one sampling_sweep.csv, each method at its chosen setting")
    p.add_argument(
        "--episodes",
        type=int,
        nargs="+",
        required=True,
        metavar="N",
        help="episodes per block: VAL TEST1 TEST2 (--earlier/--longer) or VAL TEST (--sweep)",
    )
    p.add_argument("--metric", default="mean_max_reward")
    p.add_argument("--baseline", default="none")
    p.add_argument("--out", type=Path, help="write the per-seed table here (CSV)")
    args = p.parse_args()
    blocks, tables, where = _sweep_blocks(args) if args.sweep else _longer_test_blocks(args)
    methods = list(tables[0])
    if args.baseline not in methods:
        sys.exit(f"baseline {args.baseline!r} is not in every split (methods there: {methods})")
    seeds = sorted(set.intersection(*(set(t[m]) for t in tables for m in methods)))
    table = {(b, m): np.array([f(m, s) for s in seeds]) for b, f in blocks.items() for m in methods}

    print(f"{args.metric} at {where}, seeds {seeds}; 95% bootstrap intervals over seeds (paired)")
    for b in blocks:
        print(f"\n{b}")
        for m in methods:
            x = table[(b, m)]
            est = mean_ci(x)
            line = f"  {m:18s} {' / '.join(f'{v:.3f}' for v in x)}  mean {est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"
            if m != args.baseline:
                d = diff_ci(x, table[(b, args.baseline)], paired=True)
                line += f"  vs {args.baseline} {d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"
            print(line)

    if args.out:
        with atomic_write(args.out, newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "seed", "block", args.metric])
            for (b, m), x in table.items():
                w.writerows([m, s, b, f"{v:.4f}"] for s, v in zip(seeds, x))
        print(f"\nper-seed table: {args.out}")


if __name__ == "__main__":
    main()
