"""Tests of the shared trainer: schedules, checkpoints, logs, data order, exact resume."""

from __future__ import annotations

import math
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from training_toys import ToyBatchData, ToyItemData, ToyModel, make_evaluate_fn, toy_points

from diffpolicy_immix.errors import UserError
from diffpolicy_immix.training import (
    EMA,
    CheckpointManager,
    EMAConfig,
    TrainConfig,
    Trainer,
    atomic_save,
    config_changes,
    ema_decay,
    load_checkpoint,
    load_weights,
    lr_factor,
    seed_everything,
)
from diffpolicy_immix.training import checkpoint as checkpoint_module
from diffpolicy_immix.training.batching import BatchStream, rank_batches, steps_per_epoch
from diffpolicy_immix.training.checkpoint import capture_rng_state, restore_rng_state
from diffpolicy_immix.training.logger import CsvLog, read_csv

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "training_runner.py"


def small_config(**overrides) -> TrainConfig:
    base = dict(steps=10, batch_size=8, lr=1e-2, warmup_steps=2, device="cpu", checkpoint_every=0, seed=1, keep_top_k=2)
    base.update(overrides)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_decay_schedule_matches_closed_form():
    # decay(n) = 1 - (1 + m)^-0.75 with m = n - 1, 0 while m <= 0
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == 0.0
    assert ema_decay(2) == pytest.approx(1 - 2**-0.75, abs=1e-12)  # 0.40539...
    assert ema_decay(10) == pytest.approx(1 - 10**-0.75, abs=1e-12)  # 0.82217...
    assert ema_decay(10**9) == 0.9999  # clamped at max_decay
    # update_after_step shifts the schedule; min_decay clamps from below once averaging starts
    assert ema_decay(5, update_after_step=5) == 0.0
    assert ema_decay(7, update_after_step=5) == pytest.approx(1 - 2**-0.75, abs=1e-12)
    assert ema_decay(2, min_decay=0.5) == 0.5
    assert ema_decay(3, power=2 / 3, inv_gamma=2.0) == pytest.approx(1 - 2.0 ** (-2 / 3), abs=1e-12)


def test_ema_update_averages_parameters_and_copies_buffers():
    model = ToyModel()
    ema = EMA(model, EMAConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.scale.fill_(5.0)
    ema.update(model)  # decay 0: exact copy
    for p, q in zip(model.parameters(), ema.model.parameters()):
        assert torch.equal(p, q)
    ema.update(model)  # decay 0 again (m = 0)
    before = [q.clone() for q in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.scale.fill_(7.0)
    ema.update(model)
    d = 1 - 2**-0.75
    assert ema.decay == pytest.approx(d)
    for p, q, b in zip(model.parameters(), ema.model.parameters(), before):
        torch.testing.assert_close(q, d * b + (1 - d) * p, rtol=1e-6, atol=1e-6)
    assert torch.equal(ema.model.scale, torch.full((4,), 7.0))

    restored = EMA(ToyModel(), EMAConfig())
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 3
    for q, r in zip(ema.model.state_dict().values(), restored.model.state_dict().values()):
        assert torch.equal(q, r)


# ---------------------------------------------------------------------------------------------- LR


def test_lr_warmup_then_cosine_values():
    f = dict(warmup_steps=10, total_steps=110, schedule="cosine")
    assert lr_factor(0, **f) == 0.0
    assert lr_factor(5, **f) == pytest.approx(0.5)
    assert lr_factor(10, **f) == pytest.approx(1.0)
    assert lr_factor(60, **f) == pytest.approx(0.5)
    assert lr_factor(35, **f) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_factor(110, **f) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, **f) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(3, warmup_steps=0, total_steps=10, schedule="constant") == 1.0
    assert lr_factor(2, warmup_steps=4, total_steps=10, schedule="constant") == 0.5


def test_trainer_applies_the_schedule_to_the_optimizer(tmp_path):
    cfg = small_config(steps=6, warmup_steps=2, lr=0.1, ema=EMAConfig(enabled=False))
    trainer = Trainer(ToyModel(), ToyBatchData(toy_points(32)), cfg, tmp_path)
    trainer.train()
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "metrics.csv")]
    expected = [0.1 * lr_factor(s, warmup_steps=2, total_steps=6, schedule="cosine") for s in range(6)]
    assert lrs == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"steps": 0}, "train.steps"),
        ({"batch_size": -1}, "train.batch_size"),
        ({"lr": 0.0}, "train.lr"),
        ({"betas": (0.9, 1.0)}, "train.betas"),
        ({"lr_schedule": "linear"}, "train.lr_schedule"),
        ({"grad_clip": -1.0}, "train.grad_clip"),
        ({"device": "tpu"}, "train.device"),
        ({"amp": "fp8"}, "train.amp"),
        ({"device": "cpu", "amp": "fp16"}, "train.amp"),
        ({"compile": "yes"}, "train.compile"),
        ({"log_every": 0}, "train.log_every"),
        ({"seed": 1.5}, "train.seed"),
        ({"ema": {"power": 0}}, "ema.power"),
        ({"ema": {"min_decay": 0.9, "max_decay": 0.5}}, "ema.min_decay"),
        ({"ema": {"max_decay": 1.5}}, "ema.max_decay"),
    ],
)
def test_config_rejects_bad_values_with_one_line_naming_the_field(overrides, field):
    with pytest.raises(ValueError) as info:
        TrainConfig(**overrides)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_bf16_autocast_trains_on_cpu_with_float32_weights_and_a_matching_loss(tmp_path):
    # autocast bf16 on CPU: the forward runs in bfloat16, parameters / optimizer / EMA stay float32, and
    # the loss curve follows the float32 run's (same data, noise and init) within bf16 rounding
    losses = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        model = ToyModel(dropout=0.0)
        cfg = small_config(steps=40, batch_size=32, lr=1e-2, amp=amp, log_every=10)
        trainer = Trainer(model, ToyBatchData(toy_points(96)), cfg, tmp_path / amp)
        assert trainer.amp == amp
        trainer.train()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.dtype == torch.float32 for p in trainer.ema.model.parameters())
        losses[amp] = [float(r["loss"]) for r in read_csv(tmp_path / amp / "metrics.csv")]
    assert losses["bf16"] != losses["none"]  # the forward did run in bfloat16 ...
    assert losses["bf16"] == pytest.approx(losses["none"], rel=0.05)  # ... and follows the float32 curve


