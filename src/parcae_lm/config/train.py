"""The run configuration: everything a training run needs besides the architecture, in groups.

Each field carries a one-line docstring right below it; that one source feeds `parcae train --help`,
the packaged YAML files and the code. The architecture is a named model config (`model_name`) plus
field overrides (`model`), checked against that config's dataclass.

Parsing (YAML files, `--group.field value` tokens, nested or dotted mappings) is jsonargparse's job;
this module adds the packaged configs, the merge rule for budgets and messages that name
`group.field` and the value at fault:

    cfg = load_run_config("tiny", {"train.max_steps": 20, "model.n_embd": 96})
    cfg = load_run_config(None, ["--config", "tiny", "--optim.muon_lr", "4e-3"])
    cfg = cfg.replace({"train.max_tokens": 1e6})  # a new budget replaces the old one
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser, get_loader, set_parsing_settings
from jsonargparse.typing import register_type

from parcae_lm.config.fields import check_types
from parcae_lm.config.model import ModelConfig, create_config
from parcae_lm.errors import ConfigError

DEFAULT_CONFIG = "tiny"  # what `parcae train` runs with no arguments


# Member names are the spellings of the YAML files and flags (`precision: bf16`, `--system.strategy fsdp`).
class Precision(enum.StrEnum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    bf16 = "bf16"  # bf16 autocast (fp32 weights and optimizer state)
    fp32 = "fp32"


class Strategy(enum.StrEnum):
    ddp = "ddp"  # replicate the model, all-reduce gradients (also the single-process path)
    fsdp = "fsdp"  # FSDP2 `fully_shard` per block, for the large configs


# ---------------------------------------------------------------------- the groups


@dataclass
class DataArgs:
    shard_dir: str | None = None
    """Token shards (train/ and val/); null builds the default Shakespeare corpus and its shards."""
    tokenizer_dir: str | None = None
    """The tokenizer the shards were written with; required with shard_dir, null with the default corpus."""
    vocab_size: int = 4096
    """Tokenizer size when the default corpus is prepared here (ignored with shard_dir)."""
    seq_len: int = 256
    """Tokens per training sequence."""
    doc_masking: bool = False
    """Pass document ids so attention never crosses a document boundary."""

    def __post_init__(self) -> None:
        check_types(self, "data.")
        _positive(self, "data", "vocab_size", "seq_len")
        for name in ("shard_dir", "tokenizer_dir"):
            if getattr(self, name) == "":
                raise ConfigError(f"data.{name} must be a directory path or null, got an empty string")
        if (self.shard_dir is None) != (self.tokenizer_dir is None):
            raise ConfigError(
                "data.shard_dir and data.tokenizer_dir go together: give both, or neither for the default "
                f"corpus (got shard_dir={self.shard_dir!r}, tokenizer_dir={self.tokenizer_dir!r})"
            )


BUDGET_FIELDS = ("max_steps", "max_tokens", "max_flops", "token_to_param_ratio", "max_time_minutes")
MAX_SEED = (1 << 63) - 1  # torch.manual_seed takes a signed 64-bit seed


@dataclass
class TrainArgs:
    micro_batch_size: int = 16
    """Sequences per forward/backward on one process."""
    global_batch_size: int = 16
    """Sequences per optimizer step: micro_batch_size x accumulation steps x processes."""
    max_steps: int | None = None
    """Budget: optimizer steps (give exactly one budget)."""
    max_tokens: float | None = None
    """Budget: training tokens, rounded down to whole steps."""
    max_flops: float | None = None
    """Budget: training FLOPs, turned into tokens with the model's FLOPs per token."""
    token_to_param_ratio: float | None = None
    """Budget: training tokens per model parameter."""
    max_time_minutes: float | None = None
    """Budget: wall clock for the whole command, data preparation and final evaluation included."""
    grad_clip: float = 1.0
    """Clip the global gradient L2 norm to this; <= 0 disables clipping (the norm is still logged)."""

    def __post_init__(self) -> None:
        check_types(self, "train.")
        _positive(self, "train", "micro_batch_size", "global_batch_size")
        for name in BUDGET_FIELDS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"train.{name} must be > 0 or null, got {value}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size})"
            )

    def budgets(self) -> dict[str, float]:
        """The budget fields that are set."""
        return {k: getattr(self, k) for k in BUDGET_FIELDS if getattr(self, k) is not None}


