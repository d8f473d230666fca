"""How strongly each assigner changes the training noise, by dimension of the diffused data.

Low-dimensional action chunks (16 x 2 = 32) and images (64 to 3072 dims) react very differently to the same
assigner: the nearer the chosen noise lies to its sample, the more the noise a denoiser must predict is
correlated with the data it sees. This prints the core's miscibility diagnostics for batches of data
spread like normalized training data (uniform in [-1, 1]^D), plus the mean cosine between each noise row
and its data row (0 for independent noise).

    python scripts/diag_by_dim.py [--batch 128] [--repeats 20] [--dims 2 32 64 784 3072]
"""

from __future__ import annotations

import argparse
import platform

import torch
from tqdm import tqdm

from diffpolicy_immix.immiscible import make_assigner, miscibility_stats

METHODS: list[tuple[str, dict]] = [
    ("none", {}),
    ("lsa", {}),
    ("knn k=2", {"k": 2}),
    ("knn k=8", {"k": 8}),
    ("knn k=64", {"k": 64}),
]


def measure(dim: int, batch: int, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean diagnostics over ``repeats`` batches for every method at one dimension."""
    results: dict[str, dict[str, float]] = {}
    for label, options in METHODS:
        assign = make_assigner(label.split()[0], **options)
        g = torch.Generator().manual_seed(seed)
        rows = []
        for _ in range(repeats):
            x0 = torch.rand(batch, dim, generator=g) * 2.0 - 1.0  # (B, D)
            noise = assign(x0, generator=g)  # (B, D)
            stats = miscibility_stats(x0, noise)
            stats["cosine"] = float(torch.nn.functional.cosine_similarity(x0, noise, dim=1).mean())
            rows.append(stats)
        results[label] = {key: sum(r[key] for r in rows) / repeats for key in rows[0]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32, 64, 784, 3072])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = platform.processor() or platform.machine()
    print(f"# batch {args.batch}, {args.repeats} batches per cell, x0 ~ U[-1, 1]^D; {host}")
    print("| D | method | distance reduction % | noise norm / E|N| | cosine(noise, x0) | self-recovery@0.5 |")
    print("|---|---|---|---|---|---|")
    for dim in tqdm(args.dims, desc="dims", leave=False):
        for label, s in measure(dim, args.batch, args.repeats, args.seed).items():
            print(
                f"| {dim} | {label} | {s['distance_reduction_pct']:.2f} | {s['noise_norm_ratio']:.3f} | "
                f"{s['cosine']:.3f} | {s['self_recovery@0.5']:.3f} |"
            )


if __name__ == "__main__":
    main()