def test_config_from_dict_round_trip_and_unknown_keys():
    cfg = TrainConfig.from_dict({"steps": 5, "betas": [0.9, 0.99], "ema": {"power": 0.5}})
    assert cfg.betas == (0.9, 0.99) and cfg.ema.power == 0.5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        TrainConfig.from_dict({"stepz": 5})
    with pytest.raises(ValueError, match="unknown key 'decay'"):
        TrainConfig.from_dict({"ema": {"decay": 0.9}})


# ---------------------------------------------------------------------------------------------- checkpoints


def test_atomic_save_keeps_previous_latest_when_saving_fails(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_top_k=2)
    manager.save_latest({"step": 1, "weights": torch.arange(4)})

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")  # a crash mid-write
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        manager.save_latest({"step": 2, "weights": torch.arange(8)})
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)

    kept = torch.load(manager.latest_path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["weights"], torch.arange(4))
    assert sorted(p.name for p in manager.directory.iterdir()) == ["latest.pt"]  # no temp file left


def test_top_k_keeps_the_best_scores_and_prunes_the_rest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_top_k=3)
    for step, score in [(100, 0.5), (200, 0.9), (300, 0.1), (400, 0.7), (500, 0.05), (600, 0.92)]:
        manager.save_scored({"w": torch.tensor([step])}, {}, step, score)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "step=000200-score=0.9000.safetensors",
        "step=000400-score=0.7000.safetensors",
        "step=000600-score=0.9200.safetensors",
    ]
    weights, meta = load_weights(tmp_path / names[0])
    assert torch.equal(weights["w"], torch.tensor([200])) and meta["step"] == "200" and float(meta["score"]) == 0.9
    assert manager.save_scored({"w": torch.zeros(1)}, {}, 700, 0.01) is None  # not good enough: nothing written
    assert not manager.would_keep(800, float("nan"))
    assert len(list(tmp_path.iterdir())) == 3
    # negative scores parse and rank too; files of older runs (.pt) are ranked with the new ones
    manager2 = CheckpointManager(tmp_path / "neg", keep_top_k=1)
    manager2.save_scored({"w": torch.zeros(1)}, {}, 1, -0.3)
    atomic_save({}, tmp_path / "neg" / "step=000002-score=-0.1000.pt")
    manager2.prune()
    assert [p.name for p in (tmp_path / "neg").iterdir()] == ["step=000002-score=-0.1000.pt"]


