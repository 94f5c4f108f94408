"""The run configuration: one flat dataclass, loaded from YAML, overridable from the command line.

Everything a training run needs besides the model architecture lives here; the architecture is a named
model config (`model_name`) plus a dict of overrides (`model`). Unknown YAML keys and unknown `--key`
flags are errors that name the key, and every value is converted to the field's type and validated, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from parcae_lm.errors import ConfigError


class Precision(enum.StrEnum):
    AUTO = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    BF16 = "bf16"  # bf16 autocast (fp32 weights and optimizer state)
    FP32 = "fp32"


class Strategy(enum.StrEnum):
    DDP = "ddp"  # replicate the model, all-reduce gradients (also the single-process path)
    FSDP = "fsdp"  # FSDP2 `fully_shard` per block, for the large configs


@dataclass
class RunConfig:
    # --- run identity and output ---
    run_name: str | None = None  # default: "<config name>-<UTC timestamp>"
    out_dir: str = "runs"  # the run directory is out_dir/run_name
    seed: int = 42

    # --- model: a named config plus field overrides (vocab_size / block_size come from the data) ---
    model_name: str = "parcae-tiny"
    model: dict[str, Any] = field(default_factory=dict)

    # --- data ---
    shard_dir: str | None = None  # token shards; None -> build the default corpus (`prepare_default`)
    tokenizer_dir: str | None = None  # required with shard_dir; None -> the one prepare_default trains
    vocab_size: int = 4096  # tokenizer size when the default corpus is prepared here
    seq_len: int = 256
    doc_masking: bool = False  # pass document ids so attention never crosses a document boundary

    # --- batch: global batch in sequences = micro_batch_size * grad_accum * world_size ---
    micro_batch_size: int = 16
    global_batch_size: int = 16

    # --- budget: exactly one of these ---
    max_steps: int | None = None
    max_tokens: float | None = None
    max_flops: float | None = None  # turned into tokens with parcae_lm.model.flops.flops_per_token
    token_to_param_ratio: float | None = None
    max_time_minutes: float | None = (
        None  # wall clock for the whole command, data prep and final eval included
    )

    # --- optimizer (MuonAdamW: Muon on block matrices, AdamW on the rest) ---
    muon_lr: float = 8e-3
    adam_lr: float = 8e-3
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    adam_weight_decay: float = 0.0
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    muon_weight_decay: float = 0.2  # decays linearly to 0 over the run
    muon_ns_steps: int = 5
    warmup_fraction: float = 0.0
    cooldown_fraction: float = 0.5  # linear decay to min_lr_ratio * lr over the last fraction of the run
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # global L2 norm; <= 0 disables clipping (the pre-clip norm is still logged)

    # --- systems ---
    precision: Precision = Precision.AUTO
    compile: bool = False  # torch.compile each transformer block (the recurrence loop stays eager)
    activation_checkpointing: bool = False  # recompute each gradient-carrying recurrence iteration (Parcae)
    strategy: Strategy = Strategy.DDP
    device: str | None = None  # None -> cuda:<local rank> if available, else cpu
    threads: int | None = None  # torch CPU threads; None -> the fastest of 1..cores by a matmul benchmark

    # --- evaluation, logging, checkpoints ---
    log_interval: int = 10
    eval_interval: int = 100
    eval_batches: int | None = None  # validation micro-batches per eval; None -> the whole split
    eval_batch_size: int | None = None  # None -> micro_batch_size
    # Parcae validation depths (the mean recurrence is always added); GPT evaluates once.
    val_depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    final_val_depths: list[int] | None = None  # the final full-split evaluation; None -> val_depths
    save_interval: int = 500  # in optimizer steps; the final step is always saved
    keep_last_k: int = 2
    resume: bool = False  # continue from the newest checkpoint in the run directory
    tensorboard: bool = False
    wandb: bool = False  # offline mode; sync later with `wandb sync`
    wandb_project: str = "parcae"
    progress: bool = True  # tqdm bar
    sample_prompts: list[str] = field(default_factory=lambda: ["ROMEO:", "JULIET:", "First Citizen:"])
    sample_tokens: int = 128
    sample_temperature: float = 0.8

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        budgets = {
            k: getattr(self, k)
            for k in ("max_steps", "max_tokens", "max_flops", "token_to_param_ratio", "max_time_minutes")
        }
        given = [k for k, v in budgets.items() if v is not None]
        if len(given) != 1:
            raise ConfigError(
                f"give exactly one training budget among {', '.join(budgets)}; got "
                + (", ".join(f"{k}={budgets[k]}" for k in given) if given else "none")
            )
        for k in given:
            if not budgets[k] > 0:
                raise ConfigError(f"{k} must be > 0, got {budgets[k]}")
        positive = [
            "seq_len",
            "micro_batch_size",
            "global_batch_size",
            "vocab_size",
            "log_interval",
            "eval_interval",
            "save_interval",
            "keep_last_k",
            "muon_ns_steps",
            "sample_tokens",
        ]
        for k in positive:
            if getattr(self, k) <= 0:
                raise ConfigError(f"{k} must be > 0, got {getattr(self, k)}")
        for k in ("eval_batches", "eval_batch_size", "threads"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ConfigError(f"{k} must be > 0 or null, got {v}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size})"
            )
        for k in ("muon_lr", "adam_lr", "adam_eps"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"{k} must be > 0, got {getattr(self, k)}")
        for k in ("warmup_fraction", "cooldown_fraction", "min_lr_ratio"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ConfigError(f"{k} must be in [0, 1], got {getattr(self, k)}")
        if self.warmup_fraction + self.cooldown_fraction > 1.0:
            raise ConfigError(
                f"warmup_fraction + cooldown_fraction must be <= 1, got "
                f"{self.warmup_fraction} + {self.cooldown_fraction}"
            )
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be in [0, 1), got {self.adam_betas}")
        for k in ("muon_momentum", "muon_momentum_warmup_start"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ConfigError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.muon_momentum_warmup_steps < 0 or self.muon_weight_decay < 0 or self.adam_weight_decay < 0:
            raise ConfigError(
                "muon_momentum_warmup_steps, muon_weight_decay and adam_weight_decay must be >= 0"
            )
        for key in ("val_depths", "final_val_depths"):
            depths = getattr(self, key)
            if depths is not None and (not depths or any(d <= 0 for d in depths)):
                raise ConfigError(f"{key} must be a non-empty list of positive ints, got {depths}")
        if (self.shard_dir is None) != (self.tokenizer_dir is None):
            raise ConfigError(
                "shard_dir and tokenizer_dir go together: give both, or neither for the default corpus"
            )
        if self.run_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name):
            raise ConfigError(
                f"run_name may only contain letters, digits, '.', '_' and '-', got {self.run_name!r}"
            )
        if self.sample_temperature < 0:
            raise ConfigError(f"sample_temperature must be >= 0, got {self.sample_temperature}")

    # ------------------------------------------------------------------ derived values
    def grad_accum_steps(self, world_size: int = 1) -> int:
        per_rank = self.global_batch_size // world_size
        if self.global_batch_size % world_size or per_rank % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} does not split into {world_size} rank(s) x "
                f"micro_batch_size {self.micro_batch_size} x an integer number of accumulation steps"
            )
        return per_rank // self.micro_batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------- value conversion

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot convert {value!r}")
    if hint is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(m.value for m in hint)
            raise ConfigError(f"{key}: expected one of {choices}, got {value!r}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            s = value.strip().replace("_", "")
            if re.fullmatch(r"[+-]?\d+", s):
                return int(s)
            if _FLOAT_RE.match(s) and float(s).is_integer():
                return int(float(s))
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip().replace("_", "")):
            out = float(value.strip().replace("_", ""))
        else:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return out
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _parse_sequence(value, key)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {hint}")


def _parse_scalar(text: str) -> Any:
    """A command-line value for an untyped (model override) key: YAML, but '8e-3' is a float."""
    s = text.strip()
    if _FLOAT_RE.match(s.replace("_", "")) and not re.fullmatch(r"[+-]?\d+", s.replace("_", "")):
        return float(s.replace("_", ""))
    try:
        return yaml.safe_load(s)
    except yaml.YAMLError:
        return s


def _parse_sequence(text: str, key: str) -> list[Any]:
    s = text.strip()
    if s.startswith("["):
        try:
            out = yaml.safe_load(s)
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse list {text!r}: {e}") from None
        if not isinstance(out, list):
            raise ConfigError(f"{key}: expected a list, got {text!r}")
        return out
    return [p.strip() for p in s.split(",") if p.strip()]


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


# ---------------------------------------------------------------------- loading


def _packaged_dir():
    # Package data (pyproject: parcae_lm = ["configs/*.yaml"]); the repo's top-level configs/ links here.
    return resources.files("parcae_lm") / "configs"


def packaged_config_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _packaged_dir().iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> tuple[str, str]:
    """Return (config name, YAML text) for a file path or a packaged config name ('tiny', 'parcae-small-140m')."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"run config file {path} does not exist")
        return path.stem, path.read_text()
    resource = _packaged_dir() / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ConfigError(
            f"unknown run config {name_or_path!r}: not a file, and not one of the packaged configs "
            f"({', '.join(packaged_config_names())})"
        )
    return name_or_path, resource.read_text()


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of run settings, got {type(raw).__name__}")
    hints = _hints()
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {key!r} (known keys: {', '.join(hints)})")
        kwargs[key] = _convert(value, hints[key], key)
    if "model" in kwargs and not all(isinstance(k, str) for k in kwargs["model"]):
        raise ConfigError(f"{source}: model override keys must be strings")
    return RunConfig(**kwargs)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ['--key', 'value', '--model.n_embd=128', ...] into a raw dict (values still strings)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected an option like --key value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            key = arg[2:]
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise ConfigError(f"option --{key} needs a value")
            value = args[i + 1]
            i += 2
        key = key.replace("-", "_")
        if key.startswith("model."):
            sub = key[len("model.") :]
            if not sub:
                raise ConfigError(f"option --{key} needs a model field name after 'model.'")
            out.setdefault("model", {})[sub] = _parse_scalar(value)
        else:
            if key == "model":
                raise ConfigError("override model fields one at a time: --model.<field> value")
            out[key] = value
    return out


