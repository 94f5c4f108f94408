"""A sweep: a grid of training runs described by a YAML file, and the run config of every point.

A sweep file is YAML:

    name: recurrence-flops           # used for the output directory and run names
    base: tiny                       # a packaged run config name or a YAML path (relative to this file)
    overrides:                       # applied to every point: run-config keys, dotted (group.field)
      data.seq_len: 64
      model.n_embd: 64
    axes:                            # the grid is the product of the axes
      - model.mean_recurrence: [1, 2, 4, 8]
      - train.max_flops: [6.0e10, 1.2e11]
      - {optim.adam_lr: [2e-3, 8e-3], optim.muon_lr: [5e-3, 2e-2]}   # one axis whose keys move together
    smoke:                           # optional: a seconds-long variant (`parcae sweep FILE --smoke`)
      base: smoke.yaml               #   replaces base; its overrides go over the overrides above;
      overrides: {train.max_steps: 4}  # its axes, if given, replace the axes above
      axes:
        - model.mean_recurrence: [1, 2]

Every point is a `RunConfig` built from data, never from command-line strings: the base config with the
overrides, then the point's axis values (a budget among them replaces the base's). Its budget becomes an
explicit step count, by the trainer's own rule (`parcae_lm.train.budget`): `train.max_flops` C is turned
into tokens with the paper's accounting (`parcae_lm.model.flops.flops_per_token`, C = (2·N̂₁ + 6·N̂₂)·D), then
into whole optimizer steps. A wall-clock budget is refused: it would make points incomparable. When a
point sets `model.mean_recurrence` but not the backprop depth, it gets mean_backprop_depth = ceil(μ_rec / 2),
the rule of the paper's recurrence sweep. Points run in `OUT/runs/<point name>` (see `runner`).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parcae_lm.config.model import ModelConfig
from parcae_lm.config.train import BUDGET_FIELDS, RunConfig, load_run_config
from parcae_lm.errors import ConfigError
from parcae_lm.model.flops import flops_per_token, param_counts
from parcae_lm.tokenizer import Tokenizer
from parcae_lm.train.budget import max_steps

SUMMARY = "summary.json"
DIVERGED = "diverged.json"  # written by the runner when the trainer stopped on a non-finite value
_SWEEP_KEYS = {"name", "base", "overrides", "axes", "description", "smoke"}
_SMOKE_KEYS = {"base", "overrides", "axes"}
BUDGET_KEYS = tuple(f"train.{k}" for k in BUDGET_FIELDS)
_SET_BY_SWEEP = ("run_name", "out_dir", "resume")
# Settings that do not change what a run computes (where it runs, how it reports, resume bookkeeping).
_RUNTIME_KEYS = {
    "out_dir",
    "resume",
    "log.progress",
    "log.tensorboard",
    "log.wandb",
    "log.wandb_project",
    "system.threads",
    "system.device",
}


# ---------------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class Axis:
    """One grid dimension: keys that take their i-th values together."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # values[i] = the i-th setting, one value per key

    def settings(self) -> list[dict[str, Any]]:
        return [dict(zip(self.keys, v)) for v in self.values]


@dataclass
class SweepSpec:
    name: str
    base: str  # packaged run config name or a path
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys
    axes: list[Axis] = field(default_factory=list)
    description: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path, *, smoke: bool = False) -> SweepSpec:
        """The sweep in `path`, or its smoke variant."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep file {path}: invalid YAML: {e}") from None
        return cls.from_dict(raw, source=str(path), base_dir=path.parent, smoke=smoke)

    @classmethod
    def from_dict(
        cls, raw: Any, source: str = "sweep", base_dir: Path | None = None, *, smoke: bool = False
    ) -> SweepSpec:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with keys {', '.join(sorted(_SWEEP_KEYS))}")
        _check_keys(raw, _SWEEP_KEYS, source)
        if smoke:
            raw = _smoke_variant(raw, source)
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ConfigError(
                f"{source}: 'name' must be a string of letters, digits, '.', '_', '-'; got {name!r}"
            )
        base = raw.get("base", "tiny")
        if not isinstance(base, str):
            raise ConfigError(f"{source}: 'base' must be a run config name or path, got {base!r}")
        if base_dir is not None and base.endswith((".yaml", ".yml")) and not Path(base).is_absolute():
            base = str((base_dir / base).resolve())
        overrides = _overrides(raw.get("overrides"), f"{source}: 'overrides'")
        axes_raw = raw.get("axes") or []
        if not isinstance(axes_raw, list):
            raise ConfigError(f"{source}: 'axes' must be a list of mappings (one per axis)")
        axes = [_parse_axis(a, f"{source}: axes[{i}]") for i, a in enumerate(axes_raw)]
        seen: dict[str, int] = {}
        for i, axis in enumerate(axes):
            for k in axis.keys:
                if k in seen:
                    raise ConfigError(f"{source}: key {k!r} appears in axes[{seen[k]}] and axes[{i}]")
                seen[k] = i
        return cls(name, base, overrides, axes, str(raw.get("description") or ""))

    def with_overrides(self, extra: dict[str, Any]) -> SweepSpec:
        """This sweep with `extra` settings (dotted keys) for every point; a budget among them replaces the
        sweep's budget. The axes are what the sweep is about: setting one of their keys is refused."""
        extra = _overrides(extra, "overrides")
        axis_keys = {k for axis in self.axes for k in axis.keys}
        clash = sorted(set(extra) & axis_keys)
        if clash:
            raise ConfigError(f"sweep {self.name}: {', '.join(clash)} is an axis of the sweep, not a setting")
        merged = dict(self.overrides)
        if any(k in extra for k in BUDGET_KEYS):
            axis_budgets = sorted(axis_keys & set(BUDGET_KEYS))
            if axis_budgets:
                raise ConfigError(
                    f"sweep {self.name}: its budget is an axis ({', '.join(axis_budgets)}); "
                    f"{', '.join(k for k in extra if k in BUDGET_KEYS)} cannot replace it"
                )
            merged = {k: v for k, v in merged.items() if k not in BUDGET_KEYS}
        return dataclasses.replace(self, overrides={**merged, **extra})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base,
            "overrides": self.overrides,
            "axes": [{k: [v[j] for v in a.values] for j, k in enumerate(a.keys)} for a in self.axes],
        }


