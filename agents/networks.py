"""Per-agent networks held as stacked parameters and evaluated in one batched call.

``StackedMLP`` keeps the parameters of N MLPs stacked along a leading agent dimension
(``torch.func.stack_module_state``) and evaluates all of them at once with batched matrix products
(``baddbmm`` over the agent dimension). Parameter sharing is the same parameters with a leading
dimension of 1 (one network; the agent's one-hot id is appended to its input so the network can still
tell agents apart), evaluated as one ordinary dense network over all agents' rows.

Each layer ``y = act(x W^T + b)`` is a ``torch.autograd.Function`` (``_Dense``) with its own backward
and forward-mode (``jvp``) rule, so that Jacobian-vector products of the policy (``torch.func.jvp``,
``regularizers.jvp``) cost what they must. PyTorch's own forward-mode rule for a matrix product,
``d(x W^T) = dx W^T + x dW^T``, multiplies by a materialised zero ``dW`` when only the input carries a
tangent, and reverse mode then differentiates that product too: about one wasted matrix product per
layer forward and one backward. The rule here is

    dy = act'(a) * (dx W^T)        (a = x W^T + b; act'(a) = 1 - y^2 for tanh, 1 for the output layer)

(plus ``x dW^T + db`` when the parameters carry tangents), and the tangent of a tanh layer is itself a
Function (``_TanhTangent``) whose backward is written out:

    t = (1 - y^2) * q,  q = dx W^T:    dL/dq = (1 - y^2) * dL/dt,   dL/dy = -2 y q * dL/dt.

All of these are ordinary PyTorch operations, so the layers work under ``torch.func`` transforms
(``jvp``, ``vjp``, ``vmap``, ``jacrev``, ``jacfwd``), reverse-over-forward (the Jacobian penalties),
double backward (Hessian-vector products) and on any device.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.func import stack_module_state


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, out_gain: float = 1.0) -> nn.Sequential:
    """Tanh MLP with orthogonal initialisation (gain sqrt(2) inside, ``out_gain`` on the last layer)."""
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden)
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            gain = out_gain if layer is layers[-1] else 2 ** 0.5
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def _matmul_t(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x W^T``: ``weight`` ``(out, in)`` with ``x`` ``(..., in)``, or ``(G, out, in)`` with ``x`` ``(G, R, in)``."""
    return torch.matmul(x, weight.mT)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x W^T + b`` with the bias added by the matrix product (``baddbmm``/``addmm``) where it can be."""
    if weight.dim() == 3:
        return torch.baddbmm(bias, x, weight.mT)
    if bias.dim() == 1:
        return nn.functional.linear(x, weight, bias)
    return _matmul_t(x, weight) + bias


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``dL/dW = sum_rows grad^T x``, in the shape of ``weight``."""
    if weight.dim() == 3:
        return grad.mT @ x
    return grad.reshape(-1, grad.shape[-1]).mT @ x.reshape(-1, x.shape[-1])


