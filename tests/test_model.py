"""The model library: configs, forward pass invariants, recurrence, injections, determinism."""

from __future__ import annotations

import math

import pytest
import torch

import parcae_lm
from parcae_lm.config import (
    IterationMethod,
    ParcaeConfig,
    SamplingScheme,
    create_config,
    from_dict,
)
from parcae_lm.errors import ConfigError
from parcae_lm.model import Parcae
from parcae_lm.model.recurrence import FIRST_DRAW, DepthShard, TrainDraw, expected_depths, sample_depths

# (name, unique params, state-dict keys in the reference incl. freqs_cis) — reference-model.md §3.2
PAPER_CONFIGS = [
    ("parcae-small-140m", 144_323_136, 63),
    ("parcae-medium-370m", 388_003_328, 117),
    ("parcae-large-770m", 776_655_680, 171),
    ("parcae-xlarge-1_3b", 1_338_591_744, 225),
    ("gpt-small-140m", 143_141_184, 58),
    ("gpt-medium-370m", 385_903_104, 112),
    ("gpt-large-770m", 773_375_040, 166),
    ("gpt-xlarge-1_3b", 1_333_868_544, 220),
]


def micro(**overrides) -> Parcae:
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", **overrides)


@pytest.mark.parametrize("name,params,keys", PAPER_CONFIGS)
def test_named_configs_match_reference_counts(name, params, keys):
    with torch.device("meta"):
        model = parcae_lm.create_model(name)
    assert model.num_parameters() == params
    # The reference also stores its RoPE table (freqs_cis); we recompute it instead.
    assert len(model.state_dict()) == keys - 1


def test_alias_names_resolve_to_the_same_config():
    assert create_config("parcae-140m") == create_config("parcae-small-140m")
    assert create_config("parcae-1.3b") == create_config("parcae-xlarge-1_3b")
    assert create_config("gpt-medium-380m") == create_config("gpt-medium-370m")
    with pytest.raises(ConfigError, match="unknown config"):
        create_config("parcae-9b")


def test_config_validation_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown ParcaeConfig field"):
        create_config("parcae-tiny", mean_recurence=4)
    with pytest.raises(ConfigError, match="injection_type"):
        create_config("parcae-tiny", injection_type="cubic")
    with pytest.raises(ConfigError, match="not divisible"):
        create_config("parcae-tiny", num_attention_heads=3)
    with pytest.raises(ConfigError, match="mean_backprop_depth"):
        create_config("parcae-tiny", mean_recurrence=2, mean_backprop_depth=3)


def test_reference_scheme_strings_are_accepted_when_loading():
    d = create_config("parcae-micro").to_dict()
    d["sampling_scheme"] = "poisson-fill-curriculum-sqrt-1000"
    cfg = from_dict(d)
    assert cfg.sampling_scheme == SamplingScheme.POISSON_FILL
    assert cfg.curriculum.value == "sqrt" and cfg.curriculum_steps == 1000


def test_reference_style_forward_dict():
    model = micro()
    x = torch.randint(0, 97, (2, 12))
    out = model(x, labels=x)
    assert set(out) == {"loss", "logits", "log_ppl"}
    assert out["logits"].shape == (2, 12, model.config.padded_vocab_size)
    assert out["logits"].dtype == torch.float32
    assert torch.equal(out["log_ppl"], out["loss"].detach())  # log perplexity, not exp'd
    assert model(x, labels=x, return_logits=False)["logits"] is None
    # Loss of an untrained model is about ln(V).
    assert abs(out["loss"].item() - math.log(model.config.padded_vocab_size)) < 1.0


