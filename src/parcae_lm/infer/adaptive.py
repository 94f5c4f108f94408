"""Per-token adaptive depth: each decoded token stops iterating the core when an exit rule fires.

Exit criteria (`ExitCriterion`), checked after every iteration r ≥ `min_steps` for each row separately:

- `state`: relative change of the recurrent state, ‖h_r − h_{r−1}‖ / ‖h_r‖ < τ (h_0 is the initial
  state). Costs one norm per iteration.
- `kl`: KL(p_r ‖ p_{r−1}) < τ, where p_r is the next-token distribution read out of h_r through
  C → coda → head. Costly: every iteration also runs the coda and the vocabulary-sized head (for the tiny
  bench model the head alone is as many FLOPs as four core iterations); the last probe doubles as the
  token's output, so nothing is recomputed at exit.
- `budget`: no test, just a fixed number of iterations — per token (`max_steps`), or per sequence in a
  batch (`step(..., budget=LongTensor[B])`).

Every rule is capped at `max_steps` (default: the model's mean_recurrence); τ = 0 never exits early, so
it reproduces fixed-depth decoding exactly.

KV rule for tokens that exited early. Later tokens attend, at iteration r, to every earlier token's core
K/V for iteration r. A token that stopped after d < r iterations has no such entry; we *copy its last
computed iteration's K/V (iteration d−1) into the slots of iterations d..max−1*. Why copy rather than
recompute from the frozen state: the exit rule has just said the state (or its prediction) stopped moving,
so further iterations would produce nearly the same keys and values — and recomputing them would spend
exactly the core compute that exiting was meant to save. The copy is a memory move of n_core·(max−d)
columns. With the `last` cache strategy there is nothing to copy (the one shared slot already holds the
last computed iteration), which makes `last` the natural companion of adaptive depth.

The prompt (prefill) runs at the full `max_steps`: it is processed in parallel, so early exit would save
little wall time, and later tokens see exact prompt K/V. Rows that exit stop running: each iteration
gathers the still-active rows, so compute follows the sum of the depths actually used.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from parcae_lm.errors import ConfigError
from parcae_lm.model import FULL_CACHE, CacheStrategy, Decoder, LanguageModel, Parcae, sample_next
from parcae_lm.model.decode import decode


class ExitCriterion(enum.StrEnum):
    STATE = "state"
    KL = "kl"
    BUDGET = "budget"


@dataclass(frozen=True)
class ExitRule:
    criterion: ExitCriterion = ExitCriterion.STATE
    threshold: float = 0.0  # τ (state: relative change; kl: nats); unused by budget
    max_steps: int | None = None  # cap on iterations per token (default: mean_recurrence)
    min_steps: int = 1  # never exit before this many iterations

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, ExitCriterion):
            raise ConfigError(f"criterion must be an ExitCriterion, got {self.criterion!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise ConfigError(f"exit threshold must be a finite number, got {self.threshold!r}")
        if self.threshold < 0:
            raise ConfigError(f"exit threshold must be ≥ 0, got {self.threshold}")
        if self.criterion == ExitCriterion.STATE and self.threshold > 1:
            # ‖h_r − h_{r−1}‖/‖h_r‖ > 1 means the state changed by more than its own size: τ > 1 would
            # exit on essentially every token regardless of convergence, which is never what was meant.
            raise ConfigError(f"state-change threshold must be in [0, 1], got {self.threshold}")
        if self.criterion == ExitCriterion.BUDGET and self.threshold != 0:
            raise ConfigError("the budget criterion takes no threshold: set max_steps (or a per-row budget)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be ≥ 1, got {self.max_steps}")
        if self.min_steps < 1 or (self.max_steps is not None and self.min_steps > self.max_steps):
            raise ConfigError(f"min_steps must be in [1, max_steps], got {self.min_steps}")


@dataclass
class DepthStats:
    tokens: int = 0
    iterations: int = 0
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def mean_iterations(self) -> float:
        return self.iterations / max(self.tokens, 1)

    def add(self, depths: Tensor) -> None:
        self.tokens += depths.numel()
        self.iterations += int(depths.sum())
        for d, c in zip(*torch.unique(depths, return_counts=True)):
            self.histogram[int(d)] = self.histogram.get(int(d), 0) + int(c)


class AdaptiveDecoder:
    """Token-by-token decoding with per-token, per-row exit. `step` returns logits [B, V]; `last_depths`
    holds the iterations each row used for that token and `stats` accumulates over the decoder's life.

    It drives the model's own forward pieces (`Parcae.prelude`, `core_step`, `coda`) one iteration at a
    time, on the rows still iterating, with the model's KV cache."""

    def __init__(
        self,
        model: LanguageModel,
        batch_size: int,
        max_len: int,
        rule: ExitRule,
        strategy: CacheStrategy = FULL_CACHE,
    ) -> None:
        if not isinstance(model, Parcae):
            raise ConfigError("adaptive depth needs a looped (Parcae) model")
        self.model, self.rule = model, rule
        self.max_steps = rule.max_steps or model.config.mean_recurrence
        self.decoder = Decoder(model, batch_size, max_len, self.max_steps, strategy)  # prefill: full depth
        self.cache = self.decoder.cache
        self.stats = DepthStats()
        self.last_depths: Tensor | None = None

    @torch.no_grad()
    def prefill(self, ids: Tensor) -> Tensor:
        return self.decoder.prefill(ids)

    @torch.no_grad()
    def step(self, token: Tensor, budget: Tensor | None = None) -> Tensor:
        model, rule, R, cache = self.model, self.rule, self.max_steps, self.cache
        B, device, pos = token.shape[0], token.device, self.decoder.pos
        if pos + 1 > cache.length:
            raise ValueError(f"KV cache overflow: position {pos + 1} > max_len={cache.length}")
        cap = torch.full((B,), R, dtype=torch.long, device=device)
        if budget is not None:
            if budget.shape != (B,) or int(budget.min()) < 1:
                raise ConfigError(f"budget must be a LongTensor [B] of values ≥ 1, got {budget.tolist()}")
            cap = torch.minimum(cap, budget.to(device))
        ids = token[:, None]
        input_pos = torch.tensor([pos], device=device)
        ctx, ctx_core = model.contexts(1, device, input_pos, None, input_pos, pos + 1)
        e = model.prelude(ids, ctx, cache)
        h, u, ves = (
            model.initial_state(e, input_pos),
            model.transformer.adapter.prepare(e),
            model.core_values(ids),
        )
        depth = torch.zeros(B, dtype=torch.long, device=device)
        active = torch.arange(B, device=device)
        kl = rule.criterion == ExitCriterion.KL
        logits = torch.empty(B, model.config.padded_vocab_size, device=device) if kl else None
        prev_logp: Tensor | None = None
        for r in range(R):
            full = active.numel() == B
            hh, uu = (h, u) if full else (h[active], u[active])
            vv = ves if full else [None if v is None else v[active] for v in ves]
            new = model.core_step(hh, uu, vv, ctx_core if full else ctx_core.subset(active), cache, r)
            depth[active] += 1
            done = depth[active] >= cap[active]
            if kl:
                readout = model.coda(new, ids[active], ctx if full else ctx.subset(active), cache)
                lp = F.log_softmax(model.head(readout, None, True)["logits"][:, 0], -1)
                logits[active] = lp
                if prev_logp is not None and r + 1 >= rule.min_steps:
                    div = (lp.exp() * (lp - prev_logp)).sum(-1)
                    done |= div < rule.threshold
                prev_logp = lp
            elif rule.criterion == ExitCriterion.STATE and r + 1 >= rule.min_steps:
                change = (new - hh).float().norm(dim=-1) / new.float().norm(dim=-1).clamp_min(1e-12)
                done |= change[:, 0] < rule.threshold
            if full:
                h = new
            else:
                h[active] = new
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = ~done
                active = active[keep]
                if prev_logp is not None:
                    prev_logp = prev_logp[keep]
        self._fill_skipped_kv(depth, pos)
        if kl:
            # The last probe of each row read out its final state; its coda K/V were written then too.
            out = logits
        else:
            out = model.head(model.coda(h, ids, ctx, cache), None, True)["logits"][:, 0]
        self.decoder.pos += 1
        self.last_depths = depth
        self.stats.add(depth)
        return out

    def _fill_skipped_kv(self, depth: Tensor, pos: int) -> None:
        """Rows that stopped after d < max iterations present iteration d−1's K/V at iterations d.. ."""
        cache, R = self.cache, self.max_steps
        n_core = self.model.config.n_layers_in_recurrent_block
        for d in torch.unique(depth).tolist():
            if d >= R:
                continue
            rows = (depth == d).nonzero()[:, 0]
            src_slot = cache.strategy.slot_of(d - 1, R)
            for r in range(d, R):
                if cache.strategy.slot_of(r, R) == src_slot:
                    continue
                for layer in range(n_core):
                    cache.core_layer(r, layer).copy_position(cache.core_layer(d - 1, layer), rows, pos)


@torch.no_grad()
def adaptive_generate(
    model: LanguageModel,
    input_ids: Tensor,
    max_new_tokens: int,
    rule: ExitRule,
    strategy: CacheStrategy = FULL_CACHE,
    budget: Tensor | None = None,
) -> tuple[Tensor, DepthStats]:
    """Greedy continuation with per-token exit; returns (ids [B, T + new], depth statistics)."""
    B, T = input_ids.shape
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the context of {model.config.block_size}"
        )
    dec = AdaptiveDecoder(model, B, T + max_new_tokens, rule, strategy)
    step = functools.partial(dec.step, budget=budget)
    greedy = functools.partial(sample_next, temperature=0.0)
    out = decode(dec.prefill, step, input_ids, max_new_tokens, model.config.vocab_size, greedy)
    return out, dec.stats
