"""transformers integration: a save_pretrained directory, exported with export_hf, loads with
AutoModelForCausalLM and its greedy generate() equals ours. Offline, on a local directory."""

from __future__ import annotations

import pytest
import torch

import parcae_lm

pytest.importorskip("transformers")


@torch.no_grad()
def test_auto_model_loads_and_generates_like_ours(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from parcae_lm.errors import CheckpointError, ConfigError
    from parcae_lm.infer.hf import export_hf

    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    parcae_lm.save_pretrained(model, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    assert AutoConfig.from_pretrained(tmp_path / "hf").model_type == "parcae"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not hf.training and not hf.inner.training
    x = torch.randint(0, 97, (2, 6))
    vocab = model.config.vocab_size
    assert torch.equal(hf(x).logits, model(x)["logits"][..., :vocab])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(out, model.generate(x, 8, temperature=0))
    # Our own loader still reads the original directory.
    assert torch.equal(parcae_lm.from_pretrained(tmp_path / "ours")(x)["logits"], model(x)["logits"])
    with pytest.raises(CheckpointError, match="save_pretrained"):
        export_hf(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(ConfigError, match="separate"):
        export_hf(tmp_path / "ours", tmp_path / "ours")