@dataclass
class OptimArgs:
    """MuonAdamW: Muon on the blocks' matrices, AdamW on everything else; a trapezoid LR schedule."""

    muon_lr: float = 8e-3
    """Muon learning rate (before its shape scale sqrt(max(1, rows/cols)))."""
    adam_lr: float = 8e-3
    """AdamW learning rate (embeddings, norms, injection, head)."""
    adam_betas: tuple[float, float] = (0.8, 0.95)
    """AdamW (beta1, beta2), each in [0, 1)."""
    adam_eps: float = 1e-10
    """AdamW epsilon."""
    adam_weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    muon_momentum: float = 0.95
    """Muon (Nesterov) momentum after its warmup."""
    muon_momentum_warmup_start: float = 0.85
    """Muon momentum at step 0, raised linearly to muon_momentum."""
    muon_momentum_warmup_steps: int = 300
    """Optimizer steps of the Muon momentum warmup."""
    muon_weight_decay: float = 0.2
    """Muon weight decay at the start; it decays linearly to 0 over the run."""
    muon_ns_steps: int = 5
    """Newton-Schulz iterations of Muon's orthogonalisation."""
    warmup_fraction: float = 0.0
    """Fraction of the run with a linear LR warmup."""
    cooldown_fraction: float = 0.5
    """Fraction at the end of the run with a linear LR decay to min_lr_ratio x lr."""
    min_lr_ratio: float = 0.0
    """LR floor at the end of the cooldown, as a fraction of the base LRs."""

    def __post_init__(self) -> None:
        check_types(self, "optim.")
        _positive(self, "optim", "muon_lr", "adam_lr", "adam_eps", "muon_ns_steps")
        _at_least_zero(self, "optim", "muon_momentum_warmup_steps", "muon_weight_decay", "adam_weight_decay")
        for name in ("warmup_fraction", "cooldown_fraction", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"optim.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_fraction + self.cooldown_fraction > 1.0:
            raise ConfigError(
                "optim.warmup_fraction + optim.cooldown_fraction must be <= 1, got "
                f"{self.warmup_fraction} + {self.cooldown_fraction}"
            )
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"optim.adam_betas must be in [0, 1), got {list(self.adam_betas)}")
        for name in ("muon_momentum", "muon_momentum_warmup_start"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class SystemArgs:
    precision: Precision = Precision.auto
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 (autocast; fp32 weights and state) or fp32."""
    compile: bool = False
    """torch.compile each transformer block (the recurrence loop stays eager)."""
    activation_checkpointing: bool = False
    """Recompute each gradient-carrying recurrence iteration (Parcae) or block (GPT) in the backward."""
    strategy: Strategy = Strategy.ddp
    """Multi-process wrapping: ddp (replicate) or fsdp (FSDP2, shard each prelude/coda block)."""
    device: str | None = None
    """Torch device; null picks cuda:<local rank> when CUDA is available, else cpu."""
    threads: int | None = None
    """Torch CPU threads; null picks the fastest of 1..cores by a matmul benchmark."""

    def __post_init__(self) -> None:
        check_types(self, "system.")
        _positive_or_null(self, "system", "threads")
        if self.device is not None and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"system.device must be cpu, cuda, cuda:N, mps or null, got {self.device!r}")


@dataclass
class EvalArgs:
    interval: int = 100
    """Evaluate on the validation split every this many optimizer steps."""
    batches: int | None = None
    """Validation micro-batches per periodic evaluation; null evaluates the whole split."""
    batch_size: int | None = None
    """Sequences per validation batch; null uses train.micro_batch_size."""
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Parcae validation depths (the mean recurrence is always added); GPT evaluates once."""
    final_depths: list[int] | None = None
    """Depths of the final whole-split evaluation; null uses eval.depths."""

    def __post_init__(self) -> None:
        check_types(self, "eval.")
        _positive(self, "eval", "interval")
        _positive_or_null(self, "eval", "batches", "batch_size")
        for name in ("depths", "final_depths"):
            depths = getattr(self, name)
            if depths is not None and (not depths or any(d <= 0 for d in depths)):
                raise ConfigError(f"eval.{name} must be a non-empty list of positive ints, got {depths}")


@dataclass
class CheckpointArgs:
    interval: int = 500
    """Write a resumable checkpoint every this many optimizer steps (the final step is always saved)."""
    keep_last_k: int = 2
    """Checkpoints kept in the run directory; older ones are deleted."""

    def __post_init__(self) -> None:
        check_types(self, "checkpoint.")
        _positive(self, "checkpoint", "interval", "keep_last_k")


@dataclass
class LogArgs:
    interval: int = 10
    """Log training loss, throughput and diagnostics every this many optimizer steps."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also log to TensorBoard (run_dir/tensorboard; needs the track extra)."""
    wandb: bool = False
    """Also log to Weights & Biases in offline mode (sync later with `wandb sync`; needs the track extra)."""
    wandb_project: str = "parcae"
    """Weights & Biases project name."""

    def __post_init__(self) -> None:
        check_types(self, "log.")
        _positive(self, "log", "interval")
        if not self.wandb_project:
            raise ConfigError("log.wandb_project must be a non-empty string")


@dataclass
class SampleArgs:
    prompts: list[str] = field(default_factory=lambda: ["ROMEO:", "JULIET:", "First Citizen:"])
    """Prompts continued by the final model into samples.txt."""
    tokens: int = 128
    """New tokens per sample."""
    temperature: float = 0.8
    """Sampling temperature; 0 is greedy."""

    def __post_init__(self) -> None:
        check_types(self, "sample.")
        _positive(self, "sample", "tokens")
        if self.temperature < 0:
            raise ConfigError(f"sample.temperature must be >= 0, got {self.temperature}")


# ---------------------------------------------------------------------- the run


@dataclass
class RunConfig:
    """A training run: its name, output, seed, model and resume (the groups hold the rest)."""

    run_name: str | None = None
    """Run directory name under out_dir; null: <config name>-<UTC time>."""
    out_dir: str = "runs"
    """Where run directories go; out_dir/latest points at the newest finished run."""
    seed: int = 42
    """Seeds data order, depth sampling, initial states and samples."""
    model_name: str = "parcae-tiny"
    """Named model config (`parcae info NAME --json` shows its fields)."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the named model config's fields, e.g. --model.n_embd 128 (vocab/block size: the data's)."""
    resume: bool = False
    """Continue from the newest checkpoint in the run directory."""
    data: DataArgs = field(default_factory=DataArgs)
    """Corpus and tokenizer."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Batch and budget (exactly one budget; one given here replaces the config file's)."""
    optim: OptimArgs = field(default_factory=OptimArgs)
    """Optimizer and schedules."""
    system: SystemArgs = field(default_factory=SystemArgs)
    """Device, precision and parallelism."""
    eval: EvalArgs = field(default_factory=EvalArgs)
    """Validation during and after training."""
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    """Resumable checkpoints."""
    log: LogArgs = field(default_factory=LogArgs)
    """Metrics and progress."""
    sample: SampleArgs = field(default_factory=SampleArgs)
    """Samples written at the end of the run."""

    def __post_init__(self) -> None:
        check_types(self)
        # Not hidden (temporary files start with '.'), not `.`/`..`, not out_dir's `latest` link.
        if self.run_name is not None and (
            not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", self.run_name) or self.run_name == "latest"
        ):
            raise ConfigError(
                "run_name may only contain letters, digits, '.', '_' and '-', may not start with '.' and "
                f"may not be 'latest' (out_dir's link to the newest run), got {self.run_name!r}"
            )
        if not self.out_dir:
            raise ConfigError("out_dir must be a directory path, got an empty string")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, 2^63 - 1], got {self.seed}")
        self.model = model_overrides(self.model_name, self.model)
        try:  # the architecture, checked now; its fit to the data is checked by model_config at run time
            create_config(self.model_name, **self.model)
        except ConfigError as e:
            raise ConfigError(f"model {self.model_name} with overrides {self.model}: {e}") from None
        given = self.train.budgets()
        if len(given) != 1:
            raise ConfigError(
                f"give exactly one training budget among {', '.join('train.' + k for k in BUDGET_FIELDS)}; "
                "got " + (", ".join(f"train.{k}={v}" for k, v in given.items()) if given else "none")
            )

    # ------------------------------------------------------------------ derived values
    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each of `world_size` processes."""
        batch, micro = self.train.global_batch_size, self.train.micro_batch_size
        if batch % world_size or (batch // world_size) % micro:
            raise ConfigError(
                f"train.global_batch_size {batch} does not split into {world_size} rank(s) x "
                f"train.micro_batch_size {micro} x an integer number of accumulation steps"
            )
        return batch // world_size // micro

    @property
    def tokens_per_step(self) -> int:
        return self.train.global_batch_size * self.data.seq_len

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The architecture: the named config with the overrides, sized for the tokenizer and seq_len."""
        overrides = {"vocab_size": vocab_size, "block_size": self.data.seq_len, **self.model}
        mcfg = create_config(self.model_name, **overrides)
        if mcfg.vocab_size < vocab_size:
            raise ConfigError(
                f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {vocab_size}"
            )
        if mcfg.block_size < self.data.seq_len:
            raise ConfigError(
                f"model.block_size={mcfg.block_size} is shorter than data.seq_len={self.data.seq_len}"
            )
        return mcfg

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain nested values (enums as their values, tuples as lists), as in config.yaml."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with nested or dotted overrides applied (and checked), e.g. {"train.max_steps": 5}."""
        return _parse(_with_overrides(self.to_dict(), _nest(overrides, "overrides")), "overrides")