def test_weights_files_refuse_foreign_files_with_a_message_naming_them(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"junk\.safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match=r"foreign\.safetensors: metadata format=None"):
        load_weights(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        load_weights(tmp_path / "missing.safetensors")


class NotPlainData:
    def __reduce__(self):
        return (os.getcwd, ())  # would run code when unpickled without weights_only


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_safe_loading_rejects_arbitrary_pickled_objects(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": NotPlainData()}, evil)
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
        load_checkpoint(evil)
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"x": 1}, f)
    with pytest.raises(ValueError, match=r"raw\.pt"):
        load_checkpoint(tmp_path / "raw.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    atomic_save({"format_version": 1, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial\.pt.*missing key 'optimizer'"):
        load_checkpoint(tmp_path / "partial.pt")


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(5)
    legacy_normal = np.random.normal  # noqa: NPY002 - the legacy global state is what is saved
    legacy_normal()  # leaves a cached gaussian in numpy's legacy state
    random.gauss(0, 1)  # and one in Python's
    atomic_save({"rng": capture_rng_state(gen)}, tmp_path / "rng.pt")
    first = (torch.rand(3), legacy_normal(size=3), random.gauss(0, 1), torch.rand(3, generator=gen))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], gen)
    second = (torch.rand(3), legacy_normal(size=3), random.gauss(0, 1), torch.rand(3, generator=gen))
    assert torch.equal(first[0], second[0]) and torch.equal(first[3], second[3])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


# ---------------------------------------------------------------------------------------------- data order, logs


def test_rank_batches_are_deterministic_disjoint_and_change_per_epoch():
    n, bs, world = 50, 4, 3
    shards = [rank_batches(n, bs, seed=0, epoch=2, rank=r, world_size=world) for r in range(world)]
    assert all(s.shape == (steps_per_epoch(n, bs, world), bs) == (4, 4) for s in shards)
    flat = torch.cat([s.flatten() for s in shards])
    assert len(set(flat.tolist())) == flat.numel()  # disjoint across ranks
    assert torch.equal(shards[0], rank_batches(n, bs, seed=0, epoch=2, rank=0, world_size=world))
    assert not torch.equal(shards[0], rank_batches(n, bs, seed=0, epoch=3, rank=0, world_size=world))
    assert not torch.equal(rank_batches(n, bs, 0, 1), rank_batches(n, bs, 1, 0))  # (seed, epoch) not seed+epoch


def test_batch_stream_resumes_mid_epoch_and_both_readers_agree():
    x = toy_points(20)
    full = [b["x"] for _, (_, b) in zip(range(12), BatchStream(ToyBatchData(x), 3, seed=4).iterate(0))]
    later = [b["x"] for _, (_, b) in zip(range(5), BatchStream(ToyItemData(x), 3, seed=4).iterate(7))]
    for a, b in zip(full[7:], later):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(ToyBatchData(x), 32, seed=0)


def test_csv_log_grows_columns_and_truncates(tmp_path):
    path = tmp_path / "m.csv"
    log = CsvLog(path, ("step", "loss"))
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": 0.25, "knn_gain": 0.125})
    log.write({"step": 3, "loss": 0.1})
    rows = read_csv(path)
    assert [r["knn_gain"] for r in rows] == ["", "0.125", ""]
    assert float(rows[2]["loss"]) == 0.1  # repr round trip
    again = CsvLog(path)
    again.truncate_after(2)
    again.write({"step": 3, "loss": 0.2})
    assert [(r["step"], r["loss"]) for r in read_csv(path)] == [("1", "0.5"), ("2", "0.25"), ("3", "0.2")]


# ---------------------------------------------------------------------------------------------- trainer


