"""Experiment specifications: which methods to compare on which task, over which seeds, judged how.

An experiment is a YAML file in ``configs/experiment/<name>.yaml`` (installed with the package as
``diffpolicy_immix_configs/experiment``) or any YAML path, plus ``key=value`` overrides of its top-level
fields:

    spec = load_experiment("reach_around", ["seeds=5", "parallel=2", "extra=[train.steps=500]"])

Every field is checked in ``ExperimentSpec.__post_init__``; a bad value raises a one-line ``ValueError``
naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROGRESS_MODES",
    "THRESHOLD_MODES",
    "ExperimentSpec",
    "MethodSpec",
    "experiment_names",
    "load_experiment",
    "parse_overrides",
]

THRESHOLD_MODES = ("ratio", "progress", "absolute")
PROGRESS_MODES = ("bars", "runs", "quiet")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_overrides(where: str, value: Any) -> tuple[str, ...]:
    """A list of Hydra overrides (``key=value``, ``+key=value``, ``~key``) as a tuple of strings."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}={value!r} is invalid; give a list of Hydra overrides such as [train.steps=500]")
    for item in value:
        if not (("=" in item and not item.startswith("=")) or (item.startswith("~") and len(item) > 1)):
            raise ValueError(f"{where}: override {item!r} is invalid; write key=value (or +key=value, ~key)")
    return tuple(value)


@dataclass(frozen=True)
class MethodSpec:
    """One arm of the comparison: a label (its run folder) and the Hydra overrides that make it."""

    label: str
    """Short, path-safe name, e.g. ``knn-k2``; the run folder is ``<out_root>/<label>/seed<seed>``."""
    overrides: tuple[str, ...] = ()
    """Hydra overrides of ``dpi_train`` applied after the experiment's ``base``, e.g. ``[assign=knn, assign.k=2]``."""

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not _SAFE_NAME.match(self.label):
            raise ValueError(
                f"methods.label={self.label!r} is invalid; use letters, digits and _ . + - (it names a folder)"
            )
        object.__setattr__(self, "overrides", _check_overrides(f"methods[{self.label}].overrides", self.overrides))


