"""Run config (YAML + command line), optimizer parameter split and schedules. No data, no training."""

from __future__ import annotations

import pytest
import torch

from parcae_lm.config import ParcaeConfig, create_config
from parcae_lm.errors import ConfigError
from parcae_lm.model import build_model
from parcae_lm.train.config import (
    Precision,
    RunConfig,
    coerce_model_overrides,
    load_run_config,
    packaged_config_names,
    parse_overrides,
)
from parcae_lm.train.optim import MuonAdamW, lr_factor, muon_momentum, muon_weight_decay, split_parameters

REFERENCE_CONFIGS = [
    f"{m}-{s}" for m in ("parcae", "gpt") for s in ("small-140m", "medium-370m", "large-770m", "xlarge-1_3b")
]


def test_packaged_configs_load_with_reference_values():
    names = packaged_config_names()
    assert {"tiny", "tiny-gpt", *REFERENCE_CONFIGS} <= set(names)
    for name in REFERENCE_CONFIGS:
        _, cfg = load_run_config(name)
        assert cfg.global_batch_size == 256 and cfg.seq_len == 2048
        assert cfg.tokens_per_step == 524_288
        assert cfg.muon_lr == 8e-3 and cfg.adam_betas == (0.8, 0.95) and cfg.adam_eps == 1e-10
        assert cfg.cooldown_fraction == 0.5 and cfg.warmup_fraction == 0.0 and cfg.grad_clip == 1.0
        assert cfg.max_tokens is not None
        create_config(
            cfg.model_name, **coerce_model_overrides(cfg.model, type(create_config(cfg.model_name)))
        )
    budgets = {n: load_run_config(n)[1].max_tokens for n in REFERENCE_CONFIGS}
    assert budgets["parcae-small-140m"] == 11.2e9 and budgets["parcae-medium-370m"] == 29.6e9
    assert budgets["gpt-xlarge-1_3b"] == 104e9
    # 8 GPUs: accumulation as in the reference's table
    assert load_run_config("parcae-large-770m")[1].grad_accum_steps(8) == 4
    assert load_run_config("gpt-small-140m")[1].grad_accum_steps(8) == 1
    assert load_run_config("parcae-small-140m")[1].val_depths == [1, 2, 4]


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_steps: 10\nmuon_lrr: 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'muon_lrr'"):
        load_run_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown run config 'nope'"):
        load_run_config("nope")


