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
from parcae_lm.model.kv_cache import CacheStrategy, ModelCache
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
from parcae_lm.model.recurrence import FIRST_DRAW, Depths, TrainDraw, mix_seed, sample_depths


class Parcae(LanguageModel):
    config: ParcaeConfig
    config_class = ParcaeConfig

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
        kv_cache: ModelCache | None = None,
        num_steps_pair: Sequence[int] | Tensor | None = None,
        *,
        input_pos: Tensor | None = None,
        input_pos_maxp1: int | None = None,
        logits_to_keep: int = 0,
        draw: TrainDraw | None = None,
        diagnostics: bool = False,
        row_steps: Tensor | None = None,
        exit_threshold: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """Returns {"loss", "logits", "log_ppl"} like the reference.

        num_steps: test-time depth T (an int: grad flows through the last min(T, mean_backprop_depth)
            iterations when autograd is on), or an explicit (no-grad, grad) pair. Default: sampled depths in
            training mode, mean_recurrence in eval mode. `num_steps_pair` is the reference's spelling.
        doc_ids: [B, T] document index per token; attention never crosses documents.
        attention_mask: [B, T], 0 for padding tokens (they are never attended to).
        position_ids: [T] or [B, T] positions of the tokens (default 0..T−1).
        kv_cache, input_pos: incremental decoding (eval, the cache's fixed depth): the tokens sit at
            `input_pos` ([T], or [B, T] per row) and their keys/values are written into `kv_cache`
            (`model.new_kv_cache`). `input_pos_maxp1` (max position + 1, a Python int) lets attention read
            only the written part of the cache; without it every step attends over the whole (masked)
            buffer, with the same shapes at every position, which compiled decoding needs.
        logits_to_keep: compute logits for the last this many positions only (0: all).
        draw: the training step and batch slice that seed sampled depths and h₀ (training mode only;
            default step 0, the whole batch).
        diagnostics: also return "state_norm" (mean ‖h_T‖) and "rel_residual" (‖h_T − h_{T−1}‖/‖h_T‖).
        row_steps, exit_threshold: cached decoding only, each row at its own depth (a server's batch of
            requests): row b takes at most row_steps[b] ([B] int64, ≤ the cache's depth) iterations, and
            (exit_threshold [B] float, one-token steps only) stops once an iteration changes its state by
            less than exit_threshold[b] relative (‖h_r − h_{r−1}‖/‖h_r‖; 0 never exits). A stopped row
            keeps its state; the batch still runs the cache's depth, so shapes stay static. The output
            then has "iterations" [B, T], the iterations each token took.
        """
        if num_steps_pair is not None:
            num_steps = _pair(num_steps_pair)
        stats: dict[str, Tensor] | None = {} if diagnostics else None
        if row_steps is not None or exit_threshold is not None:
            if kv_cache is None or row_steps is None:
                raise ValueError("row_steps (and exit_threshold) go with cached decoding: pass kv_cache too")
            stats = {} if stats is None else stats
        y = self.hidden_states(
            input_ids, num_steps, doc_ids, attention_mask, position_ids, kv_cache, input_pos, input_pos_maxp1,
            draw or FIRST_DRAW, stats, row_steps, exit_threshold,
        )  # fmt: skip
        out = self.head(y, labels, return_logits, logits_to_keep)
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
        kv_cache: ModelCache | None = None,
        input_pos: Tensor | None = None,
        input_pos_maxp1: int | None = None,
        draw: TrainDraw = FIRST_DRAW,
        stats: dict[str, Tensor] | None = None,
        row_steps: Tensor | None = None,
        exit_threshold: Tensor | None = None,
    ) -> Tensor:
        """Final-normed hidden states [B, T, d]: prelude → loop → coda (see the module docstring)."""
        self.check_input_ids(input_ids)
        B, T = input_ids.shape
        positions = self.positions(input_ids, position_ids, kv_cache, input_pos)
        if kv_cache is not None:
            if doc_ids is not None or attention_mask is not None:
                raise ValueError(
                    "cached decoding takes no doc_ids/attention_mask (rows are separate sequences)"
                )
            num_steps = kv_cache.num_steps
            mask = self.cache_mask(input_pos, kv_cache.length, input_pos_maxp1)
        else:
            mask = self.attention_mask(doc_ids, attention_mask, T, input_ids.device)
        ctx, ctx_core = self.contexts(T, input_ids.device, positions, mask, input_pos, input_pos_maxp1)

        e = self.prelude(input_ids, ctx, kv_cache)
        h = self.initial_state(e, positions, draw)
        u = self.transformer.adapter.prepare(e)  # B̄·e is the same at every iteration
        if row_steps is not None:
            h = self._recur_rows(
                h, u, self.core_values(input_ids), ctx_core, kv_cache, row_steps, exit_threshold, stats
            )
        else:
            h = self._recur(
                h,
                u,
                self.core_values(input_ids),
                ctx_core,
                self._depths(B, T, num_steps, draw),
                kv_cache,
                stats,
            )
        return self.coda(h, input_ids, ctx, kv_cache)

    # -- the pieces of one forward, in order (adaptive decoding drives them one iteration at a time) --
    def contexts(
        self,
        seq_len: int,
        device: torch.device,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        kv_length: int | None = None,
    ) -> tuple[AttnContext, AttnContext]:
        """Attention contexts of the prelude/coda blocks and of the core blocks (their head sizes may differ)."""
        head_size = self.config.head_size
        ctx = self.attn_context(head_size, seq_len, device, positions, mask, input_pos, kv_length)
        if self.core_head_size == head_size:
            return ctx, ctx
        return ctx, self.attn_context(
            self.core_head_size, seq_len, device, positions, mask, input_pos, kv_length
        )

    def prelude(self, input_ids: Tensor, ctx: AttnContext, kv_cache: ModelCache | None = None) -> Tensor:
        """Embed, run the prelude blocks, normalise: the input e injected at every iteration."""
        tr = self.transformer
        x = tr.wte(input_ids)
        for i, block in enumerate(tr.prelude):
            x = block(
                x, ctx, self.value_embedding(i, input_ids), None if kv_cache is None else kv_cache.prelude[i]
            )
        return tr.ln_prelude(x) if self.config.prelude_norm else x

    def core_values(self, input_ids: Tensor) -> list[Tensor | None]:
        """The core blocks' value embeddings (the same at every iteration)."""
        first = self.config.n_layers_in_prelude
        return [
            self.value_embedding(first + i, input_ids) for i in range(self.config.n_layers_in_recurrent_block)
        ]

    def core_step(
        self,
        h: Tensor,
        u: Tensor,
        ves: list[Tensor | None],
        ctx: AttnContext,
        kv_cache: ModelCache | None = None,
        iteration: int = 0,
    ) -> Tensor:
        """One iteration of the loop: inject (h ← Ā·h + B̄·e), then the core blocks."""
        x = self.transformer.adapter.step(h, u)
        for i, block in enumerate(self.transformer.core_block):
            x = block(x, ctx, ves[i], None if kv_cache is None else kv_cache.core_layer(iteration, i))
        return x

    def coda(
        self, h: Tensor, input_ids: Tensor, ctx: AttnContext, kv_cache: ModelCache | None = None
    ) -> Tensor:
        """Read the state out with C, run the coda blocks, final norm."""
        tr = self.transformer
        y = tr.C(h)
        first = self.config.n_layers_in_prelude + self.config.n_layers_in_recurrent_block
        for i, block in enumerate(tr.coda):
            y = block(
                y,
                ctx,
                self.value_embedding(first + i, input_ids),
                None if kv_cache is None else kv_cache.coda[i],
            )
        return tr.ln_f(y)

    def _new_kv_cache(self, caches, num_steps: int | None, strategy: CacheStrategy) -> ModelCache:
        steps = self.config.mean_recurrence if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be ≥ 1 for cached decoding, got {steps}")
        tr = self.transformer
        core = [caches(tr.core_block) for _ in range(strategy.num_slots(steps))]
        return ModelCache(caches(tr.prelude), core, caches(tr.coda), steps, strategy)

    # ------------------------------------------------------------------------------------------------
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
        return Depths(n, k)

    def initial_state(
        self, e: Tensor, positions: Tensor | None = None, draw: TrainDraw = FIRST_DRAW
    ) -> Tensor:
        """h₀ for inputs e [B, T, d] at `positions` (default 0..T−1): in training, fresh noise per sequence
        seeded by (step, global row); otherwise a fixed, position-indexed table from `state_init_seed`, so
        evaluation and cached decoding are deterministic."""
        cfg, d_r = self.config, self.config.recurrent_embedding_dimension
        B, T = e.shape[:2]
        if cfg.state_init == StateInit.ZERO:
            return e.new_zeros(B, T, d_r)
        if self.training:
            rows = []
            for r in range(B):
                row = draw.shard.index * B + r
                g = torch.Generator(device=e.device).manual_seed(
                    mix_seed(cfg.state_init_seed, draw.step, row)
                )
                rows.append(self._draw_state((T, d_r), g, e.device))
            return torch.stack(rows).to(e.dtype)
        table = self.state_table(e.device, e.dtype)
        h = table[:T] if positions is None else table[positions]
        return h.expand(B, T, d_r).clone() if h.dim() == 2 else h.clone()

    def state_table(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The evaluation h₀ of every position < block_size, drawn once from `state_init_seed`."""
        key = (str(device), dtype)
        if key not in self._state_tables:
            g = torch.Generator().manual_seed(self.config.state_init_seed)
            shape = (self.config.block_size, self.config.recurrent_embedding_dimension)
            self._state_tables[key] = self._draw_state(shape, g, "cpu").to(device, dtype)
        return self._state_tables[key]

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
        kv_cache: ModelCache | None = None,
        stats: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """n no-grad then k grad iterations; depths are one count for the batch, or per row/token."""
        grad_on = torch.is_grad_enabled()
        residual = h.new_zeros(h.shape[0]) if stats is not None else None
        done = 0  # iterations completed so far (cache slots are indexed by iteration)
        for steps, with_grad in ((depths.n, False), (depths.k, True)):
            with torch.set_grad_enabled(with_grad and grad_on):
                if isinstance(steps, int) or steps.dim() == 0:
                    for j in range(int(steps)):
                        if kv_cache is None:
                            new = self._iterate(h, u, ves, ctx)
                        else:
                            new = self.core_step(h, u, ves, ctx, kv_cache, done + j)
                        if stats is not None:
                            residual = _rel_residual(new, h)
                        h = new
                    done += int(steps)
                else:
                    h, residual = self._recur_ragged(h, u, ves, ctx, steps, residual)
        if stats is not None:
            stats["state_norm"] = h.detach().float().norm(dim=-1).mean()
            stats["rel_residual"] = residual.mean()
        return h

    def _recur_rows(
        self,
        h: Tensor,
        u: Tensor,
        ves: list[Tensor | None],
        ctx: AttnContext,
        kv_cache: ModelCache,
        row_steps: Tensor,
        exit_threshold: Tensor | None,
        stats: dict[str, Tensor],
    ) -> Tensor:
        """Cached iterations with a depth limit and an exit threshold per row (see `forward`). Every row runs
        all of the cache's iterations (static shapes, one compiled graph for any mix of depths); a row past
        its limit, or that has exited, keeps its state, so its logits are those of its own depth."""
        B, T = h.shape[:2]
        if row_steps.shape != (B,):
            raise ValueError(f"row_steps has shape {tuple(row_steps.shape)}, expected [{B}]")
        if exit_threshold is not None and (T != 1 or exit_threshold.shape != (B,)):
            raise ValueError("exit_threshold applies to one-token steps, one value per row ([B])")
        limit = row_steps.to(h.device).view(B, 1)
        running = torch.ones(B, T, dtype=torch.bool, device=h.device)
        used = torch.zeros(B, T, dtype=torch.long, device=h.device)
        for j in range(kv_cache.num_steps):
            new = self.core_step(h, u, ves, ctx, kv_cache, j)
            live = running & (limit > j)
            used = used + live.long()
            if exit_threshold is not None:
                change = (new - h).float().norm(dim=-1) / new.float().norm(dim=-1).clamp_min(1e-12)
                running = running & ~(change < exit_threshold.to(h.device).view(B, 1))
            h = torch.where(live[..., None], new, h)
        stats["iterations"] = used
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
            ctx = ctx.subset(idx)
            steps = steps[order]
            residual = None if residual is None else residual[idx]
        active_rows = [
            int((steps if steps.dim() == 1 else steps.amax(1)).gt(j).sum()) for j in range(int(steps.max()))
        ]
        for j, m in enumerate(active_rows):
            part = slice(0, m)
            new = self._iterate(h[:m], u[:m], [None if v is None else v[:m] for v in ves], ctx.subset(part))
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
        self.check_input_ids(input_ids)
        was_training = self.training
        self.eval()
        try:
            ctx, ctx_core = self.contexts(input_ids.shape[1], input_ids.device)
            e = self.prelude(input_ids, ctx)
            h, u, ves = (
                self.initial_state(e),
                self.transformer.adapter.prepare(e),
                self.core_values(input_ids),
            )
            trace = []
            for _ in range(self.config.mean_recurrence if num_steps is None else num_steps):
                new = self.core_step(h, u, ves, ctx_core)
                norm, change = float(new.float().norm(dim=-1).mean()), float(_rel_residual(new, h))
                trace.append({"state_norm": norm, "rel_residual": change})
                h = new
            return trace
        finally:
            self.train(was_training)


def _rel_residual(new: Tensor, old: Tensor, per_row: bool = False) -> Tensor:
    with torch.no_grad():
        r = (new - old).float().norm(dim=-1) / new.float().norm(dim=-1).clamp_min(1e-12)
        return r.mean(dim=-1) if per_row else r.mean()


def _pair(value: Sequence[int] | Tensor) -> tuple[int, int]:
    values = [int(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]
    if len(values) == 1:
        return values[0], 0
    if len(values) != 2:
        raise ValueError(f"num_steps_pair must have 1 or 2 entries, got {values}")
    return values[0], values[1]
