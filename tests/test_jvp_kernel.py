"""The batched layers of ``StackedMLP`` against the previous ``vmap(functional_call)`` forward, under
every ``torch.func`` transform the project uses; the zero-tangent products they avoid; the full-Jacobian
contrast of ``bench/jvp.py`` against the JVP penalty; and a smoke run of the benchmark."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from agents.networks import StackedMLP, _Dense, _TanhTangent, mlp
from agents.policy import MultiAgentActorCritic
from regularizers.jvp import jvp_norms
from regularizers.specnorm import apply_spectral_norm

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODES = [(False, 1), (False, 3), (True, 1), (True, 3)]  # (share_parameters, N)


def reference_forward(net: StackedMLP, in_dim: int, hidden: tuple[int, ...], out_dim: int):
    """The previous ``StackedMLP.forward``: ``vmap`` over agents of ``functional_call`` on one MLP."""
    n = net.n_agents
    template = mlp(in_dim + (n if net.share_parameters else 0), hidden, out_dim).to("meta")

    def forward(x: torch.Tensor) -> torch.Tensor:
        params = {name: p.expand(n, *p.shape[1:]) for name, p in zip(net.param_names, net.stacked)}
        if net.share_parameters:
            x = torch.cat([x, torch.eye(n, dtype=x.dtype).expand(*x.shape[:-2], n, n)], dim=-1)
        return vmap(lambda p, inputs: functional_call(template, p, (inputs,)), in_dims=(0, -2), out_dims=-2)(params, x)

    return forward


def tiny_net(share: bool, n: int, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = StackedMLP(n, 4, (5, 6), 3, share_parameters=share).to(dtype)
    for p in net.parameters():  # not the near-zero output init, so every term is exercised
        p.data.normal_(0, 0.8)
    return net


@pytest.mark.parametrize("share,n", MODES)
def test_forward_equals_the_vmap_functional_call_reference(share, n):
    net = tiny_net(share, n)
    for shape in [(n, 4), (7, n, 4), (2, 5, n, 4)]:
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(net(x), reference_forward(net, 4, (5, 6), 3)(x), rtol=1e-12, atol=1e-12)
    net32 = tiny_net(share, n, torch.float32)
    x32 = torch.randn(9, n, 4)
    torch.testing.assert_close(net32(x32), reference_forward(net32, 4, (5, 6), 3)(x32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("share,n", MODES)
def test_transforms_and_penalty_gradients_equal_the_reference(share, n):
    """jvp and reverse over it (the Jacobian penalties), vjp, jacrev, vmap, jacfwd, hessian, forward
    over forward, double backward, and jvp / jacrev with respect to the parameters."""
    net = tiny_net(share, n)
    x = torch.randn(4, n, 4, dtype=torch.float64)
    u = torch.randn_like(x)
    params = dict(net.named_parameters())
    param_tangents = {k: torch.randn_like(v) for k, v in params.items()}

    def results(forward):
        out = []
        _, tangent = jvp(forward, (x,), (u,))
        out += [tangent, *torch.autograd.grad(tangent.square().sum(), list(params.values()), allow_unused=True)]
        out.append(vjp(forward, x)[1](torch.ones(4, n, 3, dtype=torch.float64))[0])
        out.append(vmap(jacrev(lambda y: forward(y.unsqueeze(0))[0]))(x))
        out.append(vmap(forward)(x.unsqueeze(1).expand(4, 2, n, 4)))
        scalar = lambda y: torch.sigmoid(forward(y)).sum()  # noqa: E731
        out += [jacfwd(scalar)(x), hessian(scalar)(x[:2]), jacfwd(jacfwd(scalar))(x[:2])]
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(scalar(xx), xx, create_graph=True)
        out.append(torch.autograd.grad((grad * u).sum(), xx)[0])  # Hessian-vector product
        through_params = lambda p: functional_call(net, p, (x,))  # noqa: E731
        out.append(jvp(through_params, (params,), (param_tangents,))[1])
        out += list(jacrev(through_params)(params).values())
        return [torch.zeros(()) if r is None else r for r in out]

    ours = results(net)
    reference = results(reference_forward(net, 4, (5, 6), 3))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_layer_functions_pass_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 1, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tanh(torch.randn(3, 5, 6, dtype=torch.float64)).requires_grad_(True)
    dense = lambda x, w, b: _Dense.apply(x, w, b, True)  # noqa: E731
    tangent = lambda x, w, y: _TanhTangent.apply(x, w, y)[0]  # noqa: E731
    for fn, inputs in ((dense, (x, w, b)), (tangent, (x, w, y)),
                       (lambda x, w, b: _Dense.apply(x, w, b, False), (x[0], w[0], b[0, 0]))):
        assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


class MatmulCounter(TorchDispatchMode):
    """Counts the matrix products that reach the kernels."""

    NAMES = {"mm", "bmm", "addmm", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in self.NAMES
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("share,n", MODES)
def test_penalty_takes_twice_the_matrix_products_of_the_plain_pass(share, n):
    """Three layers: plain = 3 forward + 5 backward products (no input gradient of the first layer);
    penalty = twice that, with no product with a zero weight tangent (PyTorch's own rule adds 8)."""
    policy = MultiAgentActorCritic(n, 4, torch.zeros(3), torch.ones(3), hidden=(5, 6), share_parameters=share)
    x = torch.randn(2, 7, n, 4)
    u = torch.randn_like(x)
    with MatmulCounter() as plain:
        policy.deterministic_action(x.flatten(0, 1)).square().mean().backward()
    with MatmulCounter() as penalty:
        jvp_norms(policy.deterministic_action, x, u).square().mean().backward()
    assert (plain.count, penalty.count) == (8, 16)


@pytest.mark.parametrize("share", [False, True])
def test_parametrizations_on_the_stacked_entries_apply(share):
    net = tiny_net(share, 3)
    apply_spectral_norm(net, bound=0.5)
    net.eval()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    out = net(x)
    torch.testing.assert_close(out, reference_forward(net, 4, (5, 6), 3)(x), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_jvp", ROOT / "bench" / "jvp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_jacobian_contrast_computes_the_same_penalty_and_gradient():
    bench = load_bench()
    torch.manual_seed(0)
    policy = MultiAgentActorCritic(3, 4, -torch.ones(2), torch.ones(2), hidden=(5,)).double()
    for p in policy.actor.parameters():
        p.data.normal_(0, 0.8)
    points = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    directions = torch.randn_like(points)
    params = list(policy.actor.parameters())
    penalty = jvp_norms(policy.deterministic_action, points, directions).square().mean()
    expected = torch.autograd.grad(penalty, params, allow_unused=True)
    value = bench.full_jacobian_penalty_backward(policy.deterministic_action, points, directions, chunk_rows=7)
    assert value == pytest.approx(float(penalty.detach()), rel=1e-12)
    for grad, p in zip(expected, params):
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if p.grad is None else p.grad, zero if grad is None else grad,
                                   rtol=1e-10, atol=1e-14)


def test_benchmark_quick_run_prints_the_table():
    command = [sys.executable, str(ROOT / "bench" / "jvp.py"), "--quick", "--markdown", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| d | N | K | penalty / plain | full Jacobian / plain | PPO update AAJR / plain")
    rows = [line for line in lines[2:] if line.startswith("| 16 |")]
    assert len(rows) == 4 and all(cell.strip().endswith("x") for row in rows for cell in row.split("|")[4:7])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("share,n", MODES)
def test_cuda_matches_cpu(share, n):
    net = tiny_net(share, n)
    x, u = torch.randn(5, n, 4, dtype=torch.float64), torch.randn(5, n, 4, dtype=torch.float64)
    outputs = []
    for device in ("cpu", "cuda"):
        moved = net.to(device)
        _, tangent = jvp(moved, (x.to(device),), (u.to(device),))
        grads = torch.autograd.grad(tangent.square().sum(), list(moved.parameters())[:-1])  # not the output bias
        outputs.append([t.cpu() for t in (moved(x.to(device)), tangent, *grads)])
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_layers_carry_their_forward_signature_as_inspect_computes_it():
    """Function.apply binds arguments with inspect.signature(cls.forward): the precomputed signature is
    the one inspect returns, and equal to a freshly computed one; a Function whose forward is not a
    staticmethod is refused."""
    import inspect

    from agents.networks import FUNCTIONS, _cached_forward_signature

    assert set(FUNCTIONS) == {_Dense, _TanhTangent}
    for function in FUNCTIONS:
        cached = function.forward.__signature__
        assert inspect.signature(function.forward) is cached
        del function.forward.__signature__
        try:
            assert inspect.signature(function.forward) == cached
        finally:
            function.forward.__signature__ = cached

    class Plain(torch.autograd.Function):
        def forward(ctx, x):  # not a staticmethod
            return x

    with pytest.raises(TypeError, match="Plain.forward must be a staticmethod"):
        _cached_forward_signature(Plain)
