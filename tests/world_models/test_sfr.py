"""SFR against dense computations of the same linearised-network GP, with Jacobians from torch.func."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from world_models.sfr import SFR

LO, HI = -2.0, 3.0


def squash(h: torch.Tensor) -> torch.Tensor:
    return LO + (HI - LO) * 0.5 * (torch.tanh(h) + 1)


def ln_net(in_dim: int = 3, seed: int = 0) -> nn.Sequential:
    """Linear -> LayerNorm -> Mish -> Linear -> Tanh -> Linear(1), float64, with non-trivial LayerNorm affines."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(in_dim, 8), nn.LayerNorm(8), nn.Mish(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1)
    ).double()
    with torch.no_grad():
        net[1].weight.add_(0.3 * torch.randn(8, dtype=torch.float64))
        net[1].bias.add_(0.3 * torch.randn(8, dtype=torch.float64))
    return net


def jacobian(net: nn.Module, x: torch.Tensor, output_fn=None) -> torch.Tensor:
    """Full per-row Jacobian J(x) = ∂f(x)/∂w ``[N, P]``, written out with vmap(jacrev(functional_call))."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xi):
        h = functional_call(net, p, (xi[None],))
        return (h if output_fn is None else output_fn(h)).squeeze()

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    return torch.cat([jac[k].reshape(len(x), -1) for k in params], 1)


@pytest.fixture(scope="module")
def regression():
    """A 1 -> 16 -> 16 -> 1 Tanh net (P = 321 > N = 20) trained on a noisy sine; returns (net, x, y).

    The inputs are spread over [-4, 4] because the dense comparison inverts K̃(X, X) (M = N): on a narrower grid
    the Jacobians of the smooth net are nearly collinear (cond(K̃) ~ 1e15) and float64 cannot resolve it.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-4, 4, 20, dtype=torch.float64)[:, None]
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(20, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (net(x).squeeze(-1) - y).square().mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return net, x, y


def test_factorised_kernel_matches_full_jacobians():
    net = ln_net()
    g = torch.Generator().manual_seed(1)
    a = torch.randn(7, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sfr = SFR(net, num_inducing=4, prior_precision=1.0, noise_var=0.1, output_fn=squash)
    expected = jacobian(net, a, squash) @ jacobian(net, b, squash).T
    torch.testing.assert_close(sfr.kernel(a, b), expected, rtol=1e-10, atol=1e-12)
    # and without the output squash (a different kernel, so the squash is really applied)
    plain = SFR(net, num_inducing=4, prior_precision=1.0, noise_var=0.1)
    torch.testing.assert_close(plain.kernel(a, b), jacobian(net, a) @ jacobian(net, b).T, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(plain.kernel(a, b), expected)


def test_full_inducing_set_equals_dense_weight_space_gp(regression):
    net, x, y = regression
    delta, noise = 0.05, 0.01
    n = len(x)
    x_test = torch.linspace(-8, 8, 17, dtype=torch.float64)[:, None]
    sfr = SFR(net, num_inducing=n, prior_precision=delta, noise_var=noise, jitter=1e-10)
    sfr.fit(x, y, inducing=x)
    mean, var = sfr.predict(x_test)

    phi, phi_test = jacobian(net, x), jacobian(net, x_test)
    assert phi.shape[1] > n
    precision = phi.T @ phi / noise + delta * n * torch.eye(phi.shape[1], dtype=torch.float64)  # GGN + prior
    mu = torch.linalg.solve(precision, phi.T @ y / noise)
    dense_mean = phi_test @ mu
    dense_var = (phi_test * torch.linalg.solve(precision, phi_test.T).T).sum(-1)
    torch.testing.assert_close(mean, dense_mean, rtol=1e-6, atol=1e-6 * dense_mean.abs().max().item())
    torch.testing.assert_close(var, dense_var, rtol=1e-6, atol=1e-6 * dense_var.max().item())
    # the GP mean fits the data (it is not trivially zero)
    assert (sfr.predict(x)[0] - y).square().mean() < 0.05


def test_dual_update_equals_refit_on_union():
    net = ln_net(seed=2)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(25, 3, generator=g, dtype=torch.float64)
    y1, y2 = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(25, generator=g, dtype=torch.float64)
    z = x1[:10]
    x_test = torch.randn(9, 3, generator=g, dtype=torch.float64)
    kw = dict(num_inducing=10, prior_precision=0.3, noise_var=0.05, output_fn=squash)

    updated = SFR(net, **kw)
    updated.fit(x1, y1, inducing=z)
    before = updated.predict(x_test)
    updated.update(x2, y2)
    refit = SFR(net, **kw)
    refit.fit(torch.cat([x1, x2]), torch.cat([y1, y2]), inducing=z)

    assert int(updated.num_data) == int(refit.num_data) == 65
    for got, want in zip(updated.predict(x_test), refit.predict(x_test)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(before[1], updated.predict(x_test)[1])  # the update did change the posterior


def test_snapshot_is_frozen_and_state_dict_round_trips():
    net = ln_net(seed=4)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64)
    x_test = torch.randn(11, 3, generator=g, dtype=torch.float64)
    kw = dict(num_inducing=64, prior_precision=0.5, noise_var=0.1, output_fn=squash)  # M > N: Z has 30 rows
    sfr = SFR(net, **kw)
    sfr.fit(x, y, generator=torch.Generator().manual_seed(0))
    assert sfr.inducing.shape == (30, 3)
    mean, var = sfr.predict(x_test)

    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    assert not torch.allclose(sfr.kernel(x_test, x_test), SFR(net, **kw).kernel(x_test, x_test))
    m2, v2 = sfr.predict(x_test)
    assert torch.equal(m2, mean) and torch.equal(v2, var)

    assert all(k.startswith("snapshot.") or "." not in k for k in sfr.state_dict())  # the live net is not in it
    fresh = SFR(ln_net(seed=9), **kw)
    assert not fresh.fitted
    fresh.load_state_dict(sfr.state_dict())
    assert fresh.fitted
    m3, v3 = fresh.predict(x_test)
    assert torch.equal(m3, mean) and torch.equal(v3, var)


def test_uncertainty_grows_away_from_data_and_errors(regression):
    net, x, y = regression
    sfr = SFR(net, num_inducing=10, prior_precision=0.05, noise_var=0.01)
    with pytest.raises(RuntimeError, match="before fit"):
        sfr.predict(x)
    sfr.fit(x, y, generator=torch.Generator().manual_seed(0))  # Z: 10 distinct random training inputs
    assert sfr.inducing.shape == (10, 1) and len(set(sfr.inducing[:, 0].tolist()) & set(x[:, 0].tolist())) == 10

    sfr = SFR(net, num_inducing=20, prior_precision=0.05, noise_var=0.01)
    sfr.fit(x, y)
    _, var_near = sfr.predict(torch.linspace(-4, 4, 41, dtype=torch.float64)[:, None])
    _, var_far = sfr.predict(torch.tensor([[-12.0], [-8.0], [8.0], [12.0]], dtype=torch.float64))
    assert (var_near >= 0).all()
    assert var_far.min() > 10 * var_near.max()

    good = dict(num_inducing=4, prior_precision=1.0, noise_var=0.1, jitter=0.0)
    for name, bad in [("num_inducing", 0), ("prior_precision", 0.0), ("noise_var", -1.0), ("jitter", -1e-6)]:
        with pytest.raises(ValueError, match=name):
            SFR(net, **{**good, name: bad})
    conv = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 3), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="Conv1d"):
        SFR(conv, **good)


def test_predict_under_no_grad_leaves_grads_untouched():
    net = ln_net(seed=6)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    sfr = SFR(net, num_inducing=8, prior_precision=1.0, noise_var=0.1, output_fn=squash)
    with torch.no_grad():
        sfr.fit(x, y)
        mean, var = sfr.predict(x)
        k = sfr.kernel(x, x)
    assert mean.shape == var.shape == (20,) and k.shape == (20, 20)
    assert not mean.requires_grad and not var.requires_grad
    with torch.inference_mode():
        m2, v2 = sfr.predict(x)
    torch.testing.assert_close((m2, v2), (mean, var), rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in [*net.parameters(), *sfr.parameters()])