def test_initialisation_matches_reference_scheme():
    model = micro()
    cfg, tr = model.config, model.transformer
    adapter = tr.adapter
    torch.testing.assert_close(
        adapter.state_matrix(), torch.full((cfg.recurrent_embedding_dimension,), math.sqrt(0.2))
    )
    torch.testing.assert_close(adapter.B, torch.eye(cfg.n_embd))
    torch.testing.assert_close(
        torch.nn.functional.softplus(adapter.dt_bias), torch.full_like(adapter.dt_bias, 0.5 * math.log(5))
    )
    for block in [*tr.prelude, *tr.core_block, *tr.coda]:
        assert block.attn.c_proj.weight.abs().max() == 0 and block.mlp.proj.weight.abs().max() == 0
        s = torch.linalg.svdvals(block.attn.c_q.weight)
        torch.testing.assert_close(s, torch.full_like(s, math.sqrt(2 / 5)), rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight is tr.wte.weight
    assert abs(tr.wte.weight.std().item() - math.sqrt(2 / (5 * cfg.n_embd))) < 2e-3


@pytest.mark.parametrize("scheme", [s for s in SamplingScheme])
@pytest.mark.parametrize("method", list(IterationMethod))
def test_sampled_depth_means_match_their_expectation(scheme, method):
    cfg = create_config(
        "parcae-micro",
        mean_recurrence=6,
        mean_backprop_depth=3,
        sampling_scheme=scheme,
        recurrent_iteration_method=method,
    )
    draws = [sample_depths(cfg, step, 8, 4) for step in range(600)]
    n = torch.stack([d.n.float().mean() for d in draws])
    k = torch.stack([d.k.float().mean() for d in draws])
    en, ek = expected_depths(cfg)
    for sample, expect in ((n, en), (k, ek)):
        se = sample.std() / math.sqrt(len(sample)) + 1e-3
        assert abs(sample.mean().item() - expect) < 5 * se, (scheme, method, sample.mean().item(), expect)


def test_truncated_full_mean_is_mean_recurrence_for_every_granularity():
    # The reference's per-batch poisson-truncated-full ran n + min(n, s) (≈11.8 at mean 8); ours runs n.
    for method in IterationMethod:
        cfg = create_config("parcae-small-140m", recurrent_iteration_method=method)
        totals = torch.stack([sample_depths(cfg, s, 4, 2).total.float().mean() for s in range(2000)])
        assert abs(totals.mean().item() - 8.0) < 0.12, (method, totals.mean().item())
        en, ek = expected_depths(cfg)
        assert abs(en + ek - (8 + math.exp(-8))) < 1e-9


def test_depths_are_seeded_by_step_and_independent_of_sharding():
    cfg = create_config("parcae-micro", recurrent_iteration_method=IterationMethod.PER_SEQUENCE)
    full = sample_depths(cfg, 7, 8, 4)
    assert torch.equal(full.n, sample_depths(cfg, 7, 8, 4).n)
    assert not torch.equal(full.total, sample_depths(cfg, 8, 8, 4).total)
    halves = [sample_depths(cfg, 7, 4, 4, DepthShard(i, 2)) for i in range(2)]
    assert torch.equal(torch.cat([h.n for h in halves]), full.n)
    assert torch.equal(torch.cat([h.k for h in halves]), full.k)


def test_eval_is_deterministic_and_row_independent():
    model = micro().eval()
    x = torch.randint(0, 97, (3, 16))
    a = model(x)["logits"]
    b = model(x)["logits"]
    assert torch.equal(a, b)
    # A row's logits do not depend on what else is in the batch.
    torch.testing.assert_close(model(x[1:2])["logits"][0], a[1], rtol=1e-5, atol=1e-5)
    # Depth override changes the result; the default is mean_recurrence.
    torch.testing.assert_close(model(x, num_steps=model.config.mean_recurrence)["logits"], a)
    assert not torch.allclose(model(x, num_steps=1)["logits"], a)
    # The reference's num_steps_pair spelling works too.
    torch.testing.assert_close(
        model(x, num_steps_pair=torch.tensor([3]))["logits"], model(x, num_steps=3)["logits"]
    )


def test_gradients_flow_only_through_the_grad_steps():
    model = micro(init_strategy="scaled").train()
    x = torch.randint(0, 97, (2, 10))
    model(x, labels=x, num_steps=(3, 0))["loss"].backward()
    assert all(p.grad is None for p in model.transformer.core_block.parameters())
    assert all(p.grad is None for p in model.transformer.adapter.parameters())
    assert all(p.grad is None for p in model.transformer.prelude.parameters())
    assert model.transformer.C.weight.grad is not None

    # Truncated BPTT equals running the no-grad steps, detaching, and differentiating the rest by hand.
    model.zero_grad(set_to_none=True)
    model.eval()
    model(x, labels=x, num_steps=(2, 2))["loss"].backward()
    auto = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    def truncated(h, u, ves, ctx):
        with torch.no_grad():
            for _ in range(2):
                h = model.core_step(h, u, ves, ctx)
        h = h.detach()
        for _ in range(2):
            h = model.core_step(h, u, ves, ctx)
        return h

    _unrolled_loss(model, x, truncated).backward()
    for name, p in model.named_parameters():
        if p.grad is not None or name in auto:
            torch.testing.assert_close(auto[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("layers", [(1, 1, 1), (0, 1, 0), (2, 3, 1), (1, 2, 2), (3, 1, 0)])
@pytest.mark.parametrize("model_name", ["parcae-micro", "gpt-micro"])
def test_every_parameter_gets_a_gradient(layers, model_name):
    n_p, n_c, n_o = layers
    torch.manual_seed(0)
    if model_name == "gpt-micro":
        model = parcae_lm.create_model(model_name, n_layer=n_p + n_c + n_o, init_strategy="scaled")
    else:
        model = parcae_lm.create_model(
            model_name,
            n_layers_in_prelude=n_p,
            n_layers_in_recurrent_block=n_c,
            n_layers_in_coda=n_o,
            init_strategy="scaled",
        )
    model.train()
    x = torch.randint(0, 97, (4, 12))
    model(x, labels=x)["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead


def _unrolled_loss(model: Parcae, x, loop, draw=FIRST_DRAW):
    """The forward pass written out by hand around a custom `loop(h, u, ves, ctx) -> h`."""
    tr, cfg = model.transformer, model.config
    ctx = model.attn_context(cfg.head_size, x.shape[1], x.device)
    e = tr.wte(x)
    for i, b in enumerate(tr.prelude):
        e = b(e, ctx, model.value_embedding(i, x))
    e = tr.ln_prelude(e)
    n_p, n_c = cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block
    ves = [model.value_embedding(n_p + i, x) for i in range(n_c)]
    h = loop(model.initial_state(e, None, draw), tr.adapter.prepare(e), ves, ctx)
    y = tr.C(h)
    for i, b in enumerate(tr.coda):
        y = b(y, ctx, model.value_embedding(n_p + n_c + i, x))
    return model.head(tr.ln_f(y), x, False)["loss"]


def _masked_reference_recurrence(model: Parcae, x, depths, draw):
    """The reference's execution: every row runs max(n) then max(k) iterations, masked with torch.where."""

    def masked(h, u, ves, ctx):
        for steps, grad in ((depths.n, False), (depths.k, True)):
            with torch.set_grad_enabled(grad):
                for j in range(int(steps.max())):
                    active = (steps > j).view(steps.shape[0], -1, 1)  # [B, T or 1, 1]
                    h = torch.where(active, model.core_step(h, u, ves, ctx), h)
        return h

    return _unrolled_loss(model, x, masked, draw)


@pytest.mark.parametrize("method", [IterationMethod.PER_SEQUENCE, IterationMethod.PER_TOKEN])
def test_ragged_depth_execution_equals_masked_reference(method):
    model = micro(init_strategy="scaled", recurrent_iteration_method=method, mean_recurrence=4).train()
    x = torch.randint(0, 97, (6, 10))
    depths = sample_depths(model.config, 3, 6, 10)
    assert len(set(depths.total.view(6, -1).amax(1).tolist())) > 1  # rows really differ
    loss = model(x, labels=x, draw=TrainDraw(step=3))["loss"]
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    ref = _masked_reference_recurrence(model, x, depths, TrainDraw(step=3))
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_document_masking_isolates_documents():
    model = micro(
        state_init="zero", init_strategy="scaled"
    ).eval()  # scaled-zero would zero attention at init
    a, b = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 9))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    out = model(packed, doc_ids=doc_ids)["logits"]
    torch.testing.assert_close(out[:, :7], model(a)["logits"], rtol=1e-4, atol=1e-4)
    # RoPE is relative, so document b scores the same as on its own.
    torch.testing.assert_close(out[:, 7:], model(b)["logits"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model(packed)["logits"][:, 7:], out[:, 7:], atol=1e-4)


def test_padding_mask_hides_padded_keys():
    model = micro(
        state_init="zero", init_strategy="scaled"
    ).eval()  # scaled-zero would zero attention at init
    x = torch.randint(0, 97, (1, 8))
    padded = torch.cat([x, torch.randint(0, 97, (1, 4))], dim=1)
    # Right-padding never matters under causal attention; mask keys in the middle instead.
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, 2:5] = 0
    out = model(padded, attention_mask=mask)["logits"]
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[:, 6:8], model(padded)["logits"][:, 6:8])


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_key_value_heads=1),  # GQA
        dict(recurrent_embedding_dimension=96, recurrent_num_attention_heads=3),  # d_r ≠ d, other heads
        dict(recurrent_embedding_dimension=128, recurrent_num_attention_heads=2, num_key_value_heads=1),
        dict(injection_type="linear"),
        dict(injection_type="add"),
        dict(b_discretization="zoh"),
        dict(norm_class_name="LayerNorm", bias=True, tie_embeddings=False),
    ],
)
def test_options_the_reference_crashes_on_work(overrides):
    model = micro(**overrides).train()
    x = torch.randint(0, 97, (2, 12))
    loss = model(x, labels=x)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        full = model(x)["logits"]
        cache = model.new_kv_cache(2, 12)

        def cached(a: int, b: int) -> torch.Tensor:
            return model(x[:, a:b], kv_cache=cache, input_pos=torch.arange(a, b), input_pos_maxp1=b)["logits"]

        parts = [cached(0, 5)] + [cached(i, i + 1) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_spectral_radius_diagnostics():
    model = micro()
    assert abs(model.diagnostics()["spectral_radius"] - math.sqrt(0.2)) < 1e-6
    with torch.no_grad():  # any parameter values keep the diagonal injection contractive
        model.transformer.adapter.A_log.normal_(0, 3)
        model.transformer.adapter.dt_bias.normal_(0, 3)
    assert 0 < model.diagnostics()["spectral_radius"] < 1
    lin = micro(injection_type="linear")
    W = lin.transformer.adapter.state_matrix().detach()
    assert abs(lin.diagnostics()["spectral_radius"] - torch.linalg.eigvals(W).abs().max().item()) < 1e-5
    assert micro(injection_type="add").diagnostics()["spectral_radius"] == 1.0


def test_zoh_discretisation_formula():
    model = micro(b_discretization="zoh")
    ad = model.transformer.adapter
    with torch.no_grad():
        ad.A_log.normal_()
    e = torch.randn(1, 3, 64)
    a, dt = ad.A_log.exp(), torch.nn.functional.softplus(ad.dt_bias)
    expected = (e @ ad.B.T) * ((1 - torch.exp(-dt * a)) / a)
    torch.testing.assert_close(ad.prepare(e), expected)


def test_state_diagnostics_and_trace():
    model = micro().train()
    x = torch.randint(0, 97, (3, 10))
    d = model(x, labels=x, diagnostics=True)
    assert d["state_norm"] > 0 and d["rel_residual"] >= 0
    assert "state_norm" not in model(x, labels=x)
    trace = model.eval().recurrence_trace(x, num_steps=5)
    assert len(trace) == 5 and all(t["state_norm"] > 0 for t in trace)


def test_training_state_noise_is_seeded_by_step():
    model = micro().train()
    x = torch.randint(0, 97, (2, 8))
    a = model(x, labels=x, draw=TrainDraw(step=5))["loss"]
    b = model(x, labels=x, draw=TrainDraw(step=5))["loss"]
    c = model(x, labels=x, draw=TrainDraw(step=6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_parcae_config_roundtrips_through_dict():
    cfg = create_config("parcae-tiny", injection_type="linear", recurrent_iteration_method="per-token")
    again = from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, ParcaeConfig)


def test_rope_rotates_interleaved_pairs():
    from parcae_lm.model.layers import apply_rope, rope_real, rope_table

    x = torch.randn(2, 5, 3, 8)
    table = torch.view_as_real(rope_table(5, 8, 50000.0, 1.0))  # (cos, sin) pairs [T, D/2, 2]
    out = apply_rope(x, table)
    # the real-arithmetic form used under torch.compile, with shared and per-row tables
    torch.testing.assert_close(rope_real(x, table), out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rope_real(x, table.expand(2, 5, 4, 2)), out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apply_rope(x, table.expand(2, 5, 4, 2).contiguous()), out)
    pos = torch.arange(5.0)[:, None]
    theta = pos * 50000.0 ** (-torch.arange(0, 8, 2) / 8)  # [T, D/2]
    a, b = x[..., 0::2], x[..., 1::2]
    cos, sin = theta.cos()[:, None], theta.sin()[:, None]
    expected = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_head_loss_and_grads_equal_plain_cross_entropy(softcap):
    model = micro(init_strategy="scaled", logit_softcap=softcap).eval()
    x = torch.randint(0, 97, (3, 11))
    labels = x.clone()
    labels[0, :4] = -100
    chunked = model(x, labels=labels, return_logits=False, num_steps=2)["loss"]
    chunked.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    plain = model(x, labels=labels, return_logits=True, num_steps=2)
    logits = plain["logits"]
    ref = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    torch.testing.assert_close(plain["loss"], ref)
    plain["loss"].backward()
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_linear_cross_entropy_chunks_agree():
    from parcae_lm.model.loss import linear_cross_entropy

    x = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    y[::5] = -100
    ref = torch.nn.functional.cross_entropy(x @ w.T, y)
    for upstream in (1.0, 2.0):  # 1.0 takes the no-rescale shortcut in backward
        loss = linear_cross_entropy(x, w, y, chunk=4)
        gx, gw = torch.autograd.grad(upstream * loss, (x, w))
        rx, rw = torch.autograd.grad(upstream * ref, (x, w), retain_graph=True)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)
    all_ignored = linear_cross_entropy(x, w, torch.full_like(y, -100), chunk=4)
    assert all_ignored.item() == 0.0
    assert torch.autograd.grad(all_ignored, x)[0].abs().max() == 0


@pytest.mark.parametrize("softcap", [None, 15.0])
def test_linear_cross_entropy_extreme_logits_and_softcap(softcap):
    """Labels far below the row maximum (probability underflows to 0 in fp32) still get exact losses."""
    from parcae_lm.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = (20 * torch.randn(24, 8)).requires_grad_()
    w = torch.randn(40, 8, requires_grad=True)
    y = torch.randint(0, 40, (24,))
    logits = x @ w.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ref = torch.nn.functional.cross_entropy(logits, y)
    gap = (logits.max(-1).values - logits.gather(1, y[:, None]).squeeze(1)).max()
    assert softcap is not None or gap > 120  # exp(-gap) is 0 in fp32
    for chunk in (5, None):
        loss = linear_cross_entropy(x, w, y, chunk=chunk, softcap=softcap)
        torch.testing.assert_close(loss, ref)
        gx, gw = torch.autograd.grad(loss, (x, w))
        rx, rw = torch.autograd.grad(ref, (x, w), retain_graph=True)
        torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    x = torch.randint(0, 97, (2, 12))
    eager = micro(init_strategy="scaled").train()
    compiled = micro(init_strategy="scaled").train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    out = []
    for model in (eager, compiled):
        loss = model(x, labels=x, draw=TrainDraw(step=3))["loss"]
        loss.backward()
        out.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    for n, g in out[0][1].items():
        torch.testing.assert_close(out[1][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["parcae-micro", "gpt-micro"])
def test_activation_checkpointing_gives_identical_gradients(name):
    x = torch.randint(0, 97, (4, 10))
    grads = []
    extra = {"recurrent_iteration_method": "per-sequence"} if name.startswith("parcae") else {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = parcae_lm.create_model(name, init_strategy="scaled", **extra).train()
        model.activation_checkpointing = ckpt
        model(x, labels=x, draw=TrainDraw(step=2))["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7, msg=n)


def test_linear_cross_entropy_bf16_matches_fp32():
    """Low-precision inputs (the GPU autocast path) accumulate the loss and weight gradient in fp32."""
    from parcae_lm.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(37, 16).bfloat16().requires_grad_()
    w = torch.randn(50, 16).bfloat16().requires_grad_()
    y = torch.randint(0, 50, (37,))
    loss = linear_cross_entropy(x, w, y, chunk=8)
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert gx.dtype == gw.dtype == torch.bfloat16
    xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(xf @ wf.T, y)
    rx, rw = torch.autograd.grad(ref, (xf, wf))
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(gx.float(), rx, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw.float(), rw, rtol=2e-2, atol=2e-3)


@pytest.mark.slow
def test_compiled_blocks_cover_every_call_variant():
    """Training, no-grad evaluation, masked attention and cached generation all run compiled: together
    they exceed dynamo's default of 8 variants per code object, which would silently fall back to eager."""
    import logging

    warnings_seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings_seen.append(record.getMessage())

    handler = Catch(level=logging.WARNING)
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        model = micro(init_strategy="scaled", recurrent_iteration_method="per-sequence").train()
        model.compile_blocks()
        x = torch.randint(0, 97, (4, 12))
        for step in range(2):
            model.step = step
            model(x, labels=x)["loss"].backward()
        model.eval()
        mask = torch.ones_like(x)
        mask[0, :3] = 0
        with torch.no_grad():
            model(x)
            model(x[:3])
            model(x, attention_mask=mask)
        for batch in (1, 2):
            model.generate(x[:batch, :4], 3, temperature=0)
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
    assert not [w for w in warnings_seen if "recompile_limit" in w], warnings_seen


@pytest.mark.parametrize("bias", [False, True])
def test_relu2_mlp_scales_after_the_projection_exactly(bias):
    """The MLP applies ReLU2's ½ after the down-projection; the output and gradients are bit-identical."""
    from parcae_lm.config import Activation
    from parcae_lm.model.layers import MLP, activation

    torch.manual_seed(0)
    mlp = MLP(16, 64, bias, Activation.RELU2)
    x = torch.randn(3, 5, 16, requires_grad=True)
    out = mlp(x)
    ref = mlp.proj(activation(Activation.RELU2, mlp.fc(x)))
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, mlp.fc.weight, mlp.proj.weight), g)
    want = torch.autograd.grad(ref, (x, mlp.fc.weight, mlp.proj.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
