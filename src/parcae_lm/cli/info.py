"""`parcae info CONFIG_OR_MODEL`: parameter counts, unrolled depth and FLOPs/token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parcae_lm.checkpoint import load_config
from parcae_lm.config import ModelConfig, ParcaeConfig, create_config
from parcae_lm.config.train import model_overrides
from parcae_lm.model.flops import inference_flops, training_flops


def info(
    config: str, /, *, model: dict[str, Any] | None = None, seq_len: int | None = None, json: bool = False
) -> None:
    """Parameter counts, unrolled depth and FLOPs/token of a model config or a saved model.

    Args:
        config: A model config name (e.g. parcae-small-140m) or a model/run directory.
        model: Overrides of the config's fields, e.g. --model.mean_recurrence 16.
        seq_len: Context for the attention FLOPs (default: block_size).
        json: Print the config and the FLOPs breakdown as JSON instead of a table.
    """
    cfg = load_model_config(config, model or {})
    br = training_flops(cfg, seq_len)
    c = br.params
    if json:
        print(to_json({"config": cfg.to_dict(), "flops": br.to_dict()}))
        return
    rows = [
        ("config", cfg.name or config),
        ("class", type(cfg).__name__),
        ("parameters (total, unique)", f"{c.total:,}"),
        ("non-embedding (excl. wte, value embeds)", f"{c.non_embedding:,}"),
        ("embedding (wte + value embeds)", f"{c.embedding:,}"),
    ]
    if isinstance(cfg, ParcaeConfig):
        rows += [
            ("core (recurrent block)", f"{c.core:,}"),
            (
                "layers prelude/core/coda",
                f"{cfg.n_layers_in_prelude}/{cfg.n_layers_in_recurrent_block}/{cfg.n_layers_in_coda}",
            ),
            ("mean recurrence / backprop depth", f"{cfg.mean_recurrence} / {cfg.mean_backprop_depth}"),
            ("sampling", f"{cfg.sampling_scheme} ({cfg.recurrent_iteration_method})"),
            ("E[no-grad steps], E[grad steps]", f"{br.no_grad_steps:.3f}, {br.grad_steps:.3f}"),
            ("unrolled depth at the mean", str(cfg.effective_depth)),
        ]
    else:
        rows.append(("layers", str(cfg.n_layer)))
    rows += [
        ("context (attention FLOPs)", str(br.seq_len)),
        ("training FLOPs/token", f"{br.per_token:.4g}"),
        ("inference FLOPs/token", f"{inference_flops(cfg, seq_len):.4g}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def load_model_config(name_or_dir: str, overrides: dict[str, Any]) -> ModelConfig:
    """A named config or a saved model's config.json, with `overrides` checked against its fields."""
    if Path(name_or_dir).is_dir():
        cfg = load_config(name_or_dir)
        return cfg.replace(**model_overrides(type(cfg), overrides)) if overrides else cfg
    return create_config(name_or_dir, **model_overrides(name_or_dir, overrides))


def to_json(payload: dict) -> str:
    return json.dumps(payload, indent=2, default=str)
