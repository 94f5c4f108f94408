"""`model.generate` on the user's path against the authors' code, alternating in one run.

    python tools/bench_decode_vs_reference.py --reference REF_DIR --out docs/results/inference/decode

REF_DIR is a checkout of the authors' repository (sandyresearch/parcae; it needs `transformers`). Both
sides get the same bench config (d=256, 4 heads, I=1024, 2/2/2, vocab 32768, recurrence 4, block 512),
the same random weights (ours are copied into the reference model through its state dict), the same
random prompt; each call is prompt + greedy decoding, prefill included. The reference runs in a worker
process (its package is also named `parcae_lm`); calls alternate ours / theirs. Also measured: the
memory bandwidth and the bytes of weights a step reads, whose ratio bounds tokens/s. Writes
OUT.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from parcae_lm import save_pretrained
from parcae_lm.bench.generate import bench_user_path, weight_bytes_per_token
from parcae_lm.bench.train import bench_config
from parcae_lm.files import atomic_write_text
from parcae_lm.model import build_model
from parcae_lm.runtime import memory_bandwidth

# The worker: builds the reference model of the same shape, loads our weights, times its generate().
WORKER = r"""
import sys, time, torch
from safetensors.torch import load_file
sys.path.insert(0, sys.argv[1])
from parcae_lm.models.parcae.config import ParcaeConfig
from receval.models.parcae import ModelingParcae
torch.set_num_threads(int(sys.argv[4]))
cfg = ParcaeConfig(name="parcae-tiny", block_size=512, vocab_size=32768, padding_multiple=64, n_embd=256,
    num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024, bias=False, tie_embeddings=True,
    norm_class_name="RMSNorm", norm_eps=1e-5, mlp_class_name="BaseMLP", nonlin_name="ReLU2", qk_norm=True,
    init_strategy="scaled-zero", init_orthogonal=True, prelude_norm=True, injection_type="diagonal",
    state_init="like-init", recurrent_embedding_dimension=256, recurrent_intermediation_embedding_dimension=1024,
    n_layers_in_prelude=2, n_layers_in_recurrent_block=2, n_layers_in_coda=2, mean_recurrence=4,
    mean_backprop_depth=2, sampling_scheme="fixed", recurrent_iteration_method="per-batch")
model = ModelingParcae(cfg).eval()
state = load_file(sys.argv[2])
state["lm_head.weight"] = state["transformer.wte.weight"]
missing, unexpected = model.load_state_dict(state, strict=False)
assert not [k for k in missing if "freqs" not in k] and not unexpected, (missing, unexpected)
prompt = torch.load(sys.argv[3])
new = int(sys.argv[5])
with torch.no_grad():
    model.generate(prompt, 4, do_sample=False)
    print("ready", flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        out = model.generate(prompt, new, do_sample=False)
        print(time.perf_counter() - t0, flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="checkout of the authors' repository")
    ap.add_argument("--out", required=True, help="result path without extension (writes OUT.json)")
    ap.add_argument("--prompt_len", type=int, default=256)
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(bench_config(block_size=512)).eval()
    prompt = torch.randint(0, 32768, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        torch.save(prompt, Path(tmp, "prompt.pt"))
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, args.reference, str(Path(tmp, "model.safetensors")),
             str(Path(tmp, "prompt.pt")), str(args.threads), str(args.new_tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if worker.stdout.readline().strip() != "ready":
            raise SystemExit("the reference worker did not start (see its error above)")
        theirs: list[float] = []

        def reference_call() -> None:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            theirs.append(float(worker.stdout.readline()))

        ours = bench_user_path(model, prompt, args.new_tokens, args.reps, between=reference_call)
        worker.stdin.close()
        worker.wait()
    bandwidth = memory_bandwidth()
    weights = weight_bytes_per_token(model)
    ref_median = sorted(theirs)[len(theirs) // 2]
    ref_tps = args.new_tokens / ref_median
    result = {
        "config": "bench_config(block_size=512): d=256, 4 heads, I=1024, 2/2/2, vocab 32768, recurrence 4",
        "threads": args.threads,
        "ours": ours.to_dict(),
        "reference_seconds": theirs,
        "reference_tokens_per_second": ref_tps,
        "speedup": ours.tokens_per_second / ref_tps,
        "ms_per_token": 1000 / ours.tokens_per_second,
        "memory_bandwidth_bytes_per_second": bandwidth,
        "weight_bytes_per_token": weights,
        "bandwidth_limit_tokens_per_second": bandwidth / weights,
        "bandwidth_limit_ms_per_token": 1000 * weights / bandwidth,
    }
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(
        f"model.generate {ours.tokens_per_second:.1f} tok/s ({1000 / ours.tokens_per_second:.2f} ms/token, "
        f"prefill included), reference {ref_tps:.1f} tok/s: {result['speedup']:.2f}x; bandwidth limit "
        f"{bandwidth / weights:.0f} tok/s ({bandwidth / 1e9:.1f} GB/s / {weights / 1e6:.1f} MB); "
        f"first call {ours.first_call_seconds:.2f} s, warm-up {ours.warmup_calls} calls "
        f"{ours.warmup_seconds:.1f} s -> {out}"
    )


if __name__ == "__main__":
    main()
