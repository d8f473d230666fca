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
import itertools
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
    "VALIDATION_SEED_OFFSET",
    "ExperimentSpec",
    "MethodSpec",
    "SamplingSweepSpec",
    "SplitSpec",
    "experiment_names",
    "load_experiment",
    "parse_overrides",
    "setting_slug",
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
    sampling_sweep: SamplingSweepSpec | None = None
    """Evaluate every finished run at each setting of a sampling grid on a validation split, choose each
    method's best setting there and evaluate it on the test split (None: only the fixed setting)."""

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
        self.sampling_sweep = _sampling_sweep(self.sampling_sweep)

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
        if self.sampling_sweep is not None:
            out["sampling_sweep"]["grid"] = {k: list(v) for k, v in self.sampling_sweep.grid.items()}
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


# -- the sampling sweep -----------------------------------------------------------------------------

VALIDATION_SEED_OFFSET = 200000
"""First seed of the validation episodes: disjoint from the demonstrations' seeds (``demos.seed + i``, from
0) and the test seeds (``task.eval.seed_offset + i``, from 100000)."""


@dataclass(frozen=True)
class SplitSpec:
    """How much evaluation one (run, sampling setting) gets on one split of the sampling sweep."""

    episodes: int | None = None
    """Policies: rollout episodes (None: the task's ``eval.episodes``)."""
    n: int | None = None
    """Images: generated samples, scored against the split's reference images (None: ``eval.n_samples``)."""
    seed_offset: int | None = None
    """Validation only: a policy resets episode ``i`` with seed ``seed_offset + i``; an image model's sampling
    noise is seeded with the run's seed + ``seed_offset``. None: ``VALIDATION_SEED_OFFSET``."""


@dataclass
class SamplingSweepSpec:
    """Each method at its own best sampling setting, chosen on a validation split (docs/compare.md).

    ``grid`` maps sampling keys of the run configuration (``objective.sampler``,
    ``objective.num_inference_steps``, ``task.eval.guidance_scale``, ... or their short names ``sampler``,
    ``steps``, ``guidance_scale``) to the values to try; the grid is their cartesian product.
    """

    grid: dict[str, tuple[Any, ...]]
    """Full sampling key -> values (a short name given in the file is stored as its key)."""
    validation: SplitSpec = field(default_factory=SplitSpec)
    """Where the setting is chosen: every grid point, every finished run."""
    test: SplitSpec = field(default_factory=SplitSpec)
    """Where the chosen setting is measured: one point per method, every finished run of it."""

    def __post_init__(self) -> None:
        self.grid = _grid(self.grid)
        self.validation = _split("validation", self.validation)
        if self.validation.seed_offset is None:
            self.validation = dataclasses.replace(self.validation, seed_offset=VALIDATION_SEED_OFFSET)
        self.test = _split("test", self.test)
        if self.test.seed_offset is not None:
            raise ValueError(
                "experiment.sampling_sweep.test.seed_offset cannot be set; the test split is the task's own test "
                "seeds (task.eval.seed_offset)"
            )

    @property
    def points(self) -> list[dict[str, Any]]:
        """Every setting of the grid, the cartesian product in file order (the first key varies slowest)."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]


def _value_text(value: Any) -> str:
    """How a grid value appears in a setting's label: ``true``, ``20``, ``1.5``, ``ddim``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_slug(point: dict[str, Any]) -> str:
    """A path-safe label of a grid point, short names in grid order: ``steps=5,sampler=ddim``."""
    from diffpolicy_immix.app.config import SAMPLING_KEYS

    return ",".join(f"{SAMPLING_KEYS.get(k, k)}={_value_text(v)}" for k, v in point.items())


def _grid(value: Any) -> dict[str, tuple[Any, ...]]:
    from diffpolicy_immix.app.config import sampling_key

    where = "experiment.sampling_sweep.grid"
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where}={value!r} is invalid; map sampling keys to lists of values, e.g. {{steps: [5, 10]}}")
    out: dict[str, tuple[Any, ...]] = {}
    for name, values in value.items():
        try:
            key = sampling_key(str(name))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if key in out:
            raise ValueError(f"{where}: {name!r} names {key} a second time")
        if not isinstance(values, list | tuple):
            values = [values]
        if not values or not all(_is_number(v) or isinstance(v, str | bool) for v in values):
            raise ValueError(f"{where}.{name}={values!r} is invalid; give a list of numbers, strings or booleans")
        texts = [_value_text(v) for v in values]
        bad = [t for t in texts if not _SAFE_NAME.match(t)]
        if bad:
            raise ValueError(f"{where}.{name}: value {bad[0]!r} is invalid; use letters, digits and _ . + -")
        if len(set(texts)) != len(texts):
            raise ValueError(f"{where}.{name}={list(values)!r} is invalid; the values must be distinct")
        out[key] = tuple(values)
    return out


def _split(name: str, value: Any) -> SplitSpec:
    where = f"experiment.sampling_sweep.{name}"
    if isinstance(value, SplitSpec):
        value = dataclasses.asdict(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}={value!r} is invalid; write e.g. {{episodes: 20}} or {{n: 500}}")
    unknown = sorted(set(value) - {"episodes", "n", "seed_offset"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: episodes, n, seed_offset")
    for key, low in (("episodes", 1), ("n", 2), ("seed_offset", 0)):
        v = value.get(key)
        if v is not None and (not _is_int(v) or v < low):
            raise ValueError(f"{where}.{key}={v!r} is invalid; it must be an integer >= {low}")
    return SplitSpec(**value)


def _sampling_sweep(value: Any) -> SamplingSweepSpec | None:
    if value is None or isinstance(value, SamplingSweepSpec):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"experiment.sampling_sweep={value!r} is invalid; give a mapping with grid, validation, test")
    unknown = sorted(set(value) - {"grid", "validation", "test"})
    if unknown:
        raise ValueError(f"experiment.sampling_sweep: unknown key {unknown[0]!r}; valid keys: grid, validation, test")
    if "grid" not in value:
        raise ValueError("experiment.sampling_sweep has no grid; e.g. grid: {objective.num_inference_steps: [5, 10]}")
    return SamplingSweepSpec(value["grid"], value.get("validation"), value.get("test"))


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