def test_cli_overrides_convert_and_validate():
    _, cfg = load_run_config(
        "tiny",
        [
            "--max_steps",
            "12",
            "--muon_lr",
            "8e-3",
            "--adam_betas",
            "0.9,0.99",
            "--val_depths=[1,3]",
            "--compile",
            "true",
            "--precision",
            "bf16",
            "--model.n_embd",
            "128",
            "--model.mean_recurrence=6",
            "--eval_batches",
            "null",
        ],
    )
    assert cfg.max_steps == 12 and cfg.max_time_minutes is None  # a CLI budget replaces the file's
    assert isinstance(cfg.muon_lr, float) and cfg.muon_lr == 8e-3
    assert cfg.adam_betas == (0.9, 0.99) and cfg.val_depths == [1, 3]
    assert cfg.compile is True and cfg.precision is Precision.BF16 and cfg.eval_batches is None
    assert cfg.model == {
        "n_embd": 128,
        "num_attention_heads": 2,
        "mean_backprop_depth": 1,
        "mean_recurrence": 6,
    }
    with pytest.raises(ConfigError, match="unknown option --muon_lrr"):
        load_run_config("tiny", ["--muon_lrr", "1"])
    with pytest.raises(ConfigError, match="muon_lr: expected a number"):
        load_run_config("tiny", ["--muon_lr", "fast"])
    with pytest.raises(ConfigError, match="max_steps: expected an integer"):
        load_run_config("tiny", ["--max_steps", "1.5"])
    with pytest.raises(ConfigError, match="precision: expected one of auto, bf16, fp32"):
        load_run_config("tiny", ["--precision", "fp8"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--max_steps"])
    with pytest.raises(ConfigError, match="exactly one training budget"):
        load_run_config("tiny", ["--max_steps", "3", "--max_tokens", "1e6"])


def test_model_overrides_are_typed_against_the_model_config():
    out = coerce_model_overrides(
        {"n_embd": "128", "sampling_scheme": "fixed", "prelude_norm": "false"}, ParcaeConfig
    )
    assert out["n_embd"] == 128 and out["prelude_norm"] is False
    assert create_config("parcae-micro", **out).sampling_scheme.value == "fixed"
    with pytest.raises(ConfigError, match="unknown model field 'n_embed'"):
        coerce_model_overrides({"n_embed": 3}, ParcaeConfig)


def test_batch_and_budget_validation():
    cfg = RunConfig(max_steps=1, micro_batch_size=4, global_batch_size=16)
    assert cfg.grad_accum_steps(1) == 4 and cfg.grad_accum_steps(2) == 2 and cfg.grad_accum_steps(4) == 1
    with pytest.raises(ConfigError, match="does not split into 8 rank"):
        cfg.grad_accum_steps(8)
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        RunConfig(max_steps=1, micro_batch_size=3, global_batch_size=16)
    with pytest.raises(ConfigError, match="exactly one training budget.*none"):
        RunConfig()
    with pytest.raises(ConfigError, match="warmup_fraction \\+ cooldown_fraction"):
        RunConfig(max_steps=1, warmup_fraction=0.6, cooldown_fraction=0.5)


@pytest.mark.parametrize("name", ["parcae-micro", "gpt-micro"])
def test_every_parameter_in_exactly_one_optimizer_group(name):
    model = build_model(create_config(name))
    split = split_parameters(model)
    muon = {n for n, _ in split.muon}
    adamw = {n for n, _ in split.adamw}
    assert not muon & adamw
    all_ids = {id(p) for p in model.parameters()}
    grouped = [id(p) for _, p in split.muon + split.adamw]
    assert len(grouped) == len(set(grouped)) and set(grouped) == all_ids
    # Muon: exactly the block matrices (attention, MLP, value-embedding gates)
    for n in muon:
        assert n.rsplit(".", 2)[-2] in {"c_q", "c_k", "c_v", "c_proj", "fc", "proj", "ve_gate"}, n
    assert any("ve_gate" in n for n in muon)
    # AdamW: embeddings, value embeddings, norms, injection, C (and the tied head once)
    assert any(n.endswith("wte.weight") for n in adamw) and any(n.startswith("value_embeds") for n in adamw)
    assert not any(p.ndim < 2 for _, p in split.muon)
    if name.startswith("parcae"):
        for key in ("adapter.A_log", "adapter.dt_bias", "adapter.B", "transformer.C.weight"):
            assert any(key in n for n in adamw), key
    opt = MuonAdamW(model, RunConfig(max_steps=1))
    assert sum(len(g["params"]) for o in opt.optimizers for g in o.param_groups) == len(all_ids)


def test_schedule_shapes():
    cfg = RunConfig(max_steps=100)
    f = [lr_factor(t / 100, 1 / 100, cfg) for t in range(100)]
    assert f[:51] == [1.0] * 51  # constant for the first half
    assert f[75] == pytest.approx(0.5) and f[99] == pytest.approx(0.02)  # linear to 0 over the last half
    assert all(a >= b for a, b in zip(f, f[1:]))
    warm = RunConfig(max_steps=100, warmup_fraction=0.1, cooldown_fraction=0.2, min_lr_ratio=0.1)
    g = [lr_factor(t / 100, 1 / 100, warm) for t in range(100)]
    assert g[0] == pytest.approx(0.1) and g[9] == pytest.approx(1.0) and g[50] == 1.0
    assert g[99] == pytest.approx(0.1)  # floored at min_lr_ratio
    assert muon_momentum(0, cfg) == 0.85 and muon_momentum(150, cfg) == pytest.approx(0.90)
    assert muon_momentum(300, cfg) == muon_momentum(10_000, cfg) == 0.95
    assert muon_weight_decay(0.0, cfg) == 0.2 and muon_weight_decay(0.5, cfg) == pytest.approx(0.1)
    assert muon_weight_decay(1.0, cfg) == 0.0


def test_set_schedule_scales_both_optimizers():
    model = build_model(create_config("parcae-micro"))
    opt = MuonAdamW(model, RunConfig(max_steps=1, muon_lr=0.02, adam_lr=0.004))
    opt.set_schedule(0.5, 0.9, 0.1)
    assert opt.lrs == {"adam_lr": 0.002, "muon_lr": 0.01}
    assert opt.muon.param_groups[0]["momentum"] == 0.9 and opt.muon.param_groups[0]["weight_decay"] == 0.1
    # one step moves every parameter that got a non-zero gradient (zero-init projections block some at step 0)
    x = torch.randint(0, 97, (2, 16))
    model(x, labels=x)["loss"].backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    params = list(model.parameters())
    moved = [
        not torch.equal(b, p) for b, p in zip(before, params) if p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert len(moved) >= 10 and all(moved)
