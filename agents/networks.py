"""Per-agent networks held as stacked parameters and evaluated in one batched call.

``StackedMLP`` keeps the parameters of N MLPs stacked along a leading agent dimension
(``torch.func.stack_module_state``) and evaluates all of them at once with ``torch.func.vmap`` over
``functional_call``. Parameter sharing is the same code with a leading dimension of 1, expanded to N
(one network; the agent's one-hot id is appended to its input so the network can still tell agents
apart), so there is no second code path.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


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


class StackedMLP(nn.Module):
    """N MLPs ``(B, N, in_dim) -> (B, N, out_dim)``, one per agent, or one shared by all agents.

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
        # A parameter-less template: functional_call supplies the (per-agent) parameters.
        self._template = [copy.deepcopy(nets[0]).to("meta")]

    def agent_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters with a leading agent dimension of N (a view when shared)."""
        return {name: p.expand(self.n_agents, *p.shape[1:]) for name, p in zip(self.param_names, self.stacked)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.share_parameters:
            agent_id = torch.eye(self.n_agents, dtype=x.dtype, device=x.device)
            x = torch.cat([x, agent_id.expand(*x.shape[:-2], -1, -1)], dim=-1)
        template = self._template[0]

        def one_agent(params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(template, params, (inputs,))

        return vmap(one_agent, in_dims=(0, -2), out_dims=-2)(self.agent_parameters(), x)
