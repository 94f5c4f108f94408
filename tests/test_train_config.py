"""Run config (YAML + command line + dotted mappings), optimizer parameter split and schedules. No data,
no training."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import yaml

from parcae_lm.config import ParcaeConfig, create_config
from parcae_lm.config.train import (
    OptimArgs,
    Precision,
    RunConfig,
    TrainArgs,
    load_run_config,
    model_overrides,
    packaged_config_names,
    read_config_file,
    run_parser,
)
from parcae_lm.errors import ConfigError
from parcae_lm.model import build_model
from parcae_lm.train.optim import MuonAdamW, lr_factor, muon_momentum, muon_weight_decay, split_parameters

REFERENCE_CONFIGS = [
    f"{m}-{s}" for m in ("parcae", "gpt") for s in ("small-140m", "medium-370m", "large-770m", "xlarge-1_3b")
]


def test_packaged_configs_load_with_reference_values():
    names = packaged_config_names()
    assert {"tiny", "tiny-gpt", *REFERENCE_CONFIGS} <= set(names)
    for name in REFERENCE_CONFIGS:
        cfg = load_run_config(name)
        assert cfg.train.global_batch_size == 256 and cfg.data.seq_len == 2048
        assert cfg.tokens_per_step == 524_288
        assert (
            cfg.optim.muon_lr == 8e-3 and cfg.optim.adam_betas == (0.8, 0.95) and cfg.optim.adam_eps == 1e-10
        )
        assert cfg.optim.cooldown_fraction == 0.5 and cfg.optim.warmup_fraction == 0.0
        assert cfg.train.grad_clip == 1.0
        assert cfg.train.max_tokens is not None
        create_config(cfg.model_name, **model_overrides(cfg.model_name, cfg.model))
    budgets = {n: load_run_config(n).train.max_tokens for n in REFERENCE_CONFIGS}
    assert budgets["parcae-small-140m"] == 11.2e9 and budgets["parcae-medium-370m"] == 29.6e9
    assert budgets["gpt-xlarge-1_3b"] == 104e9
    # 8 GPUs: accumulation as in the reference's table
    assert load_run_config("parcae-large-770m").grad_accum_steps(8) == 4
    assert load_run_config("gpt-small-140m").grad_accum_steps(8) == 1
    assert load_run_config("parcae-small-140m").eval.depths == [1, 2, 4]


def test_every_packaged_yaml_sets_only_known_keys_with_their_types():
    """Each shipped YAML parses against RunConfig (nothing left to defaults by a misspelt key), and the
    values that were checked before the regrouping are still there."""
    for name in packaged_config_names():
        _, raw = read_config_file(name)
        cfg = load_run_config(name)
        for group, values in raw.items():
            if isinstance(values, dict) and group != "model":
                for key, value in values.items():
                    got = getattr(getattr(cfg, group), key)
                    assert got == (tuple(value) if isinstance(got, tuple) else value), (name, group, key)
    tiny = load_run_config("tiny")
    assert tiny.train.max_time_minutes == 9.0 and tiny.eval.final_depths == [4]
    assert tiny.model == {"n_embd": 128, "num_attention_heads": 2, "mean_backprop_depth": 1}
    assert tiny.run_name.startswith("tiny-") and tiny.model_name == "parcae-tiny"
    assert load_run_config("parcae-xlarge-1_3b").system.activation_checkpointing is True


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 10\noptim:\n  muon_lrr: 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.muon_lrr'"):
        load_run_config(str(path))
    path.write_text("max_steps: 10\n")  # the flat layout of earlier versions
    with pytest.raises(ConfigError, match="unknown key 'max_steps'"):
        load_run_config(str(path))
    path.write_text("train: 10\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_run_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown run config 'nope'"):
        load_run_config("nope")


def test_cli_overrides_convert_and_validate():
    cfg = load_run_config(
        "tiny",
        [
            "--train.max_steps",
            "12",
            "--optim.muon_lr",
            "8e-3",
            "--optim.adam_betas",
            "[0.9,0.99]",
            "--eval.depths=[1,3]",
            "--system.compile",
            "true",
            "--system.precision",
            "bf16",
            "--model.n_embd",
            "128",
            "--model.mean_recurrence=6",
            "--eval.batches",
            "null",
        ],
    )
    # a budget on the command line replaces the file's
    assert cfg.train.max_steps == 12 and cfg.train.max_time_minutes is None
    assert isinstance(cfg.optim.muon_lr, float) and cfg.optim.muon_lr == 8e-3
    assert cfg.optim.adam_betas == (0.9, 0.99) and cfg.eval.depths == [1, 3]
    assert cfg.system.compile is True and cfg.system.precision is Precision.bf16 and cfg.eval.batches is None
    assert cfg.model == {
        "n_embd": 128,
        "num_attention_heads": 2,
        "mean_backprop_depth": 1,
        "mean_recurrence": 6,
    }
    with pytest.raises(ConfigError, match="unknown option --optim.muon_lrr"):
        load_run_config("tiny", ["--optim.muon_lrr", "1"])
    with pytest.raises(ConfigError, match="optim.muon_lr: expected a finite number, got 'fast'"):
        load_run_config("tiny", ["--optim.muon_lr", "fast"])
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_run_config("tiny", ["--train.max_steps", "1.5"])
    with pytest.raises(ConfigError, match="precision: expected one of auto, bf16, fp32, got 'fp8'"):
        load_run_config("tiny", ["--system.precision", "fp8"])
    with pytest.raises(ConfigError, match="expected one argument"):
        load_run_config("tiny", ["--train.max_steps"])
    with pytest.raises(ConfigError, match="exactly one training budget"):
        load_run_config("tiny", ["--train.max_steps", "3", "--train.max_tokens", "1e6"])
    with pytest.raises(ConfigError, match="optim.muon_lr: expected a finite number, got 'nan'"):
        load_run_config("tiny", ["--optim.muon_lr", "nan"])


def test_config_flag_names_the_base_and_positionals_are_refused():
    cfg = load_run_config(None, ["--config", "tiny-gpt", "--train.max_steps", "3"])
    assert cfg.model_name == "gpt-tiny" and cfg.run_name.startswith("tiny-gpt-")
    assert load_run_config(None, ["--train.max_steps", "3"]).model_name == "parcae-tiny"  # the default
    with pytest.raises(ConfigError, match="two base configs"):
        load_run_config("tiny", ["--config", "tiny-gpt"])
    with pytest.raises(ConfigError, match="unexpected argument 'tiny' .*--config tiny"):
        load_run_config(None, ["tiny"])


def test_dotted_and_nested_overrides_build_the_same_config_without_strings():
    """What a sweep does: a base config plus a mapping of typed values, never re-parsed CLI strings."""
    dotted = load_run_config(
        "tiny",
        {"train.max_steps": 5, "optim.muon_lr": 0.02, "model.mean_recurrence": 6, "run_name": "p"},
    )
    nested = load_run_config(
        "tiny",
        {
            "train": {"max_steps": 5},
            "optim": {"muon_lr": 0.02},
            "model": {"mean_recurrence": 6},
            "run_name": "p",
        },
    )
    assert dotted == nested
    assert dotted.train.max_steps == 5 and dotted.train.max_time_minutes is None
    assert dotted.model["n_embd"] == 128 and dotted.model["mean_recurrence"] == 6  # merged with the file's
    tokens = load_run_config(
        "tiny",
        [
            "--train.max_steps",
            "5",
            "--optim.muon_lr",
            "0.02",
            "--model.mean_recurrence",
            "6",
            "--run_name",
            "p",
        ],
    )
    assert tokens == dotted
    with pytest.raises(ConfigError, match="unknown key 'optim.muon_lrr'"):
        load_run_config("tiny", {"optim.muon_lrr": 1})
    with pytest.raises(ConfigError, match="optim.adam_lr must be > 0, got 0"):
        load_run_config("tiny", {"optim.adam_lr": 0})
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        load_run_config("tiny", {"seed": True})


def test_replace_rechecks_and_a_new_budget_replaces_the_old():
    cfg = load_run_config("tiny", {"run_name": "a"})
    steps = cfg.replace({"train.max_steps": 7, "model.n_embd": 64})
    assert steps.train.max_steps == 7 and steps.train.max_time_minutes is None
    assert steps.model["n_embd"] == 64 and cfg.model["n_embd"] == 128  # a copy
    assert steps.optim == cfg.optim and steps.run_name == "a"
    with pytest.raises(ConfigError, match="data.seq_len must be > 0"):
        cfg.replace({"data.seq_len": 0})


def test_resolved_config_yaml_round_trips(tmp_path):
    cfg = load_run_config("tiny", ["--train.max_steps", "3", "--model.sampling_scheme", "fixed"])
    text = cfg.to_yaml()
    raw = yaml.safe_load(text)
    assert raw["system"]["precision"] == "auto" and raw["model"]["sampling_scheme"] == "fixed"
    assert raw["optim"]["adam_betas"] == [0.8, 0.95]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_run_config(str(path)) == cfg


def test_model_overrides_are_typed_against_the_model_config():
    out = model_overrides(
        "parcae-micro", {"n_embd": "128", "sampling_scheme": "fixed", "prelude_norm": "false"}
    )
    assert out["n_embd"] == 128 and out["prelude_norm"] is False
    assert create_config("parcae-micro", **out).sampling_scheme.value == "fixed"
    assert isinstance(create_config("parcae-micro", **out), ParcaeConfig)
    with pytest.raises(ConfigError, match="unknown model field 'n_embed'"):
        model_overrides("parcae-micro", {"n_embed": 3})
    with pytest.raises(ConfigError, match="unknown model field 'mean_recurrence' for GPTConfig"):
        model_overrides("gpt-micro", {"mean_recurrence": 3})
    with pytest.raises(ConfigError, match="model.n_embd: expected an integer, got 'wide'"):
        model_overrides("parcae-micro", {"n_embd": "wide"})
    with pytest.raises(ConfigError, match="model.sampling_scheme: expected one of poisson-truncated-full"):
        model_overrides("parcae-micro", {"sampling_scheme": "poisson"})
    with pytest.raises(ConfigError, match="unknown config 'parcae-nope'"):
        RunConfig(model_name="parcae-nope", train=TrainArgs(max_steps=1))


def test_model_config_is_sized_by_the_data():
    cfg = load_run_config("tiny", {"train.max_steps": 1})
    mcfg = cfg.model_config(vocab_size=4000)
    assert mcfg.vocab_size == 4000 and mcfg.block_size == 256 and mcfg.n_embd == 128
    assert mcfg.mean_backprop_depth == 1 and mcfg.name == "parcae-tiny"
    with pytest.raises(ConfigError, match="model.vocab_size=100 is smaller than the tokenizer's 4000"):
        cfg.replace({"model.vocab_size": 100}).model_config(4000)
    with pytest.raises(ConfigError, match=r"model.block_size=128 is shorter than data.seq_len=256"):
        cfg.replace({"model.block_size": 128}).model_config(4000)


def test_batch_and_budget_validation():
    cfg = RunConfig(train=TrainArgs(max_steps=1, micro_batch_size=4, global_batch_size=16))
    assert cfg.grad_accum_steps(1) == 4 and cfg.grad_accum_steps(2) == 2 and cfg.grad_accum_steps(4) == 1
    with pytest.raises(ConfigError, match="does not split into 8 rank"):
        cfg.grad_accum_steps(8)
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        TrainArgs(max_steps=1, micro_batch_size=3, global_batch_size=16)
    with pytest.raises(ConfigError, match="exactly one training budget.*none"):
        RunConfig()
    with pytest.raises(ConfigError, match="warmup_fraction \\+ optim.cooldown_fraction"):
        OptimArgs(warmup_fraction=0.6, cooldown_fraction=0.5)
    with pytest.raises(ConfigError, match="train.max_flops must be > 0 or null, got -1"):
        TrainArgs(max_flops=-1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.seq_len": 0}, "data.seq_len must be > 0, got 0"),
        ({"data.shard_dir": "s"}, "data.shard_dir and data.tokenizer_dir go together"),
        ({"train.micro_batch_size": -4}, "train.micro_batch_size must be > 0"),
        ({"optim.muon_ns_steps": 0}, "optim.muon_ns_steps must be > 0"),
        ({"optim.muon_weight_decay": -0.1}, "optim.muon_weight_decay must be >= 0, got -0.1"),
        ({"optim.cooldown_fraction": 1.5}, r"optim.cooldown_fraction must be in \[0, 1\], got 1.5"),
        ({"optim.adam_betas": [0.9, 1.0]}, r"optim.adam_betas must be in \[0, 1\), got \[0.9, 1.0\]"),
        ({"optim.muon_momentum": 1.0}, r"optim.muon_momentum must be in \[0, 1\)"),
        ({"system.threads": 0}, "system.threads must be > 0 or null, got 0"),
        ({"system.strategy": "zero"}, "system.strategy: expected one of ddp, fsdp, got 'zero'"),
        ({"eval.interval": 0}, "eval.interval must be > 0"),
        ({"eval.batch_size": 0}, "eval.batch_size must be > 0 or null"),
        ({"eval.final_depths": [2, 0]}, r"eval.final_depths must be a non-empty list of positive ints"),
        ({"eval.depths": "1,2"}, r"eval.depths: expected a list of integers, e.g. \[1, 2\]"),
        ({"checkpoint.keep_last_k": 0}, "checkpoint.keep_last_k must be > 0"),
        ({"log.interval": 0}, "log.interval must be > 0"),
        ({"sample.temperature": -1.0}, "sample.temperature must be >= 0"),
        ({"sample.tokens": 0}, "sample.tokens must be > 0"),
        ({"run_name": "a/b"}, "run_name may only contain"),
        ({"train.max_time_minutes": 0}, "train.max_time_minutes must be > 0 or null, got 0"),
    ],
)
def test_every_group_names_the_field_and_value_at_fault(overrides, message):
    with pytest.raises(ConfigError, match=f"run config tiny: {message}"):
        load_run_config("tiny", overrides)


def test_help_documents_every_option_with_its_docstring_and_default():
    text = " ".join(run_parser().format_help().split())
    assert "--config CONFIG" in text
    for name, hint in typing.get_type_hints(RunConfig).items():
        inner = (
            [f"{name}.{g.name}" for g in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint) else []
        )
        for key in inner or [name]:
            assert f"--{key} " in text, key
    assert "Budget: optimizer steps (give exactly one budget). (type: int | null, default: null)" in text
    assert "(type: Precision, default: auto)" in text and "{auto,bf16,fp32}" in text
    assert "Overrides of the named model config's fields, e.g. --model.n_embd 128" in text


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
    opt = MuonAdamW(model, OptimArgs())
    assert sum(len(g["params"]) for o in opt.optimizers for g in o.param_groups) == len(all_ids)


def test_schedule_shapes():
    cfg = OptimArgs()
    f = [lr_factor(t / 100, 1 / 100, cfg) for t in range(100)]
    assert f[:51] == [1.0] * 51  # constant for the first half
    assert f[75] == pytest.approx(0.5) and f[99] == pytest.approx(0.02)  # linear to 0 over the last half
    assert all(a >= b for a, b in zip(f, f[1:]))
    warm = OptimArgs(warmup_fraction=0.1, cooldown_fraction=0.2, min_lr_ratio=0.1)
    g = [lr_factor(t / 100, 1 / 100, warm) for t in range(100)]
    assert g[0] == pytest.approx(0.1) and g[9] == pytest.approx(1.0) and g[50] == 1.0
    assert g[99] == pytest.approx(0.1)  # floored at min_lr_ratio
    assert muon_momentum(0, cfg) == 0.85 and muon_momentum(150, cfg) == pytest.approx(0.90)
    assert muon_momentum(300, cfg) == muon_momentum(10_000, cfg) == 0.95
    assert muon_weight_decay(0.0, cfg) == 0.2 and muon_weight_decay(0.5, cfg) == pytest.approx(0.1)
    assert muon_weight_decay(1.0, cfg) == 0.0


def test_set_schedule_scales_both_optimizers():
    model = build_model(create_config("parcae-micro"))
    opt = MuonAdamW(model, OptimArgs(muon_lr=0.02, adam_lr=0.004))
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
