"""Grids of training runs (`parcae sweep`): expand, budget, run or emit, and collect one results table.

A sweep file is YAML:

    name: recurrence-flops           # used for the output directory and run names
    base: tiny                       # a packaged run config name or a YAML path (relative to this file)
    overrides:                       # applied to every point; dotted keys reach the model config
      seq_len: 64
      model.n_embd: 64
    axes:                            # the grid is the product of the axes
      - model.mean_recurrence: [1, 2, 4, 8]
      - max_flops: [6.0e10, 1.2e11]
      - {adam_lr: [2e-3, 8e-3], muon_lr: [5e-3, 2e-2]}   # one axis whose keys move together
    smoke:                           # optional: a seconds-long variant (`parcae sweep FILE --smoke`)
      base: smoke.yaml               #   replaces base; its overrides go over the overrides above;
      overrides: {max_steps: 4}      #   its axes, if given, replace the axes above
      axes:
        - model.mean_recurrence: [1, 2]

Every point is a `RunConfig` (the packaged/base config + overrides + the point's axis values). Its budget
becomes an explicit step count: `max_flops` C is turned into tokens with the paper's accounting
(`parcae_lm.flops.flops_per_token`, C = (2·N̂₁ + 6·N̂₂)·D) and then into whole optimizer steps, exactly as
the trainer would; `max_tokens` and `token_to_param_ratio` likewise. A wall-clock budget is refused: it
would make points incomparable. When a point sets `model.mean_recurrence` but not the backprop depth, it
gets mean_backprop_depth = ceil(μ_rec / 2), the rule of the paper's recurrence sweep.

Runs go to `OUT/runs/<point name>`. A point is finished when its run directory holds `summary.json` (or
`diverged.json`, written here when the trainer stopped on a non-finite loss), so a second invocation skips
it and an interrupted point resumes from its last checkpoint. The results table, `OUT/results.csv` and
`OUT/results.jsonl`, has one row per finished point with the column names `parcae fit` expects
(flops, mean_recurrence, tokens, n_eff, num_steps, val_loss) plus bpb, per-depth losses and the stability
telemetry (divergence, loss spikes, state norm, spectral radius).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parcae_lm.cache import atomic_write_text
from parcae_lm.errors import ConfigError, TrainingError
from parcae_lm.scaling import table as F
from parcae_lm.scaling.table import json_default, write_table

# A loss spike: a logged training loss above SPIKE_FACTOR x the running minimum of the losses logged
# before it, counted only after the first SPIKE_WARMUP_FRACTION of the run (or the LR warmup, if longer):
# the first steps fall from ln(V) and have no meaningful minimum yet.
SPIKE_FACTOR = 1.5
SPIKE_WARMUP_FRACTION = 0.1

SUMMARY = "summary.json"
DIVERGED = "diverged.json"
_SWEEP_KEYS = {"name", "base", "overrides", "axes", "description", "smoke"}
_SMOKE_KEYS = {"base", "overrides", "axes"}
BUDGET_KEYS = ("max_steps", "max_tokens", "max_flops", "token_to_param_ratio", "max_time_minutes")
# Settings that do not change what a run computes (where it runs, how it reports, resume bookkeeping).
_RUNTIME_KEYS = {
    "out_dir",
    "resume",
    "progress",
    "threads",
    "device",
    "tensorboard",
    "wandb",
    "wandb_project",
}


class Emit(enum.StrEnum):
    TORCHRUN = "torchrun"
    SLURM = "slurm"


class Status(enum.StrEnum):
    OK = "ok"
    DIVERGED = "diverged"  # the trainer stopped on a non-finite loss / gradient / weight


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
    raw = raw or {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{where} must be a mapping of setting -> value")
    return dict(raw)


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
    overrides: dict[str, Any]  # everything applied on top of the base config (dotted keys)
    config: Any  # the RunConfig, with run_name, out_dir and an explicit max_steps
    config_name: str
    model_config: Any
    flops_budget: float | None  # the nominal budget C if the point was given one
    flops_per_token: float
    steps: int
    tokens: int
    params: int
    n_eff: float  # unrolled non-embedding parameters (Parcae: other + μ·core; GPT: core = 0)
    core_params: int

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir) / self.config.run_name

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
        stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        wanted = self.config.to_dict()
        diff = sorted(
            k for k in set(stored) | set(wanted) if k not in _RUNTIME_KEYS and stored.get(k) != wanted.get(k)
        )
        if diff:
            detail = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} here" for k in diff[:4])
            raise ConfigError(
                f"{self.run_dir} holds a run with other settings ({detail}); use another --out or remove it"
            )

    def cli_args(self) -> list[str]:
        """`parcae train` arguments reproducing this point exactly."""
        args = [self.config_name]
        flat = dict(self.overrides)
        flat.update(
            {"run_name": self.config.run_name, "out_dir": self.config.out_dir, "max_steps": self.steps}
        )
        for key in ("max_flops", "max_tokens", "token_to_param_ratio", "max_time_minutes"):
            flat.pop(key, None)
        flat["resume"] = True  # a resubmitted job continues from its last checkpoint
        for k, v in flat.items():
            args += [f"--{k}", _cli_value(v)]
        return args


def _cli_value(v: Any) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list | tuple | dict):
        return yaml.safe_dump(v if not isinstance(v, tuple) else list(v), default_flow_style=True).strip()
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _short(key: str) -> str:
    return key[len("model.") :] if key.startswith("model.") else key


def _fmt_value(v: Any) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, float):
        v = f"{v:g}".replace("e+", "e")  # 1e+18 -> 1e18
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(v)).strip("_") or "x"


def point_name(settings: dict[str, Any]) -> str:
    """A run name from the axis values, stable under reordering of other axes' values."""
    if not settings:
        return "base"
    return "-".join(f"{_short(k)}={_fmt_value(v)}".replace("=", "") for k, v in settings.items())


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> the dict `load_run_config` takes (model.* under 'model')."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if k.startswith("model."):
            sub = k[len("model.") :]
            if not sub or "." in sub:
                raise ConfigError(f"sweep key {k!r}: expected model.<field>")
            out.setdefault("model", {})[sub] = v
        elif k == "model":
            if not isinstance(v, dict):
                raise ConfigError("sweep key 'model' must be a mapping of model fields")
            out.setdefault("model", {}).update(v)
        elif "." in k:
            raise ConfigError(f"sweep key {k!r}: only model.<field> keys may be dotted")
        else:
            out[k] = v
    return out


