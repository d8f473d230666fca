"""Two-process (gloo, CPU) checks of DDP training and the global LSA, run under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from diffpolicy_immix.training import load_checkpoint
from diffpolicy_immix.training.logger import read_csv

RUNNER = Path(__file__).resolve().parent / "training_ddp_runner.py"

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(RUNNER), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_global_lsa_on_two_ranks_equals_single_process_lsa_on_the_concatenated_batch(ddp_run):
    lsa = json.loads((ddp_run / "lsa.json").read_text())
    for metric in ("l2", "sqeuclidean"):
        assert lsa[metric]["equal"], metric
        assert lsa[metric]["shape_kept"], metric
        # one global solve is at least as good as two per-rank solves
        assert lsa[metric]["global_cost"] <= lsa[metric]["per_rank_cost"] + 1e-5, metric
    assert lsa["uneven"] == {"3-5": True, "0-4": True}  # different batch sizes per rank, one empty


def test_core_lsa_assigner_is_global_under_ddp_and_local_inside_local_assignment(ddp_run):
    lsa = json.loads((ddp_run / "lsa.json").read_text())["assigner"]
    assert lsa == {"equal": True, "collective": True, "local_inside_block": True}


def test_ddp_training_ends_with_identical_weights_on_both_ranks(ddp_run):
    r0 = torch.load(ddp_run / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_run / "rank1.pt", weights_only=True)
    assert r0["global_in_training"] and r1["global_in_training"]  # lsa assigns over both ranks by itself
    assert r0["local_after_training"] and r1["local_after_training"]  # and locally once the group is gone
    assert r0["changed"] and r0["final_step"] == r1["final_step"] == 6
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    latest = load_checkpoint(ddp_run / "run" / "checkpoints" / "latest.pt")
    for key, value in r0["state"].items():
        assert torch.equal(value, latest["model"][key]), key
    assert latest["world_size"] == 2 and latest["noise_seeds"] == [5, 6] and len(latest["rng"]) == 2


def test_ddp_logs_the_rank_mean_loss_and_ranks_see_different_data(ddp_run):
    r0 = torch.load(ddp_run / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_run / "rank1.pt", weights_only=True)
    assert r0["losses"] != r1["losses"]  # different shards and noise
    rows = read_csv(ddp_run / "run" / "metrics.csv")
    logged = [float(r["loss"]) for r in rows]
    expected = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert [int(r["step"]) for r in read_csv(ddp_run / "run" / "eval.csv")] == [3, 6]
