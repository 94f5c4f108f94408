"""A lean inference engine: the model's weights, repacked once, driven with a preallocated KV cache.

The training-oriented forward spends most of a one-token decode step in Python and small-op overhead
(three q/k/v matmuls, RoPE as a dozen elementwise ops, fresh RoPE slices, logits for every position).
`Engine` computes exactly the same function with fewer, fused operations per block:

- q, k and v come from one matmul against a concatenated weight;
- RoPE is one complex multiply on q and k together, against a precomputed e^{iθ} table (the same
  interleaved-pair rotation as `layers.apply_rope`, in fp32);
- QK-norm runs once over q and k together; the ½ of ½·ReLU² is folded into the MLP output weight (exact:
  a power of two), and residual adds are fused into `addmm`;
- the head runs on the last position only.

It reads the model's modules at construction (so build it after loading/quantizing weights) and never
modifies the model. Parcae and GPT are both supported; for Parcae the loop is exposed one iteration at
a time (`prelude`, `iterate`, `readout`) so adaptive-depth decoding (`infer.adaptive`) can drive it.

Even fused, an eager decode step is hundreds of small aten calls (571 top-level ones, views included,
on the bench config), each paying dispatch overhead. With `Engine(..., compiled=True)` the whole step
runs as one inductor-compiled graph (`StaticDecode`): the position is a tensor, so the graph is the same
at every position and compiles once per engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae_lm.config import Activation, Norm
from parcae_lm.errors import ConfigError
from parcae_lm.infer.kv_cache import FULL_CACHE, CacheStrategy, KVCache, KVSlot
from parcae_lm.model import GPT, LanguageModel, Parcae
from parcae_lm.model.layers import VE_GATE_CHANNELS, Block, rope_table


@dataclass
class _Rope:
    cis: Tensor  # [block_size, D/2] complex64: e^{iθ(pos, pair)}
    cos: Tensor  # [block_size, D/2] fp32: its real and imaginary parts, for the compiled decode step
    sin: Tensor

    @classmethod
    def of(cls, cis: Tensor) -> _Rope:
        cos, sin = torch.view_as_real(cis).unbind(-1)
        return cls(cis, cos.contiguous(), sin.contiguous())


class FastBlock:
    """One transformer block with repacked weights. Calls mirror `layers.Block.forward` numerically."""

    def __init__(self, block: Block, rope: _Rope, norm: Norm, act: Activation) -> None:
        if norm != Norm.RMSNORM or act != Activation.RELU2:
            raise NotImplementedError(
                f"the fast engine implements RMSNorm + ReLU² blocks (got {norm.value}, {act.value}); "
                "use the model's forward for this config"
            )
        a, m = block.attn, block.mlp
        self.n_head, self.n_kv, self.head_size = a.n_head, a.n_kv, a.head_size
        self.qk_norm = a.qk_norm
        self.rope = rope
        self.norm_1_w, self.norm_1_eps = block.norm_1.weight, block.norm_1.eps
        self.norm_2_w, self.norm_2_eps = block.norm_2.weight, block.norm_2.eps
        self.dq, self.dk = a.n_head * a.head_size, a.n_kv * a.head_size
        self.qkv = _fused_linear([a.c_q, a.c_k, a.c_v])
        self.proj = _LinearOp.of(a.c_proj)
        self.gate = None if a.ve_gate is None else _LinearOp.of(a.ve_gate)
        self.fc = _LinearOp.of(m.fc)
        self.mlp_proj = _LinearOp.of(m.proj, scale=0.5)  # ½·relu(x)² → relu(x)² @ (½W)ᵀ

    def __call__(self, x: Tensor, pos: int, ve: Tensor | None, k_buf: Tensor, v_buf: Tensor) -> Tensor:
        """x [B, T, d] at positions pos..pos+T; writes this block's K/V into the buffers [B, H, L, D]."""
        B, T, _ = x.shape
        cis = self.rope.cis[pos : pos + T, None]
        q, k, v = self._qkv(x, ve, lambda qk: torch.view_as_real(torch.view_as_complex(qk) * cis))
        end = pos + T
        k_buf[:, :, pos:end] = k.transpose(1, 2)
        v_buf[:, :, pos:end] = v.transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k_buf[:, :, :end],
            v_buf[:, :, :end],
            attn_mask=_causal_mask(pos, T, x.device),
            enable_gqa=self.n_head != self.n_kv,
        )
        return self._out(x, y.transpose(1, 2).reshape(B, T, -1))

    def decode_static(
        self, x: Tensor, index: Tensor, keys: Tensor, ve: Tensor | None, k_buf: Tensor, v_buf: Tensor
    ) -> Tensor:
        """One token per row, x [B, d], at the position in `index` ([1] long), with the same shapes at every
        position: K/V go in with `index_copy_` and attention covers the whole buffer, `keys` ([L] bool,
        True up to the position) masking the rest. No complex tensors (inductor cannot generate code for
        them): RoPE uses the real cos/sin tables. Activations stay 2-D: a [B, 1, d] → [B, d] view inside
        the graph gives the matmuls a zero-stride operand, which aten copies before every GEMM."""
        cos = self.rope.cos.index_select(0, index)[:, :, None]  # [1, D/2, 1]: broadcasts over heads, pairs
        sin = self.rope.sin.index_select(0, index)[:, :, None]

        def rotate(qk: Tensor) -> Tensor:
            # (a, b) → (a cos − b sin, b cos + a sin): the complex multiply of `__call__`, in reals.
            swapped = torch.stack((-qk[..., 1], qk[..., 0]), dim=-1)
            return qk * cos + swapped * sin

        q, k, v = self._qkv(x, ve, rotate)  # [B, H, D]
        k_buf.index_copy_(2, index, k[:, :, None].to(k_buf.dtype))
        v_buf.index_copy_(2, index, v[:, :, None].to(v_buf.dtype))
        return self._out(x, _single_query_attention(q, k_buf, v_buf, keys))

    def _qkv(
        self, x: Tensor, ve: Tensor | None, rotate: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [..., H, D] for the block input x [..., d]; `rotate` applies RoPE to the fp32 pairs
        [..., H_q + H_kv, D/2, 2] of q and k."""
        h = _rms_norm(x, self.norm_1_w, self.norm_1_eps)
        qkv = self.qkv(h)
        qk = qkv[..., : self.dq + self.dk].float().unflatten(-1, (self.n_head + self.n_kv, -1, 2))
        qk = rotate(qk).flatten(-2).to(x.dtype)
        if self.qk_norm:
            qk = F.rms_norm(qk, (self.head_size,))
        v = qkv[..., self.dq + self.dk :].unflatten(-1, (self.n_kv, self.head_size))
        if ve is not None and self.gate is not None:
            gate = torch.sigmoid(self.gate(h[..., :VE_GATE_CHANNELS])).unsqueeze(-1)
            v = torch.addcmul(v, gate, ve.unflatten(-1, (self.n_kv, self.head_size)), value=2.0)
        return qk[..., : self.n_head, :], qk[..., self.n_head :, :], v

    def _out(self, x: Tensor, y: Tensor) -> Tensor:
        """Output projection of the attention result y [..., H·D], then the MLP; both residual."""
        x = self.proj.add_to(x, y)
        h = _rms_norm(x, self.norm_2_w, self.norm_2_eps)
        f = self.fc(h).relu_().square_()
        return self.mlp_proj.add_to(x, f)


def _single_query_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor) -> Tensor:
    """softmax(q·kᵀ/√D masked to `keys`)·v → [B, H·D] for one query per head, q [B, H, D], over the
    buffers k, v [B, H_kv, L, D] (query head h reads kv head h // (H / H_kv), as grouped-query SDPA).
    Written as products and sums, inductor fuses it into one kernel, where SDPA would be an opaque call
    with its own setup; measured in docs/inference.md."""
    B, H, D = q.shape
    n_kv = k.shape[1]
    qg = q.view(B, n_kv, H // n_kv, 1, D)
    scores = (qg * k[:, :, None]).sum(-1) * D**-0.5  # [B, H_kv, G, L]
    p = torch.softmax(scores.masked_fill(~keys, float("-inf")), dim=-1)
    return (p[..., None] * v[:, :, None]).sum(-2).view(B, H * D)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """`layers.RMSNorm`: normalise in fp32, cast back, then scale (one fused call when x is fp32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * weight


class _LinearOp:
    """y = x @ Wᵀ (+ b); plain weights or a quantized module's own forward."""

    def __init__(self, weight: Tensor | None, bias: Tensor | None, module: nn.Module | None = None) -> None:
        self.weight, self.bias, self.module = weight, bias, module

    @classmethod
    def of(cls, lin: nn.Module, scale: float = 1.0) -> _LinearOp:
        if type(lin) is not nn.Linear:  # e.g. a dynamically quantized Linear: keep its kernel
            if scale != 1.0:
                return cls(None, None, _Scaled(lin, scale))
            return cls(None, None, lin)
        w = lin.weight.detach() * scale if scale != 1.0 else lin.weight.detach()
        b = None if lin.bias is None else lin.bias.detach() * scale
        return cls(w, b)

    def __call__(self, x: Tensor) -> Tensor:
        if self.module is not None:
            return self.module(x)
        return F.linear(x, self.weight, self.bias)

    def add_to(self, x: Tensor, inp: Tensor) -> Tensor:
        """x + linear(inp), fused into one addmm for plain weights."""
        if self.module is not None or self.bias is not None:
            return x + self(inp)
        shape = x.shape
        return torch.addmm(x.reshape(-1, shape[-1]), inp.reshape(-1, inp.shape[-1]), self.weight.t()).view(
            shape
        )


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * self.scale


def _fused_linear(lins: list[nn.Module]) -> _LinearOp:
    if all(type(lin) is nn.Linear for lin in lins):
        w = torch.cat([lin.weight.detach() for lin in lins])
        b = None if lins[0].bias is None else torch.cat([lin.bias.detach() for lin in lins])
        return _LinearOp(w, b)
    return _LinearOp(None, None, _Concat(lins))


class _Concat(nn.Module):
    def __init__(self, lins: list[nn.Module]) -> None:
        super().__init__()
        self.lins = nn.ModuleList(lins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([lin(x) for lin in self.lins], dim=-1)


def _causal_mask(pos: int, T: int, device) -> Tensor | None:
    """Bottom-right causal mask for T queries at pos.. over pos+T keys; None for a single query."""
    if T == 1:
        return None
    q = torch.arange(pos, pos + T, device=device)[:, None]
    return torch.arange(pos + T, device=device)[None, :] <= q


def _rope(cfg, head_size: int, device) -> _Rope:
    return _Rope.of(rope_table(cfg.block_size, head_size, cfg.rope_base, cfg.rope_condense_ratio, device))


# --------------------------------------------------------------------------------------------------
class Engine:
    """Prefill + one-token decode steps for a Parcae or GPT model, with a preallocated `KVCache`.

    >>> eng = Engine(model, batch_size=1, max_len=512)
    >>> logits = eng.prefill(prompt_ids)          # [B, V] for the last prompt position
    >>> logits = eng.step(next_token)             # [B, V], one new token per row
    """

    def __init__(
        self,
        model: LanguageModel,
        batch_size: int,
        max_len: int,
        num_steps: int | None = None,
        strategy: CacheStrategy = FULL_CACHE,
        cache_dtype: torch.dtype | None = None,
        compiled: bool = False,
    ) -> None:
        """`compiled=True` runs `step` through one torch.compile'd static-shape function (`StaticDecode`;
        full cache and plain weights only, else ConfigError). It compiles on the first step, or when
        `precompile()` is called; prefill and the loop pieces stay eager."""
        if model.training:
            raise ValueError("Engine runs models in eval mode; call model.eval() first")
        cfg = model.config
        self.model, self.config = model, cfg
        self.is_parcae = isinstance(model, Parcae)
        kw = {} if num_steps is None else {"num_steps": num_steps}
        self.cache = KVCache(model, batch_size, max_len, dtype=cache_dtype, strategy=strategy, **kw)
        self.num_steps = self.cache.num_steps
        self.batch_size = batch_size
        device = model.device
        tr = model.transformer
        main_rope = _rope(cfg, cfg.head_size, device)
        mk = lambda b, rope: FastBlock(b, rope, cfg.norm_class_name, cfg.nonlin_name)  # noqa: E731
        self.wte = tr.wte.weight
        self.head = _LinearOp.of(model.lm_head)
        self.vocab_size = model.lm_head.out_features
        self.softcap = cfg.logit_softcap
        self.ln_f_w, self.ln_f_eps = tr.ln_f.weight, tr.ln_f.eps
        if isinstance(model, GPT):
            self.blocks = [mk(b, main_rope) for b in tr.h]
            self.ve_tables = [_ve_table(model, i) for i in range(len(self.blocks))]
        else:
            self._init_loop(model, mk, main_rope)
        self.static = StaticDecode(self) if compiled else None

    def _init_loop(self, model: Parcae, mk: Callable[[Block, _Rope], FastBlock], main_rope: _Rope) -> None:
        cfg, tr, device = model.config, model.transformer, model.device
        core_rope = (
            main_rope if model.core_head_size == cfg.head_size else _rope(cfg, model.core_head_size, device)
        )
        n_p, n_c = cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block
        self.prelude = [mk(b, main_rope) for b in tr.prelude]
        self.core = [mk(b, core_rope) for b in tr.core_block]
        self.coda = [mk(b, main_rope) for b in tr.coda]
        self.prelude_ve = [_ve_table(model, i) for i in range(n_p)]
        self.core_ve = [_ve_table(model, n_p + i) for i in range(n_c)]
        self.coda_ve = [_ve_table(model, n_p + n_c + i) for i in range(len(self.coda))]
        self.ln_prelude = (tr.ln_prelude.weight, tr.ln_prelude.eps) if cfg.prelude_norm else None
        self.adapter = tr.adapter
        self.C = _LinearOp.of(tr.C)
        with torch.no_grad():
            # The injection's per-iteration factor and input term are constants of the weights.
            self.state_decay = _state_decay(tr.adapter)
            self.input_weight = _input_weight(tr.adapter)

    # -- whole-token paths ------------------------------------------------------------------------
    @property
    def pos(self) -> int:
        return self.cache.pos

    def reset(self) -> None:
        """Start a new sequence in the same buffers (old entries are overwritten before being read)."""
        self.cache.pos = 0

    @torch.no_grad()
    def prefill(self, ids: Tensor) -> Tensor:
        """Process a [B, T] chunk at the current position; returns the last position's logits [B, V]."""
        return self.logits(self.hidden(ids)[:, -1])

    @torch.no_grad()
    def step(self, token: Tensor) -> Tensor:
        """One new token per row ([B]); returns logits [B, V]."""
        if self.static is not None:
            return self.static.step(token)
        return self.logits(self.hidden(token[:, None])[:, 0])

    def precompile(self) -> float:
        """Compile the static decode step now instead of on the first `step`; returns the seconds taken."""
        if self.static is None:
            raise ValueError("this Engine was built without compiled=True")
        return self.static.precompile()

    @torch.no_grad()
    def hidden(self, ids: Tensor) -> Tensor:
        """Final-normed hidden states [B, T, d] for a chunk at the current position (advances the cache)."""
        B, T = ids.shape
        pos = self.cache.pos
        if pos + T > self.cache.max_len:
            raise ValueError(f"KV cache overflow: {pos} + {T} tokens > max_len={self.cache.max_len}")
        if not self.is_parcae:
            x = F.embedding(ids, self.wte)
            for i, blk in enumerate(self.blocks):
                x = self._run(blk, x, pos, _lookup(self.ve_tables[i], ids), self.cache.slot(i))
            self.cache.advance(T)
            return self.final_norm(x)
        e = self.prelude_out(ids, pos)
        h, u = self.initial_state(B, T, pos, e), self.inject_input(e)
        ves = self.core_values(ids)
        for r in range(self.num_steps):
            h = self.iterate(h, u, ves, pos, r)
        y = self.coda_out(h, ids, pos)
        self.cache.advance(T)
        return y

    # -- Parcae pieces (used by adaptive decoding) -------------------------------------------------
    def prelude_out(self, ids: Tensor, pos: int) -> Tensor:
        x = F.embedding(ids, self.wte)
        for i, blk in enumerate(self.prelude):
            x = self._run(blk, x, pos, _lookup(self.prelude_ve[i], ids), self.cache.slot(i))
        if self.ln_prelude is not None:
            w, eps = self.ln_prelude
            x = _rms_norm(x, w, eps)
        return x

    def initial_state(self, B: int, T: int, pos: int, e: Tensor) -> Tensor:
        return self.model.initial_state(B, T, pos, None, e)

    def inject_input(self, e: Tensor) -> Tensor:
        if self.input_weight is not None:
            return F.linear(e, self.input_weight)
        return self.adapter.prepare(e)

    def core_values(self, ids: Tensor) -> list[Tensor | None]:
        return [_lookup(t, ids) for t in self.core_ve]

    def inject(self, h: Tensor, u: Tensor) -> Tensor:
        if self.state_decay is not None:
            return torch.addcmul(u, h, self.state_decay)
        return self.adapter.step(h, u)

    def iterate(
        self,
        h: Tensor,
        u: Tensor,
        ves: list[Tensor | None],
        pos: int,
        iteration: int,
        rows: Tensor | None = None,
    ) -> Tensor:
        """One loop iteration for the rows in `rows` (all when None); writes their core K/V at pos.."""
        x = self.inject(h, u)
        for i, blk in enumerate(self.core):
            slot = self.cache.core_slot(iteration, i)
            x = self._run(blk, x, pos, ves[i], slot, rows)
        return x

    def coda_out(self, h: Tensor, ids: Tensor, pos: int, rows: Tensor | None = None) -> Tensor:
        y = self.C(h)
        for i, blk in enumerate(self.coda):
            y = self._run(blk, y, pos, _lookup(self.coda_ve[i], ids), self.cache.coda_slot(i), rows)
        return self.final_norm(y)

    def final_norm(self, y: Tensor) -> Tensor:
        return _rms_norm(y, self.ln_f_w, self.ln_f_eps)

    def logits(self, y: Tensor) -> Tensor:
        logits = self.head(y).float()
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def _run(
        self, blk: FastBlock, x: Tensor, pos: int, ve: Tensor | None, slot: KVSlot, rows: Tensor | None = None
    ) -> Tensor:
        if rows is None:
            return blk(x, pos, ve, slot.k, slot.v)
        # A subset of rows: run on gathered buffers, then scatter the new K/V column(s) back.
        end = pos + x.shape[1]
        k, v = slot.k[rows, :, :end], slot.v[rows, :, :end]
        out = blk(x, pos, ve, k, v)
        slot.k[rows, :, pos:end] = k[:, :, pos:end]
        slot.v[rows, :, pos:end] = v[:, :, pos:end]
        return out


# --------------------------------------------------------------------------------------------------
class StaticDecode:
    """The engine's whole one-token step as a single function with the same shapes at every position,
    compiled once (torch.compile, fullgraph, static shapes): embedding → prelude → h₀ → every loop
    iteration → coda → final norm → head.

    The position is a tensor, never a Python int, so nothing in the graph depends on it: K/V are written
    with `index_copy_` into the full-length buffers, attention covers all `max_len` keys under the mask
    `arange(max_len) <= pos`, RoPE cos/sin and Parcae's deterministic h₀ are rows gathered by position.
    Compiled per (engine, batch size); the default eager path handles everything else.
    """

    def __init__(self, engine: Engine) -> None:
        unsupported = _static_unsupported(engine)
        if unsupported:
            raise ConfigError(f"the compiled decode step does not support {unsupported}; use compiled=False")
        self.engine = engine
        cache = engine.cache
        device = engine.wte.device
        self.key_positions = torch.arange(cache.max_len, device=device)
        # Masked keys still get weight 0 in softmax·V, so unwritten entries must be finite (torch.empty
        # can hold NaN): 0·NaN would poison the output.
        for slot in cache.slots:
            slot.k.zero_()
            slot.v.zero_()
        self.state_table: Tensor | None = None
        if engine.is_parcae:
            # h₀ for every position < max_len, exactly as the eager engine draws it (model.initial_state).
            e = engine.wte.new_empty(1, cache.max_len, engine.config.n_embd)
            with torch.no_grad():
                self.state_table = engine.initial_state(1, cache.max_len, 0, e)[0]
        # isolate_recompiles: this engine's graph lives in its own cache, so engines of other shapes in the
        # same process neither count against its recompile limit nor add guard checks to its calls.
        self.compiled = torch.compile(
            self.forward,
            fullgraph=True,
            dynamic=False,
            options=dict(COMPILE_OPTIONS),
            isolate_recompiles=True,
        )
        self.compile_seconds: float | None = None

    def step(self, token: Tensor) -> Tensor:
        cache = self.engine.cache
        if cache.pos + 1 > cache.max_len:
            raise ValueError(f"KV cache overflow: {cache.pos} + 1 tokens > max_len={cache.max_len}")
        logits = self._call(token, cache.pos)
        cache.advance(1)
        return logits

    def precompile(self) -> float:
        """Compile now (it otherwise happens on the first step); returns the compile time in seconds."""
        if self.compile_seconds is None:
            # Writes K/V at the current position (or the last one once full): the next step or prefill at
            # that position overwrites them before anything reads them.
            cache = self.engine.cache
            token = torch.zeros(self.engine.batch_size, dtype=torch.long, device=self.key_positions.device)
            self._call(token, min(cache.pos, cache.max_len - 1))
        return self.compile_seconds

    @torch.no_grad()
    def _call(self, token: Tensor, pos: int) -> Tensor:
        index = torch.tensor([pos], device=self.key_positions.device)
        token = token.long().contiguous()  # a strided column (ids[:, i]) would recompile on its stride
        if self.compile_seconds is not None:
            return self.compiled(token, index)
        t0 = time.perf_counter()
        out = self.compiled(token, index)
        self.compile_seconds = time.perf_counter() - t0
        return out

    def forward(self, token: Tensor, index: Tensor) -> Tensor:
        """token [B] at position index ([1] long) → logits [B, V]; writes every layer's K/V at index.
        Activations are [B, d] (see `FastBlock.decode_static`)."""
        eng, cache = self.engine, self.engine.cache
        keys = self.key_positions <= index

        def run(blk: FastBlock, x: Tensor, table: Tensor | None, slot: KVSlot) -> Tensor:
            return blk.decode_static(x, index, keys, _lookup(table, token), slot.k, slot.v)

        x = F.embedding(token, eng.wte)
        if not eng.is_parcae:
            for i, blk in enumerate(eng.blocks):
                x = run(blk, x, eng.ve_tables[i], cache.slot(i))
            return eng.logits(eng.final_norm(x))
        for i, blk in enumerate(eng.prelude):
            x = run(blk, x, eng.prelude_ve[i], cache.slot(i))
        if eng.ln_prelude is not None:
            x = _rms_norm(x, *eng.ln_prelude)
        h = self.state_table.index_select(0, index).expand(token.shape[0], -1)
        u = eng.inject_input(x)
        ves = eng.core_values(token)
        for r in range(eng.num_steps):
            h = eng.inject(h, u)
            for i, blk in enumerate(eng.core):
                slot = cache.core_slot(r, i)
                h = blk.decode_static(h, index, keys, ves[i], slot.k, slot.v)
        y = eng.C(h)
        for i, blk in enumerate(eng.coda):
            y = run(blk, y, eng.coda_ve[i], cache.coda_slot(i))
        return eng.logits(eng.final_norm(y))


# Inductor options for the decode step. cpp_wrapper emits the graph's call sequence as C++ instead of
# Python: measured in docs/inference.md.
COMPILE_OPTIONS: dict[str, object] = {"cpp_wrapper": True}


def _static_unsupported(engine: Engine) -> str | None:
    """Why `StaticDecode` cannot run this engine (None if it can)."""
    if engine.cache.strategy != FULL_CACHE:
        return f"the {engine.cache.strategy} cache strategy (only full)"
    blocks = engine.blocks if not engine.is_parcae else [*engine.prelude, *engine.core, *engine.coda]
    ops = [engine.head] + ([] if not engine.is_parcae else [engine.C])
    for blk in blocks:
        ops += [blk.qkv, blk.proj, blk.fc, blk.mlp_proj] + ([] if blk.gate is None else [blk.gate])
    if any(op.module is not None for op in ops):
        return "quantized or non-Linear layers (only plain weights)"
    return None


def _ve_table(model: LanguageModel, layer: int) -> Tensor | None:
    key = str(layer)
    return model.value_embeds[key].weight if key in model.value_embeds else None


def _lookup(table: Tensor | None, ids: Tensor) -> Tensor | None:
    return None if table is None else F.embedding(ids, table)


def _input_weight(adapter: nn.Module) -> Tensor | None:
    """For the diagonal injection, B̄·e = (e @ Bᵀ)·scale = e @ (scale ⊙ B)ᵀ: one matmul per token."""
    if not hasattr(adapter, "A_log"):
        return None
    eye = torch.eye(adapter.B.shape[1], dtype=adapter.B.dtype, device=adapter.B.device)
    return adapter.prepare(eye).t().contiguous()  # prepare is linear in e: its rows at I give scale ⊙ B


def _state_decay(adapter: nn.Module) -> Tensor | None:
    """Ā as a vector when the injection is diagonal (h·Ā + u is then one addcmul), else None."""
    if hasattr(adapter, "A_log"):
        return adapter.state_matrix().to(adapter.B.dtype)
    return None


@torch.no_grad()
def fast_generate(
    model: LanguageModel,
    input_ids: Tensor,
    max_new_tokens: int,
    num_steps: int | None = None,
    strategy: CacheStrategy = FULL_CACHE,
    compiled: bool = False,
) -> Tensor:
    """Greedy continuation with the engine (the benchmark's and exporters' reference path); `compiled`
    runs the decode steps through `StaticDecode`."""
    B, T = input_ids.shape
    eng = Engine(model, B, T + max_new_tokens, num_steps, strategy, compiled=compiled)
    return greedy_decode(eng.prefill, eng.step, input_ids, max_new_tokens, model.config.vocab_size)


def greedy_decode(
    prefill: Callable[[Tensor], Tensor],
    step: Callable[[Tensor], Tensor],
    input_ids: Tensor,
    max_new_tokens: int,
    vocab_size: int,
) -> Tensor:
    """ids [B, T + new]: argmax continuation driven by a decoder's `prefill(ids)` and `step(token)`, which
    return logits [B, V]; ids ≥ vocab_size (the embedding table's padding rows) are never picked."""
    B, T = input_ids.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    logits = prefill(input_ids)
    for i in range(max_new_tokens):
        token = logits[:, :vocab_size].argmax(-1)
        out[:, T + i] = token
        if i + 1 < max_new_tokens:
            logits = step(token)
    return out