def load_run_config(
    name_or_path: str | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> tuple[str, RunConfig]:
    """Load a YAML run config (default: the packaged 'tiny') and apply command-line overrides."""
    name, text = resolve_config_path(name_or_path or "tiny")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"run config {name_or_path or name}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"run config {name}: expected a mapping at the top level")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    hints = _hints()
    for key in extra:
        if key not in hints:
            raise ConfigError(f"unknown option --{key} (known: {', '.join('--' + k for k in hints)})")
    model = dict(raw.get("model") or {})
    model.update(extra.pop("model", {}))
    if extra:
        # A budget given on the command line replaces the file's budget rather than conflicting with it.
        budget_keys = ("max_steps", "max_tokens", "max_flops", "token_to_param_ratio", "max_time_minutes")
        if any(k in extra and str(extra[k]).lower() not in ("null", "none") for k in budget_keys):
            for k in budget_keys:
                if k not in extra:
                    raw.pop(k, None)
    raw.update(extra)
    if model:
        raw["model"] = model
    return name, config_from_dict(raw, source=f"run config {name}")


def coerce_model_overrides(overrides: dict[str, Any], model_config_cls: type) -> dict[str, Any]:
    """Convert override values to the model config dataclass's field types; unknown fields are errors."""
    if not dataclasses.is_dataclass(model_config_cls):
        return dict(overrides)
    hints = typing.get_type_hints(model_config_cls)
    names = {f.name for f in dataclasses.fields(model_config_cls)}
    out = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(
                f"unknown model field {key!r} for {model_config_cls.__name__} (known: {', '.join(sorted(names))})"
            )
        hint = hints.get(key, Any)
        try:
            out[key] = _convert(value, hint, f"model.{key}")
        except ConfigError:
            if typing.get_origin(hint) is None and not isinstance(hint, type):
                out[key] = (
                    value  # a type we do not model (e.g. a forward reference): let the model config validate
                )
            else:
                raise
    return out
