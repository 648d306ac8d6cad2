"""``Scenario.unilateral_system_loss``: each scenario's override against the generic form (the system
loss on N copies of the state), values and gradients, in float64 on random states and actions."""

import pytest
import torch

import envs  # noqa: F401  (registers the scenarios)
from envs.core import Scenario, make_scenario
from envs.shocks import system_objective

# congested settings too: spikes and capacity drops push loads past capacities, buffers and kinks
CASES = [
    ("routing", {"n_agents": 3, "n_paths": 4}),
    ("routing", {"n_agents": 4, "layout": "braess", "spike_prob": 0.5, "capacity_drop_prob": 0.5}),
    ("routing", {"n_agents": 2, "latency": "affine"}),
    ("commons", {"n_agents": 3, "n_resources": 4}),
    ("compute", {"n_agents": 3, "n_servers": 4}),
    ("compute", {"n_agents": 4, "n_servers": 2, "load_factor": 2.5, "spike_prob": 0.5, "capacity_drop_prob": 0.5}),
    ("compute", {"n_agents": 1, "n_servers": 3, "smoothing": 0.0}),
]


def random_states_and_actions(name, kwargs, seed):
    scenario = make_scenario(name, dtype=torch.float64, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    state = scenario.reset(64, generator)
    shape = (64, scenario.n_agents, scenario.action_dim)
    for _ in range(3):  # queues, last splits and stocks away from their reset values
        state = scenario.step(state, torch.rand(shape, generator=generator, dtype=torch.float64), generator).state
    nominal = torch.rand(shape, generator=generator, dtype=torch.float64)
    attacked = torch.rand(shape, generator=generator, dtype=torch.float64)
    attacked[:8] = nominal[:8]  # some agents not moved at all
    attacked[8:16, :, 0] = 0.0  # and actions on the box's faces
    return scenario, state, nominal, attacked


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_override_equals_the_generic_form_values_and_gradients(name, kwargs, seed):
    scenario, state, nominal, attacked = random_states_and_actions(name, kwargs, seed)
    assert type(scenario).unilateral_system_loss is not Scenario.unilateral_system_loss
    results = []
    for method in (scenario.unilateral_system_loss,
                   lambda *args: Scenario.unilateral_system_loss(scenario, *args)):
        nominal_in, attacked_in = nominal.clone().requires_grad_(), attacked.clone().requires_grad_()
        loss = method(state, nominal_in, attacked_in)
        assert loss.shape == nominal.shape[:2]
        weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).view_as(loss)
        grads = torch.autograd.grad((loss * weights).sum(), (nominal_in, attacked_in))
        results.append((loss.detach(), *grads))
    for fast, generic in zip(*results):
        torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", CASES[:1] + CASES[3:5])
def test_generic_form_is_the_system_loss_of_each_unilateral_joint_action(name, kwargs):
    scenario, state, nominal, attacked = random_states_and_actions(name, kwargs, 2)
    loss = Scenario.unilateral_system_loss(scenario, state, nominal, attacked)
    for i in range(scenario.n_agents):
        joint = nominal.clone()
        joint[:, i] = attacked[:, i]
        torch.testing.assert_close(loss[:, i], scenario.system_loss(state, joint), rtol=0, atol=0)


def test_no_deviation_gives_the_nominal_system_loss_for_every_agent():
    scenario, state, nominal, _ = random_states_and_actions("compute", CASES[5][1], 3)
    loss = scenario.unilateral_system_loss(state, nominal, nominal)
    torch.testing.assert_close(loss, scenario.system_loss(state, nominal).unsqueeze(-1).expand_as(loss))


@pytest.mark.parametrize("name,kwargs", [CASES[0], CASES[3], CASES[4]])
def test_per_agent_system_objective_gradient_equals_the_generic_form(name, kwargs):
    """What PGA differentiates: ``g(delta)`` of a policy, through the override and the generic form."""
    scenario, state, _, _ = random_states_and_actions(name, kwargs, 4)
    obs = scenario.observe(state)
    weight = torch.randn(obs.shape[-1], scenario.action_dim, generator=torch.Generator().manual_seed(5),
                         dtype=torch.float64)

    def policy(x):
        return torch.sigmoid(x @ weight)

    class Generic:
        def __getattr__(self, key):
            return getattr(scenario, key)

        def unilateral_system_loss(self, *args):
            return Scenario.unilateral_system_loss(scenario, *args)

    delta = 0.1 * torch.randn(obs.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = []
    for target in (scenario, Generic()):
        point = delta.clone().requires_grad_()
        value = system_objective(target, state, obs, policy, "per_agent")(point)
        out.append((value.detach(), torch.autograd.grad(value.sum(), point)[0]))
    for fast, generic in zip(*out):
        torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-12)
