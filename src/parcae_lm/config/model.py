"""Model configurations: typed dataclasses, validation, and the named configs as plain data.

This module imports nothing else of the package except `errors` and `config.fields` (the type check):
every other layer builds on it.

`ParcaeConfig` and `GPTConfig` keep the reference's field names, so the authors' `config.json` files
load (see `from_dict`); options the reference parses from strings are typed values here (enums),
with the reference's strings accepted when loading its configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from parcae_lm.config.fields import check_types
from parcae_lm.errors import ConfigError


class Norm(StrEnum):
    RMSNORM = "RMSNorm"
    LAYERNORM = "LayerNorm"


class Activation(StrEnum):
    RELU2 = "ReLU2"  # ½·relu(x)², the reference's activation (note the ½)
    GELU = "GELU"
    RELU = "ReLU"
    SILU = "SiLU"


class InitStrategy(StrEnum):
    SCALED_ZERO = "scaled-zero"  # all built-ins: output projections start at exactly zero
    SCALED = "scaled"  # output projections std = σ/√(2·depth)


class Injection(StrEnum):
    DIAGONAL = "diagonal"  # Parcae: h ← Ā⊙h + B̄e, Ā = exp(−Δ·exp(A_log)) ∈ (0,1)
    LINEAR = "linear"  # Huginn-style: h ← W[h; e] (unconstrained spectral radius)
    ADD = "add"  # h ← h + e (marginally stable, ρ = 1)


class Discretization(StrEnum):
    EULER = "euler"  # B̄ = Δ·B (the reference)
    ZOH = "zoh"  # B̄ = (I − Ā)·A⁻¹·B, exact zero-order hold for the diagonal A


class StateInit(StrEnum):
    LIKE_INIT = "like-init"  # truncated normal with the embedding init std
    NORMAL = "normal"
    EMBED = "embed"  # N(0, 1/d)
    ZERO = "zero"
    UNIT = "unit"  # standardised per vector


class SamplingScheme(StrEnum):
    POISSON_TRUNCATED_FULL = "poisson-truncated-full"
    POISSON_FULL = "poisson-full"
    POISSON_FILL = "poisson-fill"
    POISSON_UNBOUNDED = "poisson-unbounded"
    POISSON_BOUNDED = "poisson-bounded"
    FIXED = "fixed"


class IterationMethod(StrEnum):
    PER_BATCH = "per-batch"
    PER_SEQUENCE = "per-sequence"
    PER_TOKEN = "per-token"


class CurriculumKind(StrEnum):
    NONE = "none"
    LINEAR = "linear"  # progress = step/N
    SQRT = "sqrt"  # progress = 1 − √(1 − step/N)


class CurriculumTarget(StrEnum):
    FORWARD = "forward"  # ramp the no-grad steps
    BACKWARD = "backward"  # ramp the grad steps
    BOTH = "both"


@dataclass
class ModelConfig:
    """Fields shared by Parcae and GPT (the reference's `Config`)."""

    name: str = ""
    block_size: int = 4096
    vocab_size: int = 50254
    padding_multiple: int = 512
    padded_vocab_size: int | None = None
    n_embd: int = 4096
    intermediate_size: int | None = None
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    rope_base: float = 50000.0
    rope_condense_ratio: float = 1.0
    norm_class_name: Norm = Norm.RMSNORM
    norm_eps: float = 1e-5
    nonlin_name: Activation = Activation.RELU2
    bias: bool = False
    qk_norm: bool = True
    logit_softcap: float | None = None
    tie_embeddings: bool = True
    init_strategy: InitStrategy = InitStrategy.SCALED_ZERO
    init_orthogonal: bool = True

    def __post_init__(self) -> None:
        _coerce_enums(self)
        check_types(self)
        _check_positive(self, "padding_multiple", "n_embd", "num_attention_heads")  # used just below
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.padded_vocab_size is None:
            self.padded_vocab_size = _round_up(self.vocab_size, self.padding_multiple)
        self.validate()

    # -- derived ----------------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.n_embd // self.num_attention_heads

    @property
    def embedding_std(self) -> float:
        return math.sqrt(2.0 / (5.0 * self.n_embd))

    @property
    def is_parcae(self) -> bool:
        return isinstance(self, ParcaeConfig)

    def validate(self) -> None:
        _check_positive(self, "block_size", "vocab_size", "padding_multiple", "n_embd", "num_attention_heads")
        _check_heads(self.n_embd, self.num_attention_heads, self.num_key_value_heads, "")
        if self.padded_vocab_size < self.vocab_size:
            raise ConfigError(
                f"padded_vocab_size={self.padded_vocab_size} is smaller than vocab_size={self.vocab_size}"
            )
        if self.intermediate_size <= 0:
            raise ConfigError(f"intermediate_size must be positive, got {self.intermediate_size}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ConfigError(f"logit_softcap must be positive or null, got {self.logit_softcap}")
        if self.rope_base <= 0 or self.rope_condense_ratio <= 0:
            raise ConfigError("rope_base and rope_condense_ratio must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["_class_name"] = type(self).__name__
        return d

    def replace(self, **overrides: Any):
        return dataclasses.replace(self, **overrides)


@dataclass
class GPTConfig(ModelConfig):
    n_layer: int = 16

    def validate(self) -> None:
        super().validate()
        _check_positive(self, "n_layer")


@dataclass
class ParcaeConfig(ModelConfig):
    injection_type: Injection = Injection.DIAGONAL
    b_discretization: Discretization = Discretization.EULER
    n_layers_in_prelude: int = 1
    n_layers_in_recurrent_block: int = 4
    n_layers_in_coda: int = 1
    state_init: StateInit = StateInit.LIKE_INIT
    recurrent_embedding_dimension: int | None = None  # d_r; None → n_embd
    recurrent_intermediation_embedding_dimension: int | None = None  # None → intermediate_size
    recurrent_num_attention_heads: int | None = None  # None → num_attention_heads
    recurrent_num_key_value_heads: int | None = None  # None → same GQA ratio as the main blocks
    prelude_norm: bool = True
    sampling_scheme: SamplingScheme = SamplingScheme.POISSON_TRUNCATED_FULL
    recurrent_iteration_method: IterationMethod = IterationMethod.PER_SEQUENCE
    mean_recurrence: int = 8
    mean_backprop_depth: int = 4
    curriculum: CurriculumKind = CurriculumKind.NONE
    curriculum_steps: int = 0
    curriculum_target: CurriculumTarget = CurriculumTarget.FORWARD
    ssm_decay: float = math.sqrt(1 / 5)  # initial Ā for the diagonal injection
    state_init_seed: int = 0  # eval/generation state noise is drawn from this seed (deterministic)

    def __post_init__(self) -> None:
        if self.recurrent_embedding_dimension is None:
            self.recurrent_embedding_dimension = self.n_embd
        if self.recurrent_intermediation_embedding_dimension is None:
            self.recurrent_intermediation_embedding_dimension = (
                self.intermediate_size if self.intermediate_size is not None else 4 * self.n_embd
            )
        if self.recurrent_num_attention_heads is None:
            self.recurrent_num_attention_heads = self.num_attention_heads
        super().__post_init__()
        if self.recurrent_num_key_value_heads is None:
            ratio = self.num_attention_heads // self.num_key_value_heads
            self.recurrent_num_key_value_heads = max(1, self.recurrent_num_attention_heads // ratio)
            if self.recurrent_num_attention_heads % self.recurrent_num_key_value_heads:
                self.recurrent_num_key_value_heads = self.recurrent_num_attention_heads
        _check_heads(
            self.recurrent_embedding_dimension,
            self.recurrent_num_attention_heads,
            self.recurrent_num_key_value_heads,
            "recurrent_",
        )

    @property
    def n_layers_unique(self) -> int:
        return self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda

    @property
    def effective_depth(self) -> int:
        """Unrolled depth at the mean recurrence (used by the `scaled` init and reported by `parcae info`)."""
        return (
            self.n_layers_in_prelude
            + self.n_layers_in_coda
            + self.n_layers_in_recurrent_block * self.mean_recurrence
        )

    def validate(self) -> None:
        super().validate()
        _check_positive(
            self,
            "n_layers_in_recurrent_block",
            "mean_recurrence",
            "mean_backprop_depth",
            "recurrent_embedding_dimension",
            "recurrent_intermediation_embedding_dimension",
        )
        for name in ("n_layers_in_prelude", "n_layers_in_coda", "curriculum_steps", "state_init_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.mean_backprop_depth > self.mean_recurrence:
            raise ConfigError(
                f"mean_backprop_depth={self.mean_backprop_depth} exceeds mean_recurrence={self.mean_recurrence}; "
                "the expected depth would no longer be mean_recurrence"
            )
        if self.injection_type == Injection.ADD and self.recurrent_embedding_dimension != self.n_embd:
            raise ConfigError("injection_type='add' needs recurrent_embedding_dimension == n_embd")
        if self.curriculum != CurriculumKind.NONE and self.curriculum_steps <= 0:
            raise ConfigError("a curriculum needs curriculum_steps > 0")
        if not 0.0 < self.ssm_decay < 1.0:
            raise ConfigError(f"ssm_decay must lie in (0, 1), got {self.ssm_decay}")


# --------------------------------------------------------------------------------------------------
# Named configs: the reference's 8 paper configs (exact parameter counts) and tiny CPU ones.

_PAPER_COMMON = dict(block_size=2048, vocab_size=32768, padding_multiple=64)
_PARCAE_COMMON = dict(
    **_PAPER_COMMON,
    mean_recurrence=8,
    mean_backprop_depth=4,
    sampling_scheme=SamplingScheme.POISSON_TRUNCATED_FULL,
    recurrent_iteration_method=IterationMethod.PER_SEQUENCE,
)
_SIZES = {  # size: (d, heads, prelude/core/coda layers, gpt layers)
    "small-140m": (768, 6, 2, 6),
    "medium-370m": (1024, 8, 4, 12),
    "large-770m": (1280, 10, 6, 18),
    "xlarge-1_3b": (1536, 12, 8, 24),
}

NAMED_CONFIGS: dict[str, tuple[type[ModelConfig], dict[str, Any]]] = {}
for _size, (_d, _h, _l, _gl) in _SIZES.items():
    NAMED_CONFIGS[f"parcae-{_size}"] = (
        ParcaeConfig,
        dict(
            _PARCAE_COMMON,
            n_embd=_d,
            num_attention_heads=_h,
            n_layers_in_prelude=_l,
            n_layers_in_recurrent_block=_l,
            n_layers_in_coda=_l,
        ),
    )
    NAMED_CONFIGS[f"gpt-{_size}"] = (
        GPTConfig,
        dict(_PAPER_COMMON, n_embd=_d, num_attention_heads=_h, n_layer=_gl),
    )

_TINY = dict(block_size=256, vocab_size=4096, padding_multiple=64, n_embd=256, num_attention_heads=4)
NAMED_CONFIGS["parcae-tiny"] = (
    ParcaeConfig,
    dict(
        _TINY,
        n_layers_in_prelude=2,
        n_layers_in_recurrent_block=2,
        n_layers_in_coda=2,
        mean_recurrence=4,
        mean_backprop_depth=2,
    ),
)
NAMED_CONFIGS["gpt-tiny"] = (GPTConfig, dict(_TINY, n_layer=6))
# A config small enough for unit tests to build and run in milliseconds.
NAMED_CONFIGS["parcae-micro"] = (
    ParcaeConfig,
    dict(
        block_size=64,
        vocab_size=97,
        padding_multiple=8,
        n_embd=64,
        num_attention_heads=2,
        n_layers_in_prelude=1,
        n_layers_in_recurrent_block=2,
        n_layers_in_coda=1,
        mean_recurrence=3,
        mean_backprop_depth=2,
    ),
)
NAMED_CONFIGS["gpt-micro"] = (
    GPTConfig,
    dict(block_size=64, vocab_size=97, padding_multiple=8, n_embd=64, num_attention_heads=2, n_layer=4),
)

ALIASES = {
    "parcae-140m": "parcae-small-140m",
    "parcae-370m": "parcae-medium-370m",
    "parcae-770m": "parcae-large-770m",
    "parcae-1.3b": "parcae-xlarge-1_3b",
    "parcae-1_3b": "parcae-xlarge-1_3b",
    "gpt-140m": "gpt-small-140m",
    "gpt-370m": "gpt-medium-370m",
    "gpt-medium-380m": "gpt-medium-370m",  # the reference's registry name for the same model
    "gpt-770m": "gpt-large-770m",
    "gpt-1.3b": "gpt-xlarge-1_3b",
    "gpt-1_3b": "gpt-xlarge-1_3b",
    "gpt-xlarge-1_6b": "gpt-xlarge-1_3b",  # the reference's hf_config name for the same model
}


def config_names() -> list[str]:
    return sorted(NAMED_CONFIGS)


def create_config(name: str, **overrides: Any) -> ModelConfig:
    """Build a named config (either name set: `parcae-small-140m` or `parcae-140m`) with field overrides."""
    canonical = ALIASES.get(name, name)
    if canonical not in NAMED_CONFIGS:
        raise ConfigError(f"unknown config {name!r}; known: {', '.join(config_names())}")
    cls, base = NAMED_CONFIGS[canonical]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown} for config {name!r}")
    return cls(**{"name": canonical, **base, **overrides})


# --------------------------------------------------------------------------------------------------
# Loading configs written by us or by the reference implementation.

# Reference fields with no effect in this implementation when at these values (anything else is an error).
_REFERENCE_NEUTRAL: dict[str, Any] = {
    "use_abacus": False,
    "randomize_positions_from": None,
    "clip_qkv": None,
    "qk_bias": False,
    "mup_model_scaling_factor": 1,
    "debias_attention": False,
    "center_attention": False,
    "block_class_name": "TransformerPreNormBlock",
    "mlp_class_name": "BaseMLP",
}
# Reference fields that only concern its training engine, kernels or bookkeeping.
_REFERENCE_IGNORED = {
    "hf_config",
    "attn_impl",
    "simple_ops",
    "strategy",
    "_is_recurrent_block_config",
    "skip_initialization",
    "use_fused_head",
    "activation_checkpoint_impl",
    "model_class_name",
    "architecture_class_name",
    "lockstep_n",
    "lockstep_k",
    "n_layer_parcae",
    # written by transformers when a model is exported for AutoModelForCausalLM (infer/hf.py)
    "model_type",
    "architectures",
    "transformers_version",
    "tie_word_embeddings",
    "use_cache",
    "torch_dtype",
    "dtype",
    "auto_map",
}


def from_dict(d: dict[str, Any]) -> ModelConfig:
    """Build a config from a `config.json` dict (ours or the reference's, `_class_name` present or not)."""
    d = dict(d)
    class_name = d.pop("_class_name", None)
    if class_name in ("ParcaeConfig", "Parcae"):
        cls: type[ModelConfig] = ParcaeConfig
    elif class_name in ("GPTConfig", "GPT"):
        cls = GPTConfig
    elif class_name is None:
        parcae_keys = {"injection_type", "mean_recurrence", "n_layers_in_recurrent_block"}
        cls = ParcaeConfig if parcae_keys & set(d) else GPTConfig
    else:
        raise ConfigError(
            f"unknown _class_name {class_name!r} in config (expected ParcaeConfig or GPTConfig)"
        )

    rope = d.pop("rope_settings", None)
    if rope is not None:
        if not rope.get("use_rope", True):
            raise ConfigError("rope_settings.use_rope=false is not supported (all Parcae models use RoPE)")
        d.setdefault("rope_base", rope.get("rope_base", 50000))
        d.setdefault("rope_condense_ratio", rope.get("rope_condense_ratio", 1))
    for key, neutral in _REFERENCE_NEUTRAL.items():
        if key in d:
            value = d.pop(key)
            if value != neutral:
                raise ConfigError(f"config field {key}={value!r} is not supported (only {neutral!r})")
    for key in _REFERENCE_IGNORED:
        d.pop(key, None)
    if cls is ParcaeConfig:
        d.pop("n_layer", None)  # the reference stores a derived n_layer (= core layers × backprop depth)
        scheme = d.get("sampling_scheme")
        if isinstance(scheme, str) and "curriculum-" in scheme:
            d.update(_parse_reference_scheme(scheme))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) in config: {unknown}")
    return cls(**d)


def _parse_reference_scheme(scheme: str) -> dict[str, Any]:
    """'poisson-fill-curriculum-sqrt-1000' → scheme + curriculum fields (the reference encodes both in one string)."""
    base, _, tail = scheme.partition("curriculum-")
    kind = CurriculumKind.SQRT if tail.startswith("sqrt-") else CurriculumKind.LINEAR
    steps = tail.removeprefix("sqrt-")
    if not steps.isdigit():
        raise ConfigError(f"cannot parse curriculum length in sampling_scheme {scheme!r}")
    return dict(sampling_scheme=_scheme_from_reference(base), curriculum=kind, curriculum_steps=int(steps))


def _scheme_from_reference(text: str) -> SamplingScheme:
    # The reference matches substrings in this order (poisson-truncated-full before poisson-full).
    for scheme in (
        SamplingScheme.POISSON_UNBOUNDED,
        SamplingScheme.POISSON_FILL,
        SamplingScheme.POISSON_TRUNCATED_FULL,
        SamplingScheme.POISSON_FULL,
        SamplingScheme.POISSON_BOUNDED,
        SamplingScheme.FIXED,
    ):
        if scheme.value in text:
            return scheme
    raise ConfigError(f"unknown sampling_scheme {text!r}; known: {[s.value for s in SamplingScheme]}")


# --------------------------------------------------------------------------------------------------
def _coerce_enums(cfg: ModelConfig) -> None:
    for name, typ in _ENUM_FIELDS.items():
        if not hasattr(cfg, name):
            continue
        value = getattr(cfg, name)
        if isinstance(value, typ):
            continue
        if (
            typ is SamplingScheme
            and isinstance(value, str)
            and value not in {s.value for s in SamplingScheme}
        ):
            if "curriculum-" in value:
                raise ConfigError(
                    f"sampling_scheme {value!r}: give curriculum=, curriculum_steps= as separate fields "
                    "(reference strings are accepted when loading a config.json)"
                )
            setattr(cfg, name, _scheme_from_reference(value))
            continue
        try:
            setattr(cfg, name, typ(value))
        except ValueError:
            raise ConfigError(f"invalid {name}={value!r}; expected one of {[m.value for m in typ]}") from None


_ENUM_FIELDS: dict[str, type[Enum]] = {
    "norm_class_name": Norm,
    "nonlin_name": Activation,
    "init_strategy": InitStrategy,
    "injection_type": Injection,
    "b_discretization": Discretization,
    "state_init": StateInit,
    "sampling_scheme": SamplingScheme,
    "recurrent_iteration_method": IterationMethod,
    "curriculum": CurriculumKind,
    "curriculum_target": CurriculumTarget,
}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def _check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_heads(d: int, heads: int, kv_heads: int, prefix: str) -> None:
    if heads <= 0 or kv_heads <= 0:
        raise ConfigError(f"{prefix}num_attention_heads and {prefix}num_key_value_heads must be positive")
    if d % heads:
        raise ConfigError(
            f"{prefix}embedding dimension {d} is not divisible by {prefix}num_attention_heads={heads}"
        )
    if (d // heads) % 2:
        raise ConfigError(f"{prefix}head size {d // heads} must be even for rotary embeddings")
    if heads % kv_heads:
        raise ConfigError(
            f"{prefix}num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    if d < 32:
        raise ConfigError(
            f"{prefix}embedding dimension must be ≥ 32 (value-embedding gates read 32 channels), got {d}"
        )


__all__ = [
    "ModelConfig",
    "ParcaeConfig",
    "GPTConfig",
    "NAMED_CONFIGS",
    "ALIASES",
    "create_config",
    "config_names",
    "from_dict",
]
