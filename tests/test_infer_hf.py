"""transformers integration: an export (export_hf) loads with AutoModelForCausalLM / AutoTokenizer — in
this process through the registered classes, in a fresh one through the export's own code files
(trust_remote_code) — its greedy generate() equals ours and runs on the KV cache (one new token per
forward), and our own loaders read the export too. Offline, on local directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import parcae_lm
from parcae_lm.tokenizer import Tokenizer

pytest.importorskip("transformers")

SRC = Path(parcae_lm.__file__).resolve().parents[1]


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
    # Our own loader still reads the original directory, and reads the export as well.
    assert torch.equal(parcae_lm.from_pretrained(tmp_path / "ours")(x)["logits"], model(x)["logits"])
    assert torch.equal(parcae_lm.from_pretrained(tmp_path / "hf")(x)["logits"], model(x)["logits"])
    with pytest.raises(CheckpointError, match="save_pretrained|does not exist"):
        export_hf(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(ConfigError, match="separate"):
        export_hf(tmp_path / "ours", tmp_path / "ours")


@torch.no_grad()
def test_generate_uses_the_cache_one_token_per_step(tmp_path):
    from transformers import AutoModelForCausalLM

    from parcae_lm.infer.hf import export_hf

    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    parcae_lm.save_pretrained(model, tmp_path / "ours")
    hf = AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "ours", tmp_path / "hf"))
    lengths: list[int] = []
    hook = hf.inner.register_forward_pre_hook(
        lambda mod, args, kw: lengths.append(args[0].shape[1]), with_kwargs=True
    )
    x = torch.randint(0, 97, (1, 5))
    out = hf.generate(x, max_new_tokens=40, do_sample=False, pad_token_id=0)
    hook.remove()
    assert lengths == [5] + [1] * 39  # the prompt once, then one token per forward: linear time
    assert torch.equal(out, model.generate(x, 40, temperature=0))
    # A left-padded batch decodes without the cache, masked: each row equals its own unpadded generation.
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 2:], model.generate(ids[:1, 2:], 6, temperature=0)[0])
    assert torch.equal(out[1], model.generate(ids[1:], 6, temperature=0)[0])


def _run_dir(tmp_path: Path) -> tuple[Path, Tokenizer]:
    text = ["ROMEO: But soft, what light through yonder window breaks?", "JULIET: O Romeo, Romeo!"] * 20
    tok = Tokenizer.train(text, vocab_size=300)
    run = tmp_path / "run"
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", vocab_size=tok.vocab_size, init_strategy="scaled")
    parcae_lm.save_pretrained(model, run)
    return run, tok


FRESH = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
assert "parcae_lm.infer.hf" in sys.modules and type(model).__name__ == "ParcaeForCausalLM"
ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]])
out = model.generate(ids, max_new_tokens=24, do_sample=False)
print(json.dumps({"ids": ids[0].tolist(), "new": out[0, ids.shape[1]:].tolist(), "eos": tok.eos_token_id}))
"""


def test_fresh_process_loads_the_export_with_remote_code(tmp_path):
    from parcae_lm.checkpoint import load_run
    from parcae_lm.infer.hf import export_hf

    run_dir, tok = _run_dir(tmp_path)
    out = export_hf(run_dir, tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"configuration_parcae.py", "modeling_parcae.py", "generation_config.json"} <= names
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "mods"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(out), "ROMEO:"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # parcae generate's greedy tokens: BOS + the prompt, continued until EOS.
    run = load_run(out)  # our loader reads the export: model and the tokenizer at its root
    ids = [run.tokenizer.bos_id, *run.tokenizer.encode("ROMEO:")]
    assert got["ids"] == ids and got["eos"] == tok.eos_id
    ours = run.model.generate(torch.tensor([ids]), 24, temperature=0, eos_id=tok.eos_id)[
        0, len(ids) :
    ].tolist()
    n = ours.index(tok.eos_id) + 1 if tok.eos_id in ours else len(ours)
    assert got["new"][:n] == ours[:n]


@pytest.mark.slow
def test_lm_eval_hf_runs_a_task_on_the_export(tmp_path):
    """`lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True` on a local task (~1 min)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm_eval's hf model needs it
    from parcae_lm.infer.hf import export_hf

    run_dir, _ = _run_dir(tmp_path)
    out = export_hf(run_dir, tmp_path / "hf")
    (tmp_path / "tasks").mkdir()
    rows = [{"question": "ROMEO: But", "choices": [" soft", " hard"], "gold": 0}] * 3
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks" / "toy.yaml").write_text(
        "task: parcae_hf_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args"]
    cmd += [f"pretrained={out},trust_remote_code=True", "--tasks", "parcae_hf_toy", "--device", "cpu"]
    cmd += ["--include_path", str(tmp_path / "tasks"), "--batch_size", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update(HF_DATASETS_CACHE=str(tmp_path / "ds"), HF_MODULES_CACHE=str(tmp_path / "mods"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parcae_hf_toy" in proc.stdout and "acc" in proc.stdout