def _cached_forward_signature(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """Class decorator: give the Function's static ``forward`` a precomputed ``__signature__``.

    ``Function.apply`` binds its arguments with ``inspect.signature(cls.forward)`` on every call when the
    Function defines ``setup_context``, and ``inspect.signature`` builds the signature anew each time
    unless the function carries ``__signature__`` (the saving: README, performance). Same arguments, same
    numbers."""
    if not isinstance(function.__dict__.get("forward"), staticmethod):
        raise TypeError(f"{function.__name__}.forward must be a staticmethod")
    function.forward.__signature__ = inspect.signature(function.forward)
    return function


@_cached_forward_signature
class _Dense(torch.autograd.Function):
    """``y = tanh(x W^T + b)`` (``tanh=True``) or ``y = x W^T + b``; ``bias`` may be None."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, tanh):
        y = _matmul_t(x, weight) if bias is None else _affine(x, weight, bias)
        return y.tanh_() if tanh else y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, tanh = inputs
        y = output if tanh else None
        ctx.save_for_backward(x, weight, y)
        ctx.save_for_forward(x, weight, y)
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.out_shape = output.shape
        ctx.set_materialize_grads(False)  # undefined tangents stay None instead of zeros

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        if y is not None:
            grad = torch.ops.aten.tanh_backward(grad, y)
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (grad @ weight if needs_x else None,
                _weight_grad(grad, x, weight) if needs_weight else None,
                grad.sum_to_size(ctx.bias_shape) if needs_bias else None,
                None)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, _):
        x, weight, y = ctx.saved_tensors
        if weight_t is None and bias_t is None:  # a tangent in the input only: no product with dW = 0
            if y is None:
                return _Dense.apply(x_t, weight, None, False)
            return _TanhTangent.apply(x_t, weight, y)[0]
        q = x.new_zeros(ctx.out_shape)
        if x_t is not None:
            q = q + _matmul_t(x_t, weight)
        if weight_t is not None:
            q = q + _matmul_t(x, weight_t)
        if bias_t is not None:
            q = q + bias_t
        return q if y is None else torch.ops.aten.tanh_backward(q, y)


@_cached_forward_signature
class _TanhTangent(torch.autograd.Function):
    """``(t, q)``: the tangent ``t = (1 - y^2) * q`` of a tanh layer and ``q = x_t W^T``. ``q`` is an
    output only so that the backward can use it as a saved output (double backward then differentiates
    through it); callers use ``t``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x_t, weight, y):
        q = _matmul_t(x_t, weight)
        return torch.ops.aten.tanh_backward(q, y), q

    @staticmethod
    def setup_context(ctx, inputs, output):
        x_t, weight, y = inputs
        ctx.save_for_backward(x_t, weight, y, output[1])
        ctx.save_for_forward(x_t, weight, y, output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, grad_q):
        x_t, weight, y, q = ctx.saved_tensors
        grad_y = None
        if grad is not None:
            if ctx.needs_input_grad[2]:
                grad_y = (y * q * grad).mul_(-2.0)
            grad = torch.ops.aten.tanh_backward(grad, y)
            grad_q = grad if grad_q is None else grad + grad_q
        if grad_q is None:
            return None, None, None
        needs_x, needs_weight, _ = ctx.needs_input_grad
        return (grad_q @ weight if needs_x else None,
                _weight_grad(grad_q, x_t, weight) if needs_weight else None,
                grad_y)

    @staticmethod
    def jvp(ctx, x_t_dot, weight_dot, y_dot):
        """Forward over forward: ``dq = dx_t W^T + x_t dW^T``, ``dt = (1 - y^2) dq - 2 y q dy``."""
        x_t, weight, y, q = ctx.saved_tensors
        q_dot = torch.zeros_like(q)
        if x_t_dot is not None:
            q_dot = q_dot + _matmul_t(x_t_dot, weight)
        if weight_dot is not None:
            q_dot = q_dot + _matmul_t(x_t, weight_dot)
        t_dot = torch.ops.aten.tanh_backward(q_dot, y)
        if y_dot is not None:
            t_dot = t_dot - 2.0 * y * q * y_dot
        return t_dot, q_dot


FUNCTIONS = (_Dense, _TanhTangent)  # the layers' autograd Functions