def test_trainer_writes_logs_evaluates_ema_and_keeps_top_k(tmp_path):
    seen = []
    x = toy_points(48)
    evaluate = make_evaluate_fn(x[:8])
    calls = []

    def evaluate_fn(model, *, step, final):
        seen.append(model)
        calls.append((step, final))
        return evaluate(model)

    cfg = small_config(steps=9, eval_every=3, checkpoint_every=4, diag_every=2, grad_clip=1.0)
    trainer = Trainer(ToyModel(), ToyBatchData(x), cfg, tmp_path, evaluate_fn=evaluate_fn, full_config={"a": (1, 2)})
    final = trainer.train()

    assert all(m is trainer.ema.model for m in seen) and len(seen) == 3  # steps 3, 6, 9 (9 is also the end)
    assert calls == [(3, False), (6, False), (9, True)]  # the callback knows which evaluation is the last
    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert {"epoch", "loss", "lr", "wall_time", "samples_per_s", "grad_norm", "noise_norm"} <= set(rows[0])
    assert [r["noise_norm"] != "" for r in rows] == [s % 2 == 0 for s in range(9)]
    evals = read_csv(tmp_path / "eval.csv")
    assert [int(r["step"]) for r in evals] == [3, 6, 9]
    assert final["step"] == 9 and final["score"] == pytest.approx(float(evals[-1]["score"]))
    assert final["train_loss"] == pytest.approx(float(rows[-1]["loss"]))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "latest.pt" in ckpts and len(ckpts) == 1 + 2  # top-2 of three evaluations
    assert all(name.endswith(".safetensors") for name in ckpts if name != "latest.pt")  # weights only
    for row in evals:
        assert float(row["train_wall_s"]) + float(row["eval_s"]) <= float(row["wall_time"])
    walls = [float(r["train_wall_s"]) for r in rows]
    assert walls == sorted(walls) and all(float(r["train_wall_s"]) <= float(r["wall_time"]) for r in rows)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    best = max((p for p in (tmp_path / "checkpoints").glob("*.safetensors")), key=lambda p: p.name)
    weights, meta = load_weights(best)
    assert meta["weights"] == "ema" and meta["config_yaml"] == state["config_yaml"]
    assert set(weights) == set(state["ema"]["model"]) and "optimizer" not in meta
    assert state["step"] == 9 and state["config_yaml"].startswith("a:")
    assert torch.equal(state["model"]["scale"], torch.full((4,), 2.0))  # the normalizer travels with the model
    assert (tmp_path / "config.yaml").read_text() == state["config_yaml"]


def test_trainer_rejects_missing_resume_checkpoint_and_non_models(tmp_path):
    data = ToyBatchData(toy_points(16))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Trainer(ToyModel(), data, small_config(), tmp_path, resume=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="compute_loss"):
        Trainer(torch.nn.Linear(2, 2), data, small_config(), tmp_path)


def test_validation_loss_becomes_the_score_without_evaluate_fn(tmp_path):
    x = toy_points(32)
    trainer = Trainer(ToyModel(), ToyBatchData(x), small_config(steps=4), tmp_path, val_dataset=ToyItemData(x[:10]))
    final = trainer.train()
    assert final["score"] == pytest.approx(-final["val_loss"]) and final["val_loss"] > 0


def runner_command(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(RUNNER), str(out), *args]


def assert_same_run(ref: Path, run: Path) -> None:
    """Identical metrics rows, evaluations and final weights (tolerance 0)."""
    ref_rows, run_rows = read_csv(ref / "metrics.csv"), read_csv(run / "metrics.csv")
    assert [r["step"] for r in run_rows] == [r["step"] for r in ref_rows]
    # Floats are written with repr, so equal strings mean bit-identical values.
    for key in ("loss", "lr", "epoch", "grad_norm", "noise_norm"):
        assert [r[key] for r in run_rows] == [r[key] for r in ref_rows], key
    ref_eval, run_eval = read_csv(ref / "eval.csv"), read_csv(run / "eval.csv")
    assert [(r["step"], r["score"], r["val_loss"]) for r in run_eval] == [
        (r["step"], r["score"], r["val_loss"]) for r in ref_eval
    ]
    a = load_checkpoint(ref / "checkpoints" / "latest.pt")
    b = load_checkpoint(run / "checkpoints" / "latest.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"]["model"].items():
        assert torch.equal(value, b["ema"]["model"][key]), key