# ---------------------------------------------------------------------- loading


def packaged_config_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _packaged_dir().iterdir() if p.name.endswith(".yaml"))


def load_run_config(
    name_or_path: str | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()
) -> RunConfig:
    """A packaged run config (`tiny`, `parcae-small-140m`, ...) or a YAML file, with overrides applied.

    `overrides` is a mapping of nested or dotted keys ({"optim.muon_lr": 4e-3, "model": {"n_embd": 96}})
    or command-line tokens (["--optim.muon_lr", "4e-3", "--config", "tiny"]); with tokens, `--config`
    may name the base instead of `name_or_path`. A budget among the overrides replaces the base's budget.
    Without a run_name, the run is named <config name>-<UTC time>.
    """
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a mapping or a list of tokens, got the string {overrides!r}")
    if isinstance(overrides, Mapping):
        given = _nest(overrides, "overrides")
    else:
        given = _parse_tokens(list(overrides))
    from_tokens = given.pop("config", None)
    if from_tokens is not None and name_or_path is not None:
        raise ConfigError(f"two base configs given: {name_or_path!r} and --config {from_tokens!r}")
    name, base = read_config_file(from_tokens or name_or_path or DEFAULT_CONFIG)
    merged = _with_overrides(base, given)
    if merged.get("run_name") is None:
        merged["run_name"] = default_run_name(name)
    return _parse(merged, f"run config {name}")