def _tokenizer_vocab(cfg) -> int:
    """The vocabulary the trainer will size the model for: the tokenizer's, or the default corpus's."""
    if cfg.tokenizer_dir is None:
        return cfg.vocab_size
    from parcae_lm.tokenizer import Tokenizer

    tok_dir = Path(cfg.tokenizer_dir)
    if not tok_dir.is_dir():
        raise ConfigError(f"tokenizer_dir {tok_dir} does not exist")
    return Tokenizer.load(tok_dir).vocab_size


def resolve_point(spec: SweepSpec, settings: dict[str, Any], runs_dir: Path) -> SweepPoint:
    """The run config of one grid point, with its budget turned into an explicit number of steps."""
    from parcae_lm.flops import flops_per_token, param_counts
    from parcae_lm.train.config import load_run_config
    from parcae_lm.train.trainer import build_model_config

    flat = dict(spec.overrides)
    flat.update(settings)
    if "model.mean_recurrence" in settings and "model.mean_backprop_depth" not in flat:
        mu = settings["model.mean_recurrence"]
        if isinstance(mu, bool) or not isinstance(mu, int) or mu < 1:
            raise ConfigError(f"model.mean_recurrence must be a positive integer, got {mu!r}")
        flat["model.mean_backprop_depth"] = math.ceil(mu / 2)  # the paper's sweep rule
    for k in ("run_name", "out_dir", "resume"):
        if k in flat:
            raise ConfigError(f"sweep key {k!r} is set by the sweep itself; remove it")
    name = point_name(settings)
    extra = _nest(flat)
    extra.update(run_name=name, out_dir=str(runs_dir), resume=True)
    config_name, cfg = load_run_config(spec.base, extra)
    if cfg.max_time_minutes is not None:
        raise ConfigError(
            f"sweep point {name}: a wall-clock budget (max_time_minutes) makes points incomparable; "
            "give max_steps, max_tokens, max_flops or token_to_param_ratio"
        )
    mcfg = build_model_config(cfg, _tokenizer_vocab(cfg))
    fpt = float(flops_per_token(mcfg, cfg.seq_len))
    counts = param_counts(mcfg)
    budget = None
    if cfg.max_steps is not None:
        steps = cfg.max_steps
    else:
        if cfg.max_flops is not None:
            budget = cfg.max_flops
            tokens = cfg.max_flops / fpt
        elif cfg.max_tokens is not None:
            tokens = cfg.max_tokens
        else:
            tokens = cfg.token_to_param_ratio * counts.total
        steps = int(tokens // cfg.tokens_per_step)  # whole steps, as the trainer rounds
        if steps < 1:
            raise ConfigError(
                f"sweep point {name}: the budget gives {tokens:.3g} tokens, less than one step of "
                f"{cfg.tokens_per_step} tokens"
            )
    cfg = dataclasses.replace(
        cfg, max_steps=steps, max_flops=None, max_tokens=None, token_to_param_ratio=None
    )
    # Unrolled parameters, counted like the FLOPs (embedding lookups out, the tied head's matmul in).
    head = counts.head if mcfg.tie_embeddings else 0
    loops = mcfg.mean_recurrence if getattr(mcfg, "is_parcae", False) else 1
    n_eff = float(counts.non_embedding - counts.core + head + loops * counts.core)
    return SweepPoint(
        name=name,
        settings=settings,
        overrides=flat,
        config=cfg,
        config_name=spec.base,
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


# ---------------------------------------------------------------------------------------------------
# Emitting commands for a cluster


def emit_commands(
    points: list[SweepPoint], kind: Emit, *, nproc_per_node: int = 1, slurm_args: str = ""
) -> list[str]:
    """One shell command per unfinished point (torchrun, or an sbatch submission wrapping it)."""
    lines = []
    for p in points:
        p.check_run_dir()
        if p.finished():
            continue
        train = ["torchrun", "--standalone", f"--nproc_per_node={nproc_per_node}", "--no-python", "parcae"]
        train += ["train", *p.cli_args()]
        cmd = shlex.join(train)
        if kind is Emit.SLURM:
            head = ["sbatch", f"--job-name={p.name}", "--nodes=1", "--ntasks-per-node=1"]
            head += [f"--gpus-per-node={nproc_per_node}", f"--output={p.run_dir}/slurm-%j.log"]
            head += shlex.split(slurm_args)
            # Slurm does not create the --output directory: make it before submitting.
            mkdir = shlex.join(["mkdir", "-p", str(p.run_dir)])
            cmd = f"{mkdir} && {shlex.join(head)} --wrap {shlex.quote(cmd)}"
        lines.append(cmd)
    return lines


# ---------------------------------------------------------------------------------------------------
# Running points and collecting results


def run_point(point: SweepPoint) -> Status:
    """Train one point through the library. A non-finite stop is a result (diverged), not an error."""
    from parcae_lm.train.trainer import train

    try:
        train(point.config, config_name=point.config_name)
    except TrainingError as e:
        record = {"status": Status.DIVERGED.value, "error": str(e), "point": point.name}
        atomic_write_text(point.run_dir / DIVERGED, json.dumps(record, indent=2) + "\n")
        return Status.DIVERGED
    return Status.OK


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def spike_stats(
    steps: list[int], losses: list[float | None], total_steps: int, warmup_steps: int = 0
) -> dict:
    """Loss spikes of a training curve (see SPIKE_FACTOR) and whether it ended above its running minimum."""
    start = max(warmup_steps, int(SPIKE_WARMUP_FRACTION * total_steps))
    running_min = math.inf
    spikes, worst = 0, 1.0
    for s, loss in zip(steps, losses):
        if loss is None or not math.isfinite(loss):
            spikes += 1
            worst = math.inf
            continue
        if s > start and math.isfinite(running_min):
            ratio = loss / running_min
            worst = max(worst, ratio)
            if ratio > SPIKE_FACTOR:
                spikes += 1
        running_min = min(running_min, loss)
    final = next((x for x in reversed(losses) if x is not None), None)
    end_ratio = final / running_min if final is not None and math.isfinite(running_min) else math.inf
    return {"loss_spikes": spikes, "max_loss_over_min": worst, "final_loss_over_min": end_ratio}


def collect_point(point: SweepPoint) -> dict[str, Any] | None:
    """One results-table row for a finished point (None if it has not run)."""
    from parcae_lm.train.telemetry import read_metrics

    run_dir = point.run_dir
    summary_path, diverged_path = run_dir / SUMMARY, run_dir / DIVERGED
    if not summary_path.is_file() and not diverged_path.is_file():
        return None
    mcfg = point.model_config
    is_parcae = bool(getattr(mcfg, "is_parcae", False))
    row: dict[str, Any] = {"point": point.name}
    row.update(point.settings)
    row.update(
        {
            F.FLOPS: point.flops,
            "flops_actual": point.tokens * point.flops_per_token,
            "flops_per_token": point.flops_per_token,
            "model": mcfg.name,
            F.MEAN_RECURRENCE: mcfg.mean_recurrence if is_parcae else None,
            "mean_backprop_depth": mcfg.mean_backprop_depth if is_parcae else None,
            F.NUM_STEPS: mcfg.mean_recurrence if is_parcae else None,  # the depth val_loss is measured at
            F.TOKENS: point.tokens,
            "steps": point.steps,
            "params": point.params,
            "core_params": point.core_params,
            F.N_EFF: point.n_eff,
        }
    )
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        row["status"] = Status.OK.value
        row[F.LOSS] = summary["val_loss"]
        row["val_bpb"] = summary["val_bpb"]
        for k, v in sorted(summary.get("val", {}).items()):
            if "_d" in k:  # loss_d4 -> val_loss_d4, bpb_d4 -> val_bpb_d4
                row[f"val_{k}"] = v
        row["train_seconds"] = summary.get("train_seconds")
    else:
        row["status"] = Status.DIVERGED.value
        row[F.LOSS] = None
        row["val_bpb"] = None
    row["diverged_step"] = (train[-1]["step"] if train else 0) if row["status"] == Status.DIVERGED else None
    steps = [int(r["step"]) for r in train]
    losses = [_finite(r.get("loss")) for r in train]
    if row["status"] == Status.DIVERGED:
        losses.append(None)  # the step that stopped the run
        steps.append(steps[-1] + 1 if steps else 1)
    warmup = int(point.config.warmup_fraction * point.steps)
    row.update(spike_stats(steps, losses, point.steps, warmup))
    row["train_loss_final"] = next((x for x in reversed(losses) if x is not None), None)
    row["train_loss_min"] = min((x for x in losses if x is not None), default=None)
    # Diverged: stopped on a non-finite value, or ended far above its best loss (blew up, never recovered).
    row["diverged"] = row["status"] == Status.DIVERGED or row["final_loss_over_min"] > SPIKE_FACTOR
    for key in ("state_norm", "spectral_radius", "rel_residual", "grad_norm"):
        vals = [_finite(r.get(key)) for r in train]
        vals = [v for v in vals if v is not None]
        if vals:
            row[f"{key}_first"] = vals[0]
            row[f"{key}_final"] = vals[-1]
            row[f"{key}_max"] = max(vals)
    if row.get("state_norm_first"):
        row["state_norm_growth"] = row["state_norm_final"] / row["state_norm_first"]
    row["run_dir"] = str(run_dir)
    return row


@dataclass
class SweepResult:
    out_dir: Path
    points: list[SweepPoint]
    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    csv: Path
    jsonl: Path


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    collect_only: bool = False,
    progress: bool = True,
    on_point: Callable[[SweepPoint, Status], None] | None = None,
) -> SweepResult:
    """Run every unfinished point in order (resumable), then write the results table."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    points = expand(spec, out)
    plan = {"spec": spec.to_dict(), "points": [_plan_entry(p) for p in points]}
    atomic_write_text(out / "sweep.json", json.dumps(plan, indent=2, default=json_default) + "\n")
    for p in points:
        p.check_run_dir()
    ran, skipped = [], []
    todo = [p for p in points if not p.finished()]
    skipped = [p.name for p in points if p.finished()]
    if not collect_only:
        bar = tqdm(todo, desc=f"sweep {spec.name}", unit="run", disable=not progress)
        for p in bar:
            bar.set_postfix_str(p.name)
            status = run_point(p)
            ran.append(p.name)
            if on_point is not None:
                on_point(p, status)
            # Rewrite the table after every point so an interrupted sweep still leaves a usable one.
            write_table([r for r in (collect_point(q) for q in points) if r is not None], out)
    rows = [r for r in (collect_point(p) for p in points) if r is not None]
    csv_path, jsonl_path = write_table(rows, out)
    return SweepResult(out, points, rows, ran, skipped, csv_path, jsonl_path)


def _plan_entry(p: SweepPoint) -> dict[str, Any]:
    return {
        "name": p.name,
        "settings": p.settings,
        "run_dir": str(p.run_dir),
        "flops_budget": p.flops_budget,
        "flops_per_token": p.flops_per_token,
        "steps": p.steps,
        "tokens": p.tokens,
        "params": p.params,
        "n_eff": p.n_eff,
    }