@dataclass
class ExperimentSpec:
    """A comparison of noise-assignment methods on one task across seeds (see docs/compare.md)."""

    name: str
    """Experiment name; the default output folder is ``runs/compare/<name>``."""
    task: str
    """A task config name of ``configs/task`` (``reach_around``, ``pusht``, ``image_digits``, ...)."""
    methods: list[MethodSpec]
    """The arms; one of them must carry the ``baseline`` label."""
    base: tuple[str, ...] = ()
    """Hydra overrides applied to every run (the budget: ``train.steps=3000``, ``train.eval_every=250``)."""
    extra: tuple[str, ...] = ()
    """More overrides for every run, applied last (meant for the command line: ``extra=[train.steps=500]``)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (a count ``n`` means seeds 0..n-1). The seed fixes the initial weights, the data order,
    the training noise and the evaluation's policy noise; evaluation episodes use the task's fixed test seeds."""
    metric: str = "success_rate"
    """The ``eval.csv`` column that is compared (``success_rate``, ``mean_max_reward``, ``fd``, ...)."""
    higher_is_better: bool = True
    """Direction of ``metric`` (false for distances such as ``fd``)."""
    threshold: float = 0.9
    """Fraction that defines the target level of ``metric`` from the baseline's final value (see
    ``threshold_mode``)."""
    threshold_mode: str = "ratio"
    """``ratio``: target = threshold x baseline final (higher is better) or baseline final / threshold
    (lower is better). ``progress``: target = first + threshold x (final - first) of the baseline's mean curve.
    ``absolute``: target = threshold itself, in the metric's units (a task's competence level, e.g. 0.95)."""
    baseline: str = "none"
    """Label of the vanilla method: the threshold and the speed-up ratios refer to it."""
    table_metrics: dict[str, bool] = field(default_factory=dict)
    """More ``eval.csv`` columns for the best / last-k table, each with its higher-is-better flag."""
    last_k: int = 10
    """Diffusion Policy's table: mean of the last ``last_k`` evaluations (and the best one)."""
    parallel: int = 1
    """Runs trained at once, each in its own process."""
    threads: int | None = None
    """Torch threads per run; None: max(1, cores // parallel)."""
    out_root: str | None = None
    """Output folder (None: ``runs/compare/<name>``)."""
    n_boot: int = 2000
    """Bootstrap resamples of the seeds."""
    ci: float = 0.95
    """Confidence level of the bootstrap percentile intervals."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap (the same runs always give the same intervals)."""
    progress: str = "bars"
    """``bars``: a bar over runs and each run's own bar; ``runs``: only the bar over runs; ``quiet``: neither."""
    run: bool = True
    """False: do not train; re-read the finished runs under ``out_root`` and write the report."""
    description: str = ""
    """One line for the report."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SAFE_NAME.match(self.name):
            raise ValueError(f"experiment.name={self.name!r} is invalid; use letters, digits and _ . + -")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"experiment.task={self.task!r} is invalid; name a task config, e.g. reach_around")
        self.base = _check_overrides("experiment.base", self.base)
        self.extra = _check_overrides("experiment.extra", self.extra)
        self.methods = [_method(m) for m in (self.methods or [])]
        if not self.methods:
            raise ValueError("experiment.methods is empty; list at least the baseline, e.g. [{label: none}]")
        labels = [m.label for m in self.methods]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"experiment.methods: label {dup[0]!r} appears twice; labels must be unique")
        if self.baseline not in labels:
            raise ValueError(f"experiment.baseline={self.baseline!r} is not a method label; labels: {labels}")
        self.seeds = _seeds(self.seeds)
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"experiment.metric={self.metric!r} is invalid; name an eval.csv column")
        for name in ("higher_is_better", "run"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"experiment.{name}={getattr(self, name)!r} is invalid; it must be true or false")
        if not _is_number(self.threshold) or not math.isfinite(self.threshold):
            raise ValueError(f"experiment.threshold={self.threshold!r} is invalid; it must be a number")
        if self.threshold_mode != "absolute" and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"experiment.threshold={self.threshold!r} is invalid; it must be a fraction in (0, 1]")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(
                f"experiment.threshold_mode={self.threshold_mode!r} is invalid; choose one of {THRESHOLD_MODES}"
            )
        if self.table_metrics is None:
            self.table_metrics = {}
        if not isinstance(self.table_metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in self.table_metrics.items()
        ):
            raise ValueError(
                f"experiment.table_metrics={self.table_metrics!r} is invalid; "
                "map eval.csv columns to their higher-is-better flag, e.g. {mean_max_reward: true}"
            )
        for name, low in (("last_k", 1), ("parallel", 1), ("n_boot", 100), ("bootstrap_seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"experiment.{name}={value!r} is invalid; it must be an integer >= {low}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"experiment.threads={self.threads!r} is invalid; it must be an integer >= 1 or null")
        if self.out_root is not None and (not isinstance(self.out_root, str) or not self.out_root):
            raise ValueError(f"experiment.out_root={self.out_root!r} is invalid; give a folder path or null")
        if not _is_number(self.ci) or not 0.0 < self.ci < 1.0:
            raise ValueError(f"experiment.ci={self.ci!r} is invalid; it must be in (0, 1), e.g. 0.95")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"experiment.progress={self.progress!r} is invalid; choose one of {PROGRESS_MODES}")
        if not isinstance(self.description, str):
            raise ValueError(f"experiment.description={self.description!r} is invalid; it must be a string")

    @property
    def output_root(self) -> Path:
        """Where the runs and the report go."""
        return Path(self.out_root) if self.out_root else Path("runs") / "compare" / self.name

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.methods]

    def method(self, label: str) -> MethodSpec:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(f"no method labelled {label!r}; labels: {self.labels}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts) for YAML/JSON."""
        out = dataclasses.asdict(self)
        out["methods"] = [{"label": m.label, "overrides": list(m.overrides)} for m in self.methods]
        for key in ("base", "extra", "seeds"):
            out[key] = list(out[key])
        return out


