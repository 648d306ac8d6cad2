"""Spectral normalisation of the policy's layers: an architectural (global) Lipschitz bound.

Each weight matrix of the actor, stacked per agent ``W`` ``(G, out, in)``, is replaced through
``torch.nn.utils.parametrize`` by

    W_sn = W / max(1, sigma(W) / c)                      (Miyato et al. 2018, as a bound, not an equality)

with ``sigma(W)`` the largest singular value of each agent's matrix, estimated by one step of power
iteration per forward pass in training mode (the vectors ``u``, ``v`` are buffers, saved with the
policy, as in ``torch.nn.utils.parametrizations.spectral_norm``, which treats a 3-d weight as one
matrix and so cannot bound each agent's layer separately). With tanh activations (1-Lipschitz) each
agent's pre-squash map is then ``c^L``-Lipschitz in the normalised observation; the squashing adds
``(high - low) / 4``. Layers whose norm is already below ``c`` (the small output layer at
initialisation) are left unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class StackedSpectralBound(nn.Module):
    """Parametrization ``W -> W / max(1, sigma(W) / bound)`` for stacked weights ``(G, out, in)``."""

    def __init__(self, weight: torch.Tensor, bound: float, power_iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        if weight.dim() != 3:
            raise ValueError(f"expected a stacked weight (G, out, in), got shape {tuple(weight.shape)}")
        if not bound > 0:
            raise ValueError(f"spectral bound must be > 0, got {bound}")
        self.bound, self.power_iterations, self.eps = float(bound), int(power_iterations), eps
        groups, rows, cols = weight.shape
        u = torch.randn(groups, rows, dtype=weight.dtype, device=weight.device)
        v = torch.randn(groups, cols, dtype=weight.dtype, device=weight.device)
        self.register_buffer("_u", nn.functional.normalize(u, dim=-1, eps=eps))
        self.register_buffer("_v", nn.functional.normalize(v, dim=-1, eps=eps))
        self._power_method(weight.detach(), 15)

    @torch.no_grad()
    def _power_method(self, weight: torch.Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._u = nn.functional.normalize(torch.einsum("goi,gi->go", weight, self._v), dim=-1, eps=self.eps)
            self._v = nn.functional.normalize(torch.einsum("goi,go->gi", weight, self._u), dim=-1, eps=self.eps)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """``u^T W v`` ``(G,)``: the power-iteration estimate of each matrix's largest singular value."""
        return torch.einsum("go,goi,gi->g", self._u, weight, self._v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._power_method(weight.detach(), self.power_iterations)
        scale = torch.clamp(self.sigma(weight) / self.bound, min=1.0)
        return weight / scale.view(-1, 1, 1)


def apply_spectral_norm(stacked_mlp: nn.Module, bound: float = 1.0, power_iterations: int = 1) -> nn.Module:
    """Register the bound on every weight of a ``StackedMLP`` (in place; returns the module).

    Build the optimizer after this call: the raw weights become ``parametrizations.<i>.original``.
    """
    holder = stacked_mlp.stacked
    for index, name in enumerate(stacked_mlp.param_names):
        if name.endswith("weight"):
            weight = holder[index]
            parametrize.register_parametrization(holder, str(index),
                                                 StackedSpectralBound(weight, bound, power_iterations))
    return stacked_mlp


def layer_spectral_norms(stacked_mlp: nn.Module) -> torch.Tensor:
    """Exact largest singular value (SVD) of every effective weight, ``(layers, G)``; for diagnostics."""
    norms = [torch.linalg.matrix_norm(weight.detach(), ord=2)
             for name, weight in zip(stacked_mlp.param_names, stacked_mlp.stacked) if name.endswith("weight")]
    return torch.stack(norms)