def _check_keys(raw: dict, known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(sorted(known))})"
        )


def _overrides(raw: Any, where: str) -> dict[str, Any]:
    """Settings as dotted keys (a nested mapping such as `model: {n_embd: 64}` becomes `model.n_embd`), so
    that every setting has one spelling to compare with the axes and the budget keys."""
    raw = raw or {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{where} must be a mapping of setting -> value")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _overrides(value, where).items()})
        else:
            out[key] = value
    return out


def _smoke_variant(raw: dict, source: str) -> dict:
    """The sweep with its `smoke` section applied, named <name>-smoke."""
    smoke = raw.get("smoke")
    if not isinstance(smoke, dict):
        raise ConfigError(f"{source}: no 'smoke' section (a mapping of {', '.join(sorted(_SMOKE_KEYS))})")
    _check_keys(smoke, _SMOKE_KEYS, f"{source}: smoke")
    out = {k: v for k, v in raw.items() if k != "smoke"}
    out["name"] = f"{raw.get('name')}-smoke"
    out["overrides"] = {
        **_overrides(raw.get("overrides"), f"{source}: 'overrides'"),
        **_overrides(smoke.get("overrides"), f"{source}: smoke.overrides"),
    }
    for key in ("base", "axes"):
        if key in smoke:
            out[key] = smoke[key]
    return out


def _parse_axis(raw: Any, where: str) -> Axis:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping of key -> list of values, got {raw!r}")
    lengths = set()
    for k, v in raw.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: keys must be strings, got {k!r}")
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: {k!r} needs a non-empty list of values, got {v!r}")
        lengths.add(len(v))
    if len(lengths) != 1:
        raise ConfigError(
            f"{where}: keys of one axis move together and need lists of equal length, got "
            + ", ".join(f"{k}: {len(v)}" for k, v in raw.items())
        )
    keys = tuple(raw)
    return Axis(keys, tuple(zip(*(raw[k] for k in keys))))


# ---------------------------------------------------------------------------------------------------
# Points


@dataclass
class SweepPoint:
    name: str
    settings: dict[str, Any]  # this point's axis values (dotted keys)
    config: RunConfig  # with run_name, out_dir, resume and an explicit train.max_steps
    model_config: ModelConfig
    flops_budget: float | None  # the nominal budget C if the point was given one
    flops_per_token: float
    steps: int
    tokens: int
    params: int
    n_eff: float  # unrolled non-embedding parameters (Parcae: other + μ·core; GPT: core = 0)
    core_params: int

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir) / str(self.config.run_name)

    @property
    def config_file(self) -> Path:
        """Where `emit` writes this point's resolved run config: OUT/configs/<name>.yaml."""
        return Path(self.config.out_dir).parent / "configs" / f"{self.name}.yaml"

    @property
    def flops(self) -> float:
        """The budget C: the nominal one if given (so budgets group exactly), else tokens x FLOPs/token."""
        return self.flops_budget if self.flops_budget is not None else self.tokens * self.flops_per_token

    def finished(self) -> bool:
        return (self.run_dir / SUMMARY).is_file() or (self.run_dir / DIVERGED).is_file()

    def check_run_dir(self) -> None:
        """Refuse a run directory that was trained with different settings (say, an edited sweep file
        reusing an output directory): skipping it would silently report the old run under the new grid."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return
        stored = _dotted(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        wanted = _dotted(self.config.to_dict())
        diff = sorted(
            k for k in set(stored) | set(wanted) if k not in _RUNTIME_KEYS and stored.get(k) != wanted.get(k)
        )
        if diff:
            detail = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} here" for k in diff[:4])
            raise ConfigError(
                f"{self.run_dir} holds a run with other settings ({detail}); use another --out or remove it"
            )


def _dotted(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {group.field: value}; the model overrides stay one value (keys vary by model)."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        if isinstance(v, dict) and k != "model":
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, float):
        v = f"{v:g}".replace("e+", "e")  # 1e+18 -> 1e18
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(v)).strip("_") or "x"


def point_name(settings: dict[str, Any]) -> str:
    """A run name from the axis values (each key by its last part: model.mean_recurrence=2 ->
    mean_recurrence2), stable under reordering of other axes' values."""
    if not settings:
        return "base"
    return "-".join(f"{k.rsplit('.', 1)[-1]}{_fmt_value(v)}" for k, v in settings.items())


