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
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffpolicy_immix.experiments.aggregate import diff_ci, mean_ci
from diffpolicy_immix.utils.io import atomic_write


def _read(path: Path, split: str, setting: str, metric: str) -> dict[str, dict[int, float]]:
    """``{method: {seed: value}}`` of the rows of ``split`` at ``setting``."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"method", "seed", "split", "setting", metric} - set(reader.fieldnames or [])
        if missing:
            sys.exit(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            if row["split"] == split and row["setting"] == setting:
                out[row["method"]][int(row["seed"])] = float(row[metric])
    if not out:
        sys.exit(f"{path}: no {split} rows at setting {setting!r}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--earlier", type=Path, required=True, help="CSV with the validation and first test rows")
    p.add_argument("--longer", type=Path, required=True, help="CSV with the longer test's rows")
    p.add_argument("--setting", required=True, help="the chosen setting's slug, as in the CSVs")
    p.add_argument("--episodes", type=int, nargs=3, required=True, metavar=("VAL", "TEST1", "TEST2"))
    p.add_argument("--metric", default="mean_max_reward")
    p.add_argument("--baseline", default="none")
    p.add_argument("--out", type=Path, help="write the per-seed table here (CSV)")
    args = p.parse_args()
    n_val, n1, n2 = args.episodes
    if not 0 < n1 < n2:
        sys.exit(f"--episodes: the longer test ({n2}) must hold more episodes than the first ({n1})")

    val = _read(args.earlier, "validation", args.setting, args.metric)
    first = _read(args.earlier, "test", args.setting, args.metric)
    longer = _read(args.longer, "test", args.setting, args.metric)
    methods = [m for m in longer if m in val and m in first]
    if args.baseline not in methods:
        sys.exit(f"baseline {args.baseline!r} is not in all three CSVs (methods there: {methods})")
    seeds = sorted(set.intersection(*(set(d[m]) for d in (val, first, longer) for m in methods)))

    blocks = {
        f"validation ({n_val})": lambda m, s: val[m][s],
        f"test 1-{n1}": lambda m, s: first[m][s],
        f"test {n1 + 1}-{n2}": lambda m, s: (n2 * longer[m][s] - n1 * first[m][s]) / (n2 - n1),
        f"test 1-{n2}": lambda m, s: longer[m][s],
        f"validation + test ({n_val + n2})": lambda m, s: (n_val * val[m][s] + n2 * longer[m][s]) / (n_val + n2),
    }
    table = {(b, m): np.array([f(m, s) for s in seeds]) for b, f in blocks.items() for m in methods}

    print(f"{args.metric} at {args.setting}, seeds {seeds}; 95% bootstrap intervals over seeds (paired)")
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