class StackedMLP(nn.Module):
    """N MLPs ``(..., N, in_dim) -> (..., N, out_dim)``, one per agent, or one shared by all agents.

    Parameters ``self.stacked[j]`` (names ``self.param_names[j]``: ``"0.weight"``, ``"0.bias"``,
    ``"2.weight"``...) have a leading dimension G = N (one network per agent) or G = 1 (shared, or one
    agent); they are read through ``self.stacked`` on every call, so parametrizations registered on its
    entries (``regularizers.specnorm``) apply. With G = N the rows are laid out agent-major,
    ``(N, R, features)``, and each layer is one ``baddbmm``; with G = 1 every agent's rows go through one
    dense layer, the one-hot id's columns of the first weight acting as a per-agent bias:
    ``[x, e_i] W^T + b = x W_x^T + (b + W_id[:, i])``.

    :param n_agents: number of agents N.
    :param in_dim: input features per agent (without the agent id).
    :param hidden: hidden layer sizes.
    :param out_dim: outputs per agent.
    :param share_parameters: one network for all agents, with the one-hot agent id appended.
    :param out_gain: orthogonal-init gain of the output layer.
    """

    def __init__(self, n_agents: int, in_dim: int, hidden: tuple[int, ...], out_dim: int,
                 share_parameters: bool = False, out_gain: float = 1.0) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.share_parameters = share_parameters
        net_in = in_dim + (n_agents if share_parameters else 0)
        nets = [mlp(net_in, hidden, out_dim, out_gain) for _ in range(1 if share_parameters else n_agents)]
        stacked, _ = stack_module_state(nets)
        self.param_names = list(stacked)
        self.stacked = nn.ParameterList([nn.Parameter(stacked[name].detach().clone()) for name in self.param_names])

    members = 1  # P: a population of P independent runs' networks (``stack_members``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = list(self.stacked)
        weights, biases = params[0::2], params[1::2]
        last = len(weights) - 1
        n_agents, in_dim = x.shape[-2:]
        if self.members > 1:
            return self._population_forward(x, weights, biases)
        if weights[0].shape[0] == 1:
            h = x
            for index, (weight, bias) in enumerate(zip(weights, biases)):
                weight, bias = weight[0], bias[0]
                if index == 0 and self.share_parameters:
                    weight, bias = weight[:, :in_dim], bias + weight[:, in_dim:].T
                h = _Dense.apply(h, weight, bias, index < last)
            return h
        h = x.reshape(-1, n_agents, in_dim).transpose(0, 1)
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            h = _Dense.apply(h, weight, bias.unsqueeze(-2), index < last)
        return h.transpose(0, 1).reshape(*x.shape[:-1], h.shape[-1])

    def _population_forward(self, x: torch.Tensor, weights: list[torch.Tensor],
                            biases: list[torch.Tensor]) -> torch.Tensor:
        """P members' networks on ``x`` ``(..., N, in_dim)`` whose leading rows are member-major (member p's
        rows are the p-th of P equal blocks): the members' G = N or G = 1 networks stacked as P * G
        slices, each layer one ``baddbmm`` over them."""
        members, last = self.members, len(weights) - 1
        n_agents, in_dim = x.shape[-2:]
        h = x.reshape(members, -1, n_agents, in_dim)
        rows = h.shape[1]
        if self.share_parameters or weights[0].shape[0] == members:  # one network per member
            h = h.reshape(members, rows * n_agents, in_dim)
            for index, (weight, bias) in enumerate(zip(weights, biases)):
                if index == 0 and self.share_parameters:  # the one-hot id's columns: a per-agent bias
                    agent_bias = bias.unsqueeze(1) + weight[:, :, in_dim:].mT  # (P, N, out)
                    weight = weight[:, :, :in_dim]
                    bias = agent_bias.unsqueeze(1).expand(members, rows, n_agents, -1).reshape(members, rows * n_agents, -1)
                else:
                    bias = bias.unsqueeze(-2)
                h = _Dense.apply(h, weight, bias, index < last)
            return h.reshape(*x.shape[:-1], h.shape[-1])
        h = h.permute(0, 2, 1, 3).reshape(members * n_agents, rows, in_dim)
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            h = _Dense.apply(h, weight, bias.unsqueeze(-2), index < last)
        out = h.reshape(members, n_agents, rows, -1).permute(0, 2, 1, 3)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def stack_members(networks: list[StackedMLP]) -> StackedMLP:
    """One ``StackedMLP`` evaluating P members' networks (same architecture) at once: their stacked
    parameters concatenated along the leading dimension (P * G slices, member-major)."""
    first = networks[0]
    population = StackedMLP.__new__(StackedMLP)
    nn.Module.__init__(population)
    population.n_agents, population.share_parameters = first.n_agents, first.share_parameters
    population.param_names = list(first.param_names)
    population.members = len(networks)
    population.stacked = nn.ParameterList([
        nn.Parameter(torch.cat([net.stacked[j].detach() for net in networks])) for j in range(len(first.param_names))])
    return population


def member_slice(population: StackedMLP, member: int) -> slice:
    """The rows of member ``member``'s slices in each stacked parameter of a ``stack_members`` network."""
    size = population.stacked[0].shape[0] // population.members
    return slice(member * size, (member + 1) * size)
