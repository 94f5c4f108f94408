"""The Parcae model, top to bottom.

    ids ─ wte ─ prelude blocks ─ prelude norm ─► e                        (once)
    h₀ ~ state init                                                     (seeded noise, or zeros)
    repeat T times:  h ← core_blocks(Ā·h + B̄·e)                          (the loop; ρ(Ā) < 1)
    h_T ─ C ─ coda blocks ─ final norm ─ tied head ─► logits

Training samples T per batch, sequence or token (`recurrence.py`) and backpropagates only through the
last k iterations (truncated BPTT: n no-grad iterations, then k grad iterations). When sequences in a
batch draw different depths, each iteration runs only on the rows still active, so compute follows the
sum of the sampled depths rather than batch size × the maximum depth.

Evaluation is deterministic: T = mean_recurrence unless `num_steps` says otherwise, and the initial
state comes from a fixed seed (a table indexed by position), so the same input gives the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from parcae_lm.config import ParcaeConfig, StateInit
from parcae_lm.model.injection import make_injection
from parcae_lm.model.layers import (
    AttnContext,
    Block,
    embedding,
    has_value_embedding,
    init_block,
    init_matrix,
    make_norm,
)
from parcae_lm.model.lm import LanguageModel
from parcae_lm.model.recurrence import Depths, TrainDraw, mix_seed, sample_depths


class Parcae(LanguageModel):
    config: ParcaeConfig

    def __init__(self, config: ParcaeConfig) -> None:
        super().__init__(config)
        cfg = config
        d, d_r, V = cfg.n_embd, cfg.recurrent_embedding_dimension, cfg.padded_vocab_size
        n_p, n_c, n_o = cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block, cfg.n_layers_in_coda
        n_all = n_p + n_c + n_o
        self.core_head_size = d_r // cfg.recurrent_num_attention_heads

        def main_block(i: int) -> Block:
            heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
            return Block(cfg, d, cfg.intermediate_size, heads, kv, has_value_embedding(i, n_all))

        def core_block(i: int) -> Block:
            heads, kv = cfg.recurrent_num_attention_heads, cfg.recurrent_num_key_value_heads
            hidden = cfg.recurrent_intermediation_embedding_dimension
            return Block(cfg, d_r, hidden, heads, kv, has_value_embedding(i, n_all))

        self.transformer = nn.ModuleDict(
            dict(
                wte=embedding(V, d),
                prelude=nn.ModuleList(main_block(i) for i in range(n_p)),
                adapter=make_injection(cfg),
                core_block=nn.ModuleList(core_block(n_p + i) for i in range(n_c)),
                C=nn.Linear(d_r, d, bias=cfg.bias),
                coda=nn.ModuleList(main_block(n_p + n_c + i) for i in range(n_o)),
                ln_f=make_norm(cfg, d),
            )
        )
        if cfg.prelude_norm:
            self.transformer["ln_prelude"] = make_norm(cfg, d)
        # Value-embedding tables, keyed by compact layer index (prelude, core, coda), sized to their layer.
        blocks = [*self.transformer.prelude, *self.transformer.core_block, *self.transformer.coda]
        self.value_embeds = nn.ModuleDict(
            {
                str(i): embedding(V, b.attn.n_kv * b.attn.head_size)
                for i, b in enumerate(blocks)
                if b.attn.ve_gate
            }
        )
        self.lm_head = nn.Linear(d, V, bias=False)
        self.tie_weights()

        self._state_tables: dict[tuple, Tensor] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        self.init_embeddings()
        for block in (*self.transformer.prelude, *self.transformer.coda):
            init_block(block, cfg, cfg.n_embd, cfg.effective_depth)
        for block in self.transformer.core_block:
            init_block(block, cfg, cfg.recurrent_embedding_dimension, cfg.effective_depth)
        self.transformer.adapter.reset_parameters()
        init_matrix(self.transformer.C.weight, cfg.embedding_std, cfg.init_orthogonal)
        if self.transformer.C.bias is not None and not self.transformer.C.bias.is_meta:
            self.transformer.C.bias.zero_()
        self._state_tables.clear()

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        return_logits: bool = True,
        num_steps: int | tuple[int, int] | None = None,
        doc_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache=None,
        num_steps_pair: Sequence[int] | Tensor | None = None,
        draw: TrainDraw | None = None,
        diagnostics: bool = False,
    ) -> dict[str, Tensor | None]:
        """Returns {"loss", "logits", "log_ppl"} like the reference.

        num_steps: test-time depth T (an int: grad flows through the last min(T, mean_backprop_depth)
            iterations when autograd is on), or an explicit (no-grad, grad) pair. Default: sampled depths in
            training mode, mean_recurrence in eval mode. `num_steps_pair` is the reference's spelling.
        doc_ids: [B, T] document index per token; attention never crosses documents.
        attention_mask: [B, T], 0 for padding tokens (they are never attended to).
        kv_cache: an `infer.kv_cache.KVCache` for incremental decoding (eval, fixed depth).
        draw: the training step and batch slice that seed sampled depths and h₀ (training mode only;
            default step 0, the whole batch).
        diagnostics: also return "state_norm" (mean ‖h_T‖) and "rel_residual" (‖h_T − h_{T−1}‖/‖h_T‖).
        """
        stats: dict[str, Tensor] | None = {} if diagnostics else None
        y = self.hidden_states(
            input_ids,
            num_steps if num_steps_pair is None else _pair(num_steps_pair),
            doc_ids,
            attention_mask,
            position_ids,
            kv_cache,
            draw or TrainDraw(),
            stats,
        )
        out = self.head(y, labels, return_logits)
        if stats is not None:
            out.update(stats)
        return out

    def hidden_states(
        self,
        input_ids: Tensor,
        num_steps: int | tuple[int, int] | None = None,
        doc_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache=None,
        draw: TrainDraw = TrainDraw(),
        stats: dict[str, Tensor] | None = None,
    ) -> Tensor:
        cfg, tr = self.config, self.transformer
        B, T = input_ids.shape
        offset = 0 if kv_cache is None else kv_cache.pos
        if kv_cache is not None:
            num_steps = kv_cache.num_steps
            mask = kv_cache.causal_mask(T, input_ids.device)
        else:
            mask = self.attention_mask(doc_ids, attention_mask, T, input_ids.device)
        ctx = self.attn_context(cfg.head_size, T, input_ids.device, offset, position_ids, mask)
        ctx_core = ctx
        if self.core_head_size != cfg.head_size:
            ctx_core = self.attn_context(self.core_head_size, T, input_ids.device, offset, position_ids, mask)

        # 1. Prelude: embed, run the prelude blocks, normalise → the injected input e.
        x = tr.wte(input_ids)
        for i, block in enumerate(tr.prelude):
            x = block(x, ctx, self._value_embedding(i, input_ids), _slot(kv_cache, i))
        e = tr.ln_prelude(x) if cfg.prelude_norm else x

        # 2. Recurrence: h₀, then T iterations of h ← core(inject(h, e)).
        depths = self._depths(B, T, num_steps, draw)
        h = self.initial_state(B, T, offset, position_ids, e, draw)
        u = tr.adapter.prepare(e)  # B̄·e is the same at every iteration
        n_p = cfg.n_layers_in_prelude
        core_ve = [self._value_embedding(n_p + i, input_ids) for i in range(cfg.n_layers_in_recurrent_block)]
        h = self._recur(h, u, core_ve, ctx_core, depths, kv_cache, stats)

        # 3. Coda: read the state out with C, run the coda blocks, final norm.
        y = tr.C(h)
        first_coda = n_p + cfg.n_layers_in_recurrent_block
        for i, block in enumerate(tr.coda):
            slot = None if kv_cache is None else kv_cache.coda_slot(i)
            y = block(y, ctx, self._value_embedding(first_coda + i, input_ids), slot)
        if kv_cache is not None:
            kv_cache.advance(T)
        return tr.ln_f(y)

    # ------------------------------------------------------------------------------------------------
    def _value_embedding(self, layer: int, input_ids: Tensor) -> Tensor | None:
        key = str(layer)
        return self.value_embeds[key](input_ids) if key in self.value_embeds else None

    def _depths(self, B: int, T: int, num_steps: int | tuple[int, int] | None, draw: TrainDraw) -> Depths:
        if isinstance(num_steps, tuple):
            n, k = num_steps
        elif num_steps is not None:
            if num_steps < 0:
                raise ValueError(f"num_steps must be ≥ 0, got {num_steps}")
            k = min(num_steps, self.config.mean_backprop_depth) if torch.is_grad_enabled() else 0
            n = num_steps - k
        elif self.training:
            return sample_depths(self.config, draw.step, B, T, draw.shard, self.config.state_init_seed)
        else:
            n, k = self.config.mean_recurrence, 0
        return Depths(torch.tensor(n), torch.tensor(k))

    def initial_state(
        self, B: int, T: int, offset: int, position_ids: Tensor | None, e: Tensor, draw: TrainDraw = TrainDraw()
    ) -> Tensor:
        """h₀: in training, fresh noise per sequence seeded by (step, global row); otherwise a fixed,
        position-indexed table from `state_init_seed`, so evaluation and cached decoding are deterministic."""
        cfg, d_r = self.config, self.config.recurrent_embedding_dimension
        if cfg.state_init == StateInit.ZERO:
            return e.new_zeros(B, T, d_r)
        if self.training:
            rows = []
            for r in range(B):
                row = draw.shard.index * B + r
                g = torch.Generator(device=e.device).manual_seed(mix_seed(cfg.state_init_seed, draw.step, row))
                rows.append(self._draw_state((T, d_r), g, e.device))
            return torch.stack(rows).to(e.dtype)
        key = (str(e.device), e.dtype)
        if key not in self._state_tables:
            g = torch.Generator().manual_seed(cfg.state_init_seed)
            self._state_tables[key] = self._draw_state((cfg.block_size, d_r), g, "cpu").to(e.device, e.dtype)
        table = self._state_tables[key]
        h = table[position_ids] if position_ids is not None else table[offset : offset + T]
        return h.expand(B, T, d_r).clone() if h.dim() == 2 else h.clone()

    def _draw_state(self, shape: tuple[int, int], g: torch.Generator, device) -> Tensor:
        kind, std = self.config.state_init, self.config.embedding_std
        if kind == StateInit.LIKE_INIT:
            out = torch.empty(shape, device=device)
            return nn.init.trunc_normal_(out, 0.0, std, -3 * std, 3 * std, generator=g)
        x = torch.randn(shape, generator=g, device=device)
        if kind == StateInit.EMBED:
            return x / self.config.n_embd**0.5
        if kind == StateInit.UNIT:
            return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-8)
        return x

    def core_step(
        self,
        h: Tensor,
        u: Tensor,
        ves: list[Tensor | None],
        ctx: AttnContext,
        kv_cache=None,
        iteration: int = 0,
    ) -> Tensor:
        """One iteration of the loop: inject, then the core blocks."""
        x = self.transformer.adapter.step(h, u)
        for i, block in enumerate(self.transformer.core_block):
            slot = None if kv_cache is None else kv_cache.core_slot(iteration, i)
            x = block(x, ctx, ves[i], slot)
        return x

    def _iterate(self, h: Tensor, u: Tensor, ves: list[Tensor | None], ctx: AttnContext) -> Tensor:
        """core_step for training, with per-iteration activation checkpointing when enabled."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.core_step, h, u, ves, ctx, use_reentrant=False)
        return self.core_step(h, u, ves, ctx)

    def _recur(
        self,
        h: Tensor,
        u: Tensor,
        ves: list[Tensor | None],
        ctx: AttnContext,
        depths: Depths,
        kv_cache=None,
        stats: dict[str, Tensor] | None = None,
    ) -> Tensor:
        grad_on = torch.is_grad_enabled()
        tracking = stats is not None
        residual = h.new_zeros(h.shape[0]) if tracking else None
        done = 0  # iterations completed so far (cache slots are indexed by iteration)
        for steps, with_grad in ((depths.n, False), (depths.k, True)):
            with torch.set_grad_enabled(with_grad and grad_on):
                if steps.dim() == 0:
                    for j in range(int(steps)):
                        if kv_cache is None:
                            new = self._iterate(h, u, ves, ctx)
                        else:
                            new = self.core_step(h, u, ves, ctx, kv_cache, done + j)
                        if tracking:
                            residual = _rel_residual(new, h)
                        h = new
                    done += int(steps)
                else:
                    h, residual = self._recur_ragged(h, u, ves, ctx, steps, residual)
        if tracking:
            stats["state_norm"] = h.detach().float().norm(dim=-1).mean()
            stats["rel_residual"] = residual.mean()
        return h

    def _recur_ragged(
        self, h: Tensor, u: Tensor, ves: list[Tensor | None], ctx: AttnContext, steps: Tensor, residual
    ) -> tuple[Tensor, Tensor | None]:
        """Iterate with a different depth per sequence ([B]) or per token ([B, T]).

        Rows are sorted by depth (descending), so the rows still active at iteration j are a prefix and
        every iteration runs the core only on that prefix. Tokens of an active row whose own depth is
        exhausted keep their state (but still provide keys/values to the others), as in the reference.
        """
        B = h.shape[0]
        row_steps = steps if steps.dim() == 1 else steps.amax(dim=1)
        order = torch.argsort(row_steps, descending=True, stable=True)
        permuted = not torch.equal(order, torch.arange(B))
        if permuted:
            idx = order.to(h.device)
            h, u = h[idx], u[idx]
            ves = [None if v is None else v[idx] for v in ves]
            ctx = ctx.rows(idx)
            steps = steps[order]
            residual = None if residual is None else residual[idx]
        active_rows = [
            int((steps if steps.dim() == 1 else steps.amax(1)).gt(j).sum()) for j in range(int(steps.max()))
        ]
        for j, m in enumerate(active_rows):
            part = slice(0, m)
            new = self._iterate(h[:m], u[:m], [None if v is None else v[:m] for v in ves], ctx.rows(part))
            if steps.dim() == 2:  # per-token depths: exhausted tokens keep their state
                keep = (steps[:m] > j).unsqueeze(-1).to(h.device)
                new = torch.where(keep, new, h[:m])
            if residual is not None:
                residual = torch.cat([_rel_residual(new, h[:m], per_row=True), residual[m:]])
            h = new if m == B else torch.cat([new, h[m:]])
        if permuted:
            inverse = torch.argsort(order).to(h.device)
            h = h[inverse]
            residual = None if residual is None else residual[inverse]
        return h, residual

    # ------------------------------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Spectral radius ρ of the injection's state matrix (< 1 for the diagonal injection). The state
        norm and residual of a forward come with it: `model(x, diagnostics=True)`."""
        return {"spectral_radius": self.transformer.adapter.spectral_radius()}

    @torch.no_grad()
    def recurrence_trace(self, input_ids: Tensor, num_steps: int | None = None) -> list[dict[str, float]]:
        """Per-iteration state norm and relative residual for a fixed-depth evaluation forward."""
        cfg, tr = self.config, self.transformer
        was_training = self.training
        self.eval()
        try:
            B, T = input_ids.shape
            ctx = self.attn_context(cfg.head_size, T, input_ids.device)
            ctx_core = self.attn_context(self.core_head_size, T, input_ids.device)
            x = tr.wte(input_ids)
            for i, block in enumerate(tr.prelude):
                x = block(x, ctx, self._value_embedding(i, input_ids))
            e = tr.ln_prelude(x) if cfg.prelude_norm else x
            h, u = self.initial_state(B, T, 0, None, e), tr.adapter.prepare(e)
            n_p = cfg.n_layers_in_prelude
            ves = [self._value_embedding(n_p + i, input_ids) for i in range(cfg.n_layers_in_recurrent_block)]
            trace = []
            for _ in range(cfg.mean_recurrence if num_steps is None else num_steps):
                new = self.core_step(h, u, ves, ctx_core)
                trace.append(
                    {
                        "state_norm": float(new.float().norm(dim=-1).mean()),
                        "rel_residual": float(_rel_residual(new, h)),
                    }
                )
                h = new
            return trace
        finally:
            self.train(was_training)


def _rel_residual(new: Tensor, old: Tensor, per_row: bool = False) -> Tensor:
    with torch.no_grad():
        r = (new - old).float().norm(dim=-1) / new.float().norm(dim=-1).clamp_min(1e-12)
        return r.mean(dim=-1) if per_row else r.mean()


def _slot(kv_cache, layer: int):
    return None if kv_cache is None else kv_cache.slot(layer)


def _pair(value: Sequence[int] | Tensor) -> tuple[int, int]:
    values = [int(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]
    if len(values) == 1:
        return values[0], 0
    if len(values) != 2:
        raise ValueError(f"num_steps_pair must have 1 or 2 entries, got {values}")
    return values[0], values[1]
