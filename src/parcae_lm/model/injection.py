"""Input injections: how the prelude output e enters the recurrent state h at every iteration.

Each injection computes h ← Ā·h + B̄·e. The input term B̄·e does not change across iterations, so it is
computed once per forward (`prepare`) and reused by every `step` — one d×d matmul per forward instead of
one per iteration. Gradients still reach B through every grad-carrying iteration.

- diagonal (Parcae): Ā = exp(−Δ·exp(A_log)) ∈ (0,1)ᵈ, so ρ(Ā) < 1 by construction; B̄ = Δ·B (Euler) or
  (1 − Ā)/exp(A_log)·B (zero-order hold); Δ = softplus(dt_bias).
- linear (Huginn-style): h ← W·[h; e]; the state matrix W[:, :d_r] has unconstrained spectral radius.
- add: h ← h + e; Ā = I, marginally stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae_lm.config import Discretization, Injection, ParcaeConfig
from parcae_lm.model.layers import trunc_normal_, trunc_orthogonal_


class DiagonalInjection(nn.Module):
    def __init__(self, d_state: int, d_in: int, discretization: Discretization, decay: float) -> None:
        super().__init__()
        self.discretization, self.decay = discretization, decay
        self.A_log = nn.Parameter(torch.empty(d_state))
        self.dt_bias = nn.Parameter(torch.empty(d_state))
        self.B = nn.Parameter(torch.empty(d_state, d_in))

    def reset_parameters(self) -> None:
        if self.B.is_meta:
            return
        with torch.no_grad():
            # A = exp(A_log) = 1 and Δ₀ = −ln(decay), so Ā₀ = decay in every channel (√(1/5) ≈ 0.447).
            self.A_log.zero_()
            dt0 = -math.log(self.decay)
            self.dt_bias.fill_(math.log(math.expm1(dt0)))  # inverse softplus
            if self.B.shape[0] == self.B.shape[1]:
                self.B.copy_(torch.eye(self.B.shape[0]))
            else:
                trunc_orthogonal_(self.B, 1.0 / math.sqrt(max(self.B.shape)))  # gain 1

    def state_matrix(self) -> Tensor:
        """Ā as a vector (the diagonal), fp32."""
        dt = F.softplus(self.dt_bias.float())
        return torch.exp(-dt * torch.exp(self.A_log.float()))

    def prepare(self, e: Tensor) -> Tensor:
        dt = F.softplus(self.dt_bias.float())
        a = torch.exp(self.A_log.float())
        if self.discretization == Discretization.EULER:
            scale = dt
        else:  # ZOH for B with diagonal A = −exp(A_log): B̄ = A⁻¹(exp(ΔA) − I)B = (1 − Ā)/exp(A_log)·B
            scale = -torch.expm1(-dt * a) / a
        return (e @ self.B.T) * scale.to(e.dtype)

    def step(self, h: Tensor, u: Tensor) -> Tensor:
        return h * self.state_matrix().to(h.dtype) + u

    def spectral_radius(self) -> float:
        return float(self.state_matrix().detach().max())


class LinearInjection(nn.Module):
    def __init__(self, d_state: int, d_in: int, bias: bool, d_model: int) -> None:
        super().__init__()
        self.d_state, self.d_model = d_state, d_model
        self.adapter = nn.Linear(d_state + d_in, d_state, bias=bias)

    def reset_parameters(self) -> None:
        if self.adapter.weight.is_meta:
            return
        trunc_normal_(self.adapter.weight, math.sqrt(2.0 / (5.0 * self.d_model)))
        if self.adapter.bias is not None:
            nn.init.zeros_(self.adapter.bias)

    def state_matrix(self) -> Tensor:
        return self.adapter.weight[:, : self.d_state]

    def prepare(self, e: Tensor) -> Tensor:
        return F.linear(e, self.adapter.weight[:, self.d_state :], self.adapter.bias)

    def step(self, h: Tensor, u: Tensor) -> Tensor:
        return h @ self.state_matrix().T + u

    def spectral_radius(self) -> float:
        return float(torch.linalg.eigvals(self.state_matrix().detach().float()).abs().max())


class AdditiveInjection(nn.Module):
    def reset_parameters(self) -> None:
        pass

    def prepare(self, e: Tensor) -> Tensor:
        return e

    def step(self, h: Tensor, u: Tensor) -> Tensor:
        return h + u

    def spectral_radius(self) -> float:
        return 1.0


def make_injection(cfg: ParcaeConfig) -> nn.Module:
    d_r, d = cfg.recurrent_embedding_dimension, cfg.n_embd
    if cfg.injection_type == Injection.DIAGONAL:
        return DiagonalInjection(d_r, d, cfg.b_discretization, cfg.ssm_decay)
    if cfg.injection_type == Injection.LINEAR:
        return LinearInjection(d_r, d, cfg.bias, d)
    return AdditiveInjection()