def test_resume_after_sigkill_reproduces_the_uninterrupted_run_exactly(tmp_path):
    # Both in fresh processes, side by side: an uninterrupted 12-step reference (epochs of 6 steps,
    # checkpoints every 5, evaluations every 4), and the same run killed with SIGKILL after logging
    # step 8 (its latest checkpoint is step 5).
    ref = subprocess.Popen(runner_command(tmp_path / "ref"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = subprocess.run(runner_command(tmp_path / "run", "--kill-at-step", "8"), capture_output=True, timeout=120)
    _, ref_err = ref.communicate(timeout=120)
    assert ref.returncode == 0, ref_err[-2000:]
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 5
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 8  # rows 6..8 must be redone
    resumed = subprocess.run(runner_command(tmp_path / "run", "--resume"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in read_csv(tmp_path / "run" / "metrics.csv")] == [str(s) for s in range(1, 13)]
    assert_same_run(tmp_path / "ref", tmp_path / "run")


class Interrupted(Exception):
    pass


class InterruptingTrainer(Trainer):
    stop_at = -1

    def log_metrics(self, lr):
        row = super().log_metrics(lr)
        if self.step == self.stop_at:
            raise Interrupted
        return row


def test_resume_through_the_dataloader_path_is_exact_in_process(tmp_path):
    # Datasets without get_batch go through a DataLoader, whose iterators would otherwise draw their
    # base seed from torch's global RNG at a different moment after a resume. Epochs of 6 steps: the
    # step-5 checkpoint sits mid-epoch.
    x = toy_points(48)

    def trainer(out, resume=False, stop_at=-1):
        seed_everything(7)
        cfg = small_config(
            steps=12,
            grad_clip=0.5,
            eval_every=4,
            checkpoint_every=5,
            diag_every=3,
            warmup_steps=3,
            seed=3,
            log_every=2,  # the step-5 checkpoint holds a half-filled row (step 5 of rows 5-6)
        )
        InterruptingTrainer.stop_at = stop_at
        return InterruptingTrainer(
            ToyModel(dropout=0.2),
            ToyItemData(x),
            cfg,
            out,
            evaluate_fn=make_evaluate_fn(x[:8]),
            val_dataset=ToyItemData(x[:16]),
            resume=resume,
        )

    trainer(tmp_path / "ref").train()
    with pytest.raises(Interrupted):
        trainer(tmp_path / "run", stop_at=8).train()
    resumed = trainer(tmp_path / "run", resume=True)
    assert resumed.step == 5
    resumed.train()
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_seed_everything_fixes_model_initialisation():
    seed_everything(11)
    a = ToyModel().net[0].weight.clone()
    seed_everything(11)
    assert torch.equal(a, ToyModel().net[0].weight)


def test_tensorboard_is_skipped_with_one_info_line_when_missing(tmp_path, caplog):
    import importlib.util

    from diffpolicy_immix.training.logger import TensorBoardLog

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with caplog.at_level("INFO", logger="diffpolicy_immix.training.logger"):
        tb = TensorBoardLog(tmp_path / "tb")
    assert not tb.enabled
    assert [r.levelname for r in caplog.records] == ["INFO"] and "tensorboard" in caplog.records[0].getMessage()
    tb.write("train", {"loss": 1.0}, 1)  # a no-op


def test_a_fresh_run_in_a_used_directory_warns_and_replaces_the_old_outputs(tmp_path):
    x = toy_points(32)
    evaluate = make_evaluate_fn(x[:8])
    Trainer(ToyModel(), ToyBatchData(x), small_config(steps=6, eval_every=2), tmp_path, evaluate_fn=evaluate).train()
    assert len(list((tmp_path / "checkpoints").glob("step=*.safetensors"))) == 2
    with pytest.warns(UserWarning, match="already holds a run"):
        again = Trainer(ToyModel(), ToyBatchData(x), small_config(steps=3), tmp_path)
    assert list((tmp_path / "checkpoints").glob("step=*.safetensors")) == []
    again.train()
    assert [r["step"] for r in read_csv(tmp_path / "metrics.csv")] == ["1", "2", "3"]
    assert read_csv(tmp_path / "eval.csv") == []


# ---------------------------------------------------------------------------------------------- resume rules


def toy_trainer(out: Path, x: torch.Tensor, full_config: dict | None = None, **overrides) -> Trainer:
    resume = overrides.pop("resume", False)
    seed_everything(5)
    cfg = small_config(**overrides)
    full = full_config if full_config is not None else {"train": cfg.to_dict(), "assign": {"name": "knn", "k": 2}}
    return Trainer(
        ToyModel(),
        ToyBatchData(x),
        cfg,
        out,
        evaluate_fn=make_evaluate_fn(x[:8]),
        full_config=full,
        resume=resume,
    )


def test_resume_refuses_a_changed_configuration_and_allows_a_longer_budget(tmp_path):
    x = toy_points(32)
    toy_trainer(tmp_path, x, steps=4, eval_every=2).train()
    config_before = (tmp_path / "config.yaml").read_text()
    changed = {"train": small_config(steps=4, eval_every=2).to_dict(), "assign": {"name": "lsa"}}
    with pytest.raises(UserError) as info:
        toy_trainer(tmp_path, x, full_config=changed, steps=4, eval_every=2, resume=True)
    message = str(info.value)
    assert "\n" not in message and "assign.name: 'knn' -> 'lsa'" in message and "assign.k: 2 -> '(absent)'" in message
    assert (tmp_path / "config.yaml").read_text() == config_before  # nothing was rewritten
    lr = {"train": small_config(steps=4, eval_every=2, lr=0.5).to_dict(), "assign": {"name": "knn", "k": 2}}
    with pytest.raises(UserError, match=r"train\.lr: 0\.01 -> 0\.5"):
        toy_trainer(tmp_path, x, full_config=lr, steps=4, eval_every=2, lr=0.5, resume=True)
    with pytest.raises(UserError, match=r"train\.steps=2 is below the step"):
        toy_trainer(tmp_path, x, steps=2, eval_every=2, resume=True)
    longer = toy_trainer(tmp_path, x, steps=6, eval_every=2, resume=True)  # train.steps may grow
    assert longer.step == 4
    longer.train()
    assert [r["step"] for r in read_csv(tmp_path / "eval.csv")] == ["2", "4", "6"]
    assert config_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}, allowed=("a.c",)) == []


def test_resume_from_an_explicit_path_continues_that_checkpoint(tmp_path):
    x = toy_points(32)
    toy_trainer(tmp_path / "a", x, steps=4).train()
    fork = toy_trainer(tmp_path / "b", x, steps=6, resume=tmp_path / "a" / "checkpoints" / "latest.pt")
    assert fork.step == 4  # not step 0, and not b's (absent) latest.pt
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match=r"garbage\.pt: (refused by safe|not a readable)"):
        toy_trainer(tmp_path / "c", x, steps=6, resume=tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        toy_trainer(tmp_path / "c", x, steps=6, resume=tmp_path / "nothing.pt")


def test_resuming_a_finished_run_adds_no_evaluation(tmp_path):
    # eval_every does not divide steps but checkpoint_every does: the final evaluation comes after the
    # last periodic checkpoint, and the checkpoint written after it must record it.
    x = toy_points(32)
    toy_trainer(tmp_path, x, steps=6, eval_every=4, checkpoint_every=3).train()
    rows = read_csv(tmp_path / "eval.csv")
    assert [r["step"] for r in rows] == ["4", "6"]
    final = toy_trainer(tmp_path, x, steps=6, eval_every=4, checkpoint_every=3, resume=True).train()
    assert read_csv(tmp_path / "eval.csv") == rows and final["step"] == 6
    assert final["score"] == pytest.approx(float(rows[-1]["score"]))


def test_a_run_removes_and_reports_leftovers_of_killed_writes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    leftovers = [
        ckpts / f".latest.pt.tmp-{pid}",
        ckpts / f".latest.pt.tmp-{pid}-0a1b2c3d.pt",
        tmp_path / f".metrics.csv.tmp-{pid}",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    alive = ckpts / f".latest.pt.tmp-{os.getpid()}"  # a writer that is still running is left alone
    alive.write_bytes(b"in progress")
    with pytest.warns(UserWarning, match=r"removed 3 leftover temporary file\(s\) of a killed run"):
        toy_trainer(tmp_path, toy_points(32), steps=2)
    assert not any(p.exists() for p in leftovers) and alive.exists()


def test_resume_under_another_world_size_continues_with_fresh_deterministic_noise(tmp_path):
    # A checkpoint written by two ranks (its random states are per rank) resumed by one process: the run
    # warns, re-shards the data and draws noise from seeds derived from (seed, rank, step), the same
    # continuation every time.
    x = toy_points(32)
    toy_trainer(tmp_path / "two", x, steps=4).train()
    latest = tmp_path / "two" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    state["world_size"], state["rng"], state["noise_seeds"] = 2, [state["rng"][0]] * 2, [1, 2]
    atomic_save(state, latest)
    losses = []
    for name in ("a", "b"):
        out = tmp_path / name
        (out / "checkpoints").mkdir(parents=True)
        atomic_save(state, out / "checkpoints" / "latest.pt")
        with pytest.warns(UserWarning, match="written by 2 ranks, this job has 1"):
            trainer = toy_trainer(out, x, steps=8, resume=True)
        trainer.train()
        losses.append([r["loss"] for r in read_csv(out / "metrics.csv")])
    assert losses[0] == losses[1] and len(losses[0]) == 4  # steps 5-8