def read_config_file(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """(config name, its nested mapping) for a YAML path or a packaged config name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"run config file {path} does not exist")
        name, text = path.stem, path.read_text()
    else:
        resource = _packaged_dir() / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown run config {name_or_path!r}: not a file, and not one of the packaged configs "
                f"({', '.join(packaged_config_names())})"
            )
        name, text = name_or_path, resource.read_text()
    try:  # jsonargparse's YAML reading, where 61.6e9 is a number as on the command line
        raw = get_loader("yaml")(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"run config {name_or_path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"run config {name_or_path}: expected a mapping at the top level")
    return name, raw


def default_run_name(config_name: str) -> str:
    return f"{config_name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"


def model_overrides(model_name: str | type[ModelConfig], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` typed against the named model config's dataclass fields (or those of a config class, for
    a saved model's config); unknown fields are errors."""
    cls = model_name if isinstance(model_name, type) else type(create_config(model_name))
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"model: expected a mapping of {cls.__name__} fields, got {overrides!r}")
    known = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown model field {unknown[0]!r} for {cls.__name__}"
            + ("" if isinstance(model_name, type) else f" ({model_name})")
            + f"; known: {', '.join(sorted(known))}"
        )
    try:
        parsed = _model_parser(cls).parse_object(dict(overrides), defaults=False)
    except ArgumentError as e:
        raise ConfigError(_type_error(e, cls, "model.")) from None
    return parsed.as_dict()


# ---------------------------------------------------------------------- the parsers


def run_parser() -> ArgumentParser:
    """The jsonargparse parser of RunConfig (plus --config); `parcae train --help` prints it."""
    return _run_parser()


@functools.cache
def _run_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="parcae train", exit_on_error=False)
    parser.add_argument(
        "--config",
        type=str | None,
        default=None,
        help=f"Packaged run config name or YAML file (null: {DEFAULT_CONFIG}); the options override it.",
    )
    parser.add_class_arguments(RunConfig, None, fail_untyped=True)
    return parser


@functools.cache
def _model_parser(cls: type[ModelConfig]) -> ArgumentParser:
    _register_enums(cls)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, None, fail_untyped=True)
    return parser