def _method(value: Any) -> MethodSpec:
    if isinstance(value, MethodSpec):
        return value
    if isinstance(value, str):
        return MethodSpec(value)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"label", "overrides"})
        if unknown:
            raise ValueError(f"experiment.methods: unknown key {unknown[0]!r}; a method has label and overrides")
        if "label" not in value:
            raise ValueError(f"experiment.methods: entry {value!r} has no label")
        return MethodSpec(value["label"], value.get("overrides") or ())
    raise ValueError(f"experiment.methods: entry {value!r} is invalid; write {{label: knn-k2, overrides: [...]}}")


def _seeds(value: Any) -> tuple[int, ...]:
    if _is_int(value):
        if value < 1:
            raise ValueError(f"experiment.seeds={value!r} is invalid; give a count >= 1 or a list of seeds")
        return tuple(range(value))
    if isinstance(value, list | tuple) and value and all(_is_int(s) and s >= 0 for s in value):
        if len(set(value)) != len(value):
            raise ValueError(f"experiment.seeds={list(value)!r} is invalid; seeds must be distinct")
        return tuple(int(s) for s in value)
    raise ValueError(f"experiment.seeds={value!r} is invalid; give a count >= 1 or a list of integers >= 0")


# -- loading ----------------------------------------------------------------------------------------


def _experiment_dir() -> Path:
    return Path(str(resources.files("diffpolicy_immix_configs"))) / "experiment"


def experiment_names() -> list[str]:
    """Names of the packaged experiments (``configs/experiment/*.yaml``)."""
    folder = _experiment_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _experiment_file(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"experiment={name}: the file does not exist")
        return path
    packaged = _experiment_dir() / f"{name}.yaml"
    if not packaged.is_file():
        raise ValueError(f"experiment={name!r} is unknown; packaged experiments: {', '.join(experiment_names())}")
    return packaged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["seeds=5", "extra=[train.steps=500]"]`` -> ``{"seeds": 5, "extra": ["train.steps=500"]}``.

    Values are read as YAML (``5``, ``true``, ``null``, ``[a, b]``, ``{k: v}``); a list item may itself
    contain ``=`` (Hydra overrides). Keys are the top-level fields of ``ExperimentSpec`` plus ``experiment``.
    """
    valid = {f.name for f in dataclasses.fields(ExperimentSpec)} | {"experiment"}
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is invalid; write key=value, e.g. experiment=reach_around seeds=5")
        if key not in valid:
            raise ValueError(f"argument {key!r} is unknown; valid keys: {', '.join(sorted(valid))}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"argument {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        if key in ("base", "extra") and isinstance(value, str):
            value = [value]  # extra=train.steps=500 is one override
        if key in ("name", "task", "metric", "experiment", "description", "out_root") and value is not None:
            value = text.strip()  # keep names verbatim (e.g. a task called "yes" or "1")
        out[key] = value
    return out


def load_experiment(experiment: str | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read ``configs/experiment/<experiment>.yaml`` (or a YAML path) and apply ``key=value`` overrides.

    ``experiment`` may also come from the overrides (``experiment=<name>``).
    """
    values = parse_overrides(list(overrides or []))
    name = values.pop("experiment", None) or experiment
    if not name:
        raise ValueError(f"experiment is not set; pass experiment=<name> (one of: {', '.join(experiment_names())})")
    path = _experiment_file(str(name))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an experiment file must be a mapping of fields")
    valid = {f.name for f in dataclasses.fields(ExperimentSpec)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}")
    data.setdefault("name", path.stem)
    data.update(values)
    for required in ("task", "methods"):
        if required not in data:
            raise ValueError(f"{path}: the experiment has no {required!r}")
    return ExperimentSpec(**data)
