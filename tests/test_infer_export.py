"""torch.export: outputs match eager within tolerance; bad input errors. (Quantisation: test_quantize.py.)"""

from __future__ import annotations

import pytest
import torch

import parcae_lm
from parcae_lm.errors import ConfigError
from parcae_lm.infer.export import export_program, load_program, save_program


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()


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