def _register_enums(cls: type) -> None:
    """The model configs' enums are spelled by value (`sampling_scheme: poisson-fill`), as in config.json."""
    for hint in typing.get_type_hints(cls).values():
        for t in (hint, *typing.get_args(hint)):
            if isinstance(t, type) and issubclass(t, enum.Enum):
                register_type(t, serializer=lambda v: v.value, deserializer=t)


def _parse_tokens(tokens: list[str]) -> dict[str, Any]:
    """The settings given as command-line tokens, typed, as a nested mapping."""
    try:
        ns = _run_parser().parse_args(tokens, defaults=False)
    except ArgumentError as e:
        raise ConfigError(_type_error(e, RunConfig, "", tokens=True)) from None
    return ns.as_dict()


def _parse(raw: dict[str, Any], source: str) -> RunConfig:
    """Check keys and types (jsonargparse), then build the dataclasses (whose defaults fill the rest and
    whose checks cover ranges and combinations)."""
    _check_keys(raw, RunConfig, "", source)
    try:
        given = _run_parser().parse_object(raw, defaults=False).as_dict()
    except ArgumentError as e:
        raise ConfigError(f"{source}: {_type_error(e, RunConfig, '')}") from None
    given.pop("config", None)
    hints = typing.get_type_hints(RunConfig)
    try:
        groups = {k: hints[k](**v) for k, v in given.items() if dataclasses.is_dataclass(hints[k])}
        return RunConfig(**{**given, **groups})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _check_keys(raw: Mapping[str, Any], cls: type, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {prefix + key!r}; known: {', '.join(hints)}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {prefix + key}: expected a mapping of settings, got {value!r}")
            _check_keys(value, hints[key], f"{prefix}{key}.", source)


def _nest(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted keys to nested mappings: {"optim.muon_lr": 1} -> {"optim": {"muon_lr": 1}}."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {values!r}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r} sets a field inside a value that is not a mapping")
        value = _nest(value, source) if isinstance(value, Mapping) else value
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_overrides(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `base`; a budget among `given` replaces the base's budget instead of conflicting."""
    given_train = given.get("train")
    if isinstance(given_train, Mapping) and any(given_train.get(k) is not None for k in BUDGET_FIELDS):
        base_train = base.get("train")
        if isinstance(base_train, Mapping):
            base = {**base, "train": {k: v for k, v in base_train.items() if k not in BUDGET_FIELDS}}
    return _merge(base, given)


# ---------------------------------------------------------------------- messages

_KEY = re.compile(r'Parser key "([^"]+)"')
_VALUE = re.compile(r"(?:Given value|Got value): (.*)$|'(.*)' is not a valid \w+", re.M)
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def _type_error(err: ArgumentError, cls: type, prefix: str, tokens: bool = False) -> str:
    """One line naming the key, what its type expects and the value given, from a jsonargparse error."""
    text = str(err)
    if tokens and (m := _UNRECOGNIZED.search(text)):
        if not m.group(1).startswith("-"):
            return f"unexpected argument {m.group(1)!r} (a base config is given as --config {m.group(1)})"
        return f"unknown option {m.group(1)} (`parcae train --help` lists the options)"
    key = _KEY.search(text)
    hint = _hint_at(cls, key.group(1)) if key else None
    if key is None or hint is None:
        return " ".join(text.split())
    value = _VALUE.search(text)
    got = f", got {next(g for g in value.groups() if g is not None)!r}" if value else ""
    return f"{prefix}{key.group(1)}: expected {_describe(hint)}{got}"


def _hint_at(cls: type, dotted: str) -> Any:
    hint: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(part)
    return hint


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        count = f"{len(args)} " if origin is tuple else ""
        example = {int: "[1, 2]", float: "[0.9, 0.99]", str: "[a, b]"}.get(args[0], "[...]")
        return f"a list of {count}{_plural(args[0])}, e.g. {example}"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(hint, _describe(hint))


# ---------------------------------------------------------------------- helpers


def _packaged_dir():
    # Package data (pyproject: parcae_lm = ["configs/*.yaml"]); the repo's top-level configs/ links here.
    return resources.files("parcae_lm") / "configs"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, enum.Enum) else value


def _positive(obj: Any, group: str, *names: str) -> None:
    for name in names:
        if not getattr(obj, name) > 0:
            raise ConfigError(f"{group}.{name} must be > 0, got {getattr(obj, name)}")


def _positive_or_null(obj: Any, group: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{group}.{name} must be > 0 or null, got {value}")


def _at_least_zero(obj: Any, group: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{group}.{name} must be >= 0, got {getattr(obj, name)}")
