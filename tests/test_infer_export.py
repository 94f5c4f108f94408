"""int8 dynamic quantization and torch.export: outputs match eager within tolerance; bad input errors."""

from __future__ import annotations

import pytest
import torch

import parcae_lm
from parcae_lm.errors import ConfigError
from parcae_lm.infer.export import (
    export_program,
    load_program,
    quantize_int8,
    save_program,
    state_dict_bytes,
)
from parcae_lm.infer.quality import stepwise_bpb


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()


@torch.no_grad()
def test_int8_quantization_close_smaller_and_decoder_compatible(model):
    q = quantize_int8(model)
    assert type(model.lm_head) is torch.nn.Linear  # the original is untouched
    x = torch.randint(0, 97, (2, 12))
    ref, got = model(x)["logits"], q(x)["logits"]
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert state_dict_bytes(q) < 0.6 * state_dict_bytes(model)
    # Cached decoding drives the quantized Linears through their own kernels (one chunk: activations are
    # quantized per call, so token-by-token steps differ from the parallel forward by quantization noise).
    cached = q(x, kv_cache=q.new_kv_cache(2, 12), input_pos=torch.arange(12))["logits"]
    assert (cached - got).abs().max() < 1e-4
    y = torch.randint(0, 97, (2, 12))
    tb = torch.ones(model.config.padded_vocab_size, dtype=torch.long)
    b32, b8 = (stepwise_bpb(m, [(x, y)], tb).bits_per_byte for m in (model, q))
    assert abs(b8 - b32) < 0.01 * b32


def test_quantization_rejects_unsupported_dtype_and_device(model):
    with pytest.raises(ConfigError, match="fp32"):
        quantize_int8(parcae_lm.create_model("parcae-micro").to(torch.bfloat16).eval())
    with torch.device("meta"):
        meta = parcae_lm.create_model("parcae-micro").eval()
    with pytest.raises(ConfigError, match="CPU only"):
        quantize_int8(meta)


@torch.no_grad()
def test_torch_export_matches_eager_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()  # fresh: no lazy tables yet
    program = export_program(model, seq_len=10, num_steps=1)  # one iteration: a smaller graph to trace
    x = torch.randint(0, 97, (3, 10))  # a batch size other than the example's
    ref = model(x, num_steps=1)["logits"]
    assert (program.module()(x) - ref).abs().max() < 1e-5
    path = save_program(program, tmp_path / "model.pt2")
    assert (load_program(path).module()(x) - ref).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="seq_len"):
        export_program(model, seq_len=1000)
    with pytest.raises(ConfigError, match="eval"):
        export_program(parcae_lm.create_model("parcae-micro").train(), seq_len=8)


def test_onnx_export_runs_in_onnxruntime_and_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from parcae_lm.infer.export import export_onnx

    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    path = export_onnx(model, tmp_path / "model.onnx", seq_len=10, num_steps=2)
    x = torch.randint(0, 97, (3, 10))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x, num_steps=2)["logits"]
    assert out.shape == tuple(ref.shape)
    assert abs(out - ref.numpy()).max() < 1e-4
