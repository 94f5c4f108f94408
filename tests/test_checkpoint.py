"""Checkpoints: our round trip, the authors' layouts, and strict errors for bad checkpoints."""

from __future__ import annotations

import json
import pickle

import huggingface_hub
import pytest
import torch

import parcae_lm
from parcae_lm.checkpoint import from_pretrained, save_pretrained
from parcae_lm.errors import CheckpointError
from parcae_lm.model.layers import rope_table


def _model(name="parcae-micro", **kw):
    torch.manual_seed(0)
    return parcae_lm.create_model(name, **kw).eval()


def _reference_config_json(model) -> dict:
    """A config.json as the reference's save_pretrained writes it (reference-model.md §4.3)."""
    d = model.config.to_dict()
    rope = {"use_rope": True, "rope_condense_ratio": 1, "rope_base": d.pop("rope_base")}
    d.pop("rope_condense_ratio")
    d.pop("b_discretization", None)
    d.pop("curriculum", None)
    d.pop("curriculum_steps", None)
    d.pop("ssm_decay", None)
    d.pop("state_init_seed", None)
    d.update(
        hf_config={"org": "SandyResearch", "name": d["name"]},
        rope_settings=rope,
        use_abacus=False,
        randomize_positions_from=None,
        block_class_name="TransformerPreNormBlock",
        attn_impl="flash",
        mlp_class_name="BaseMLP",
        qk_bias=False,
        skip_initialization=False,
        mup_model_scaling_factor=1,
        use_fused_head="pytorch",
        debias_attention=False,
        center_attention=False,
        clip_qkv=None,
        activation_checkpoint_impl="per-iteration",
        simple_ops=False,
        strategy="single",
    )
    if "mean_recurrence" in d:
        d.update(
            lockstep_n=False,
            lockstep_k=False,
            model_class_name="Parcae",
            _is_recurrent_block_config=False,
            n_layer=d["n_layers_in_recurrent_block"] * d["mean_backprop_depth"],
            recurrent_num_attention_heads=None,
        )
        d.pop("recurrent_num_key_value_heads")
    return d


def _reference_state_dict(model, prefix="") -> dict:
    """Keys and shapes of the reference: freqs_cis buffer, tied head under both keys, optional prefixes."""
    sd = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.config
    freqs = rope_table(cfg.block_size, cfg.head_size, cfg.rope_base, cfg.rope_condense_ratio)
    sd[prefix + "freqs_cis"] = torch.view_as_real(freqs)[None, :, None]  # [1, L, 1, D/2, 2] = (cos, sin)
    return sd


def test_roundtrip_is_exact(tmp_path):
    for name in ("parcae-micro", "gpt-micro"):
        model = _model(name)
        save_pretrained(model, tmp_path / name)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            "checksums.json",
            "config.json",
            "model.safetensors",
        ]
        again = from_pretrained(tmp_path / name)
        assert again.config == model.config
        for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b)
        assert again.lm_head.weight is again.transformer.wte.weight
        x = torch.randint(0, 97, (2, 9))
        assert torch.equal(model(x)["logits"], again(x)["logits"])


@pytest.mark.parametrize(
    "layout",
    [
        ("model.pt", "", False, True),
        ("pytorch_model.bin", "module.", False, False),
        ("model.pt", "_orig_mod.", True, True),
        ("pytorch_model.bin", "module._orig_mod.", True, False),
    ],
)
def test_reference_layouts_load_and_match(tmp_path, layout):
    filename, prefix, nested, with_class = layout
    model = _model()
    sd = _reference_state_dict(model, prefix)
    if prefix == "_orig_mod.":  # selective compile puts _orig_mod mid-key
        sd = {k.replace("prelude.0.", "prelude.0._orig_mod."): v for k, v in sd.items()}
    torch.save({"model": sd, "optimizer": {}, "step": 3} if nested else sd, tmp_path / filename)
    cfg = _reference_config_json(model)
    if not with_class:
        cfg.pop("_class_name")  # the reference's ModelingParcae writes none
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    x = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], rtol=0, atol=0)


def test_reference_gpt_checkpoint_with_only_the_head_key(tmp_path):
    model = _model("gpt-micro")
    sd = _reference_state_dict(model)
    del sd["transformer.wte.weight"]
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(_reference_config_json(model)))
    loaded = from_pretrained(tmp_path)
    x = torch.randint(0, 97, (1, 5))
    torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"], rtol=0, atol=0)


def _write(tmp_path, model, sd):
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path):
    model = _model()
    sd = model.state_dict()
    missing = {k: v for k, v in sd.items() if k != "transformer.adapter.A_log"}
    _write(tmp_path, model, missing)
    with pytest.raises(CheckpointError, match="missing keys.*transformer.adapter.A_log"):
        from_pretrained(tmp_path)
    _write(tmp_path, model, {**sd, "transformer.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected keys.*transformer.extra.weight"):
        from_pretrained(tmp_path)
    _write(tmp_path, model, {**sd, "transformer.C.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*transformer.C.weight"):
        from_pretrained(tmp_path)
    wrong_prefix = {"backbone." + k: v for k, v in sd.items()}  # never a silently random model
    _write(tmp_path, model, wrong_prefix)
    with pytest.raises(CheckpointError, match="missing keys"):
        from_pretrained(tmp_path)


def test_pickled_objects_are_refused(tmp_path):
    model = _model()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(CheckpointError, match="weights_only"):
        from_pretrained(tmp_path)


def test_rope_base_mismatch_is_detected(tmp_path):
    model = _model()
    sd = _reference_state_dict(model)
    torch.save(sd, tmp_path / "model.pt")
    cfg = model.config.to_dict()
    cfg["rope_base"] = 10000.0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="freqs_cis"):
        from_pretrained(tmp_path)


def test_bad_directories_and_configs(tmp_path):
    with pytest.raises(CheckpointError, match="neither a local directory"):
        from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(tmp_path)
    model = _model()
    cfg = model.config.to_dict()
    cfg["clip_qkv"] = 5.0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="clip_qkv"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(CheckpointError, match="no weights"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        from_pretrained(tmp_path)


def test_hub_ids_go_through_snapshot_download(tmp_path, monkeypatch):
    model = _model()
    save_pretrained(model, tmp_path / "snap")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snap")

    # The hub is unreachable here: stand in for huggingface_hub at its boundary.
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = from_pretrained("SandyResearch/parcae-140m")
    assert calls and calls[0][0] == "SandyResearch/parcae-140m"
    assert "model.safetensors" in calls[0][1] and "model.pt" in calls[0][1]
    assert loaded.config == model.config


def test_dtype_and_device_arguments(tmp_path):
    save_pretrained(_model(), tmp_path)
    m = from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert m.transformer.wte.weight.dtype == torch.bfloat16