def _tokenizer_vocab(cfg: RunConfig) -> int:
    """The vocabulary the trainer will size the model for: the tokenizer's, or the default corpus's."""
    if cfg.data.tokenizer_dir is None:
        return cfg.data.vocab_size
    tok_dir = Path(cfg.data.tokenizer_dir)
    if not tok_dir.is_dir():
        raise ConfigError(f"data.tokenizer_dir {tok_dir} does not exist")
    return Tokenizer.load(tok_dir).vocab_size


def resolve_point(spec: SweepSpec, settings: dict[str, Any], runs_dir: Path) -> SweepPoint:
    """The run config of one grid point, with its budget turned into an explicit number of steps."""
    given = {**spec.overrides, **settings}
    for k in _SET_BY_SWEEP:
        if k in given:
            raise ConfigError(f"sweep key {k!r} is set by the sweep itself; remove it")
    point = dict(settings)
    if "model.mean_recurrence" in settings and "model.mean_backprop_depth" not in given:
        mu = settings["model.mean_recurrence"]
        if isinstance(mu, bool) or not isinstance(mu, int) or mu < 1:
            raise ConfigError(f"model.mean_recurrence must be a positive integer, got {mu!r}")
        point["model.mean_backprop_depth"] = math.ceil(mu / 2)  # the paper's sweep rule
    name = point_name(settings)
    placement = {"run_name": name, "out_dir": str(runs_dir), "resume": True}
    # Two layers, so that a budget on an axis replaces the one of the base config or the overrides.
    cfg = load_run_config(spec.base, {**spec.overrides, **placement}).replace(point)
    if cfg.train.max_time_minutes is not None:
        raise ConfigError(
            f"sweep point {name}: a wall-clock budget (train.max_time_minutes) makes points incomparable; "
            "give train.max_steps, max_tokens, max_flops or token_to_param_ratio"
        )
    mcfg = cfg.model_config(_tokenizer_vocab(cfg))
    fpt = float(flops_per_token(mcfg, cfg.data.seq_len))
    counts = param_counts(mcfg)
    try:
        steps = max_steps(cfg, fpt, counts.total)
    except ConfigError as e:
        raise ConfigError(f"sweep point {name}: {e}") from None
    budget = cfg.train.max_flops
    cfg = cfg.replace({"train.max_steps": steps})
    # Unrolled parameters, counted like the FLOPs (embedding lookups out, the tied head's matmul in).
    head = counts.head if mcfg.tie_embeddings else 0
    loops = mcfg.mean_recurrence if mcfg.is_parcae else 1
    n_eff = float(counts.non_embedding - counts.core + head + loops * counts.core)
    return SweepPoint(
        name=name,
        settings=settings,
        config=cfg,
        model_config=mcfg,
        flops_budget=budget,
        flops_per_token=fpt,
        steps=steps,
        tokens=steps * cfg.tokens_per_step,
        params=counts.total,
        n_eff=n_eff,
        core_params=counts.core,
    )


def expand(spec: SweepSpec, out_dir: str | Path) -> list[SweepPoint]:
    """All grid points, in axis order (the last axis varies fastest)."""
    runs_dir = Path(out_dir) / "runs"
    combos = itertools.product(*(a.settings() for a in spec.axes)) if spec.axes else [()]
    points = []
    for combo in combos:
        settings: dict[str, Any] = {}
        for part in combo:
            settings.update(part)
        points.append(resolve_point(spec, settings, runs_dir))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sweep {spec.name}: points with identical names {dupes} (repeated axis values?)")
    return points
