"""KLA filter numerics: parallel scan vs the sequential reference vs an independent textbook Kalman filter."""

from __future__ import annotations

import math

import pytest
import torch

from world_models.kla import (
    associative_scan,
    kla_filter,
    kla_scan,
    kla_scan_reference,
    kla_scan_torch,
    posterior,
    resolve_backend,
)
from world_models.kla import triton_kernels as tk
from world_models.kla.scan import _affine_combine, _mobius_combine

F64 = torch.float64


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error: max |x - ref| / max(1, max |ref|)."""
    return float((x - ref).detach().abs().max() / ref.detach().abs().max().clamp_min(1.0))


def random_problem(bsz, length, dshape, dtype=F64, seed=0, batched_params=False):
    g = torch.Generator().manual_seed(seed)
    pshape = (bsz, *dshape) if batched_params else dshape

    def u(shape, lo, hi):
        return (torch.rand(shape, generator=g, dtype=F64) * (hi - lo) + lo).to(dtype)

    phi = u((bsz, length, *dshape), 0.0, 2.0)
    r = torch.randn((bsz, length, *dshape), generator=g, dtype=F64).to(dtype)
    a = u(pshape, 0.2, 1.0)
    p = u(pshape, 1e-3, 0.5)
    lam0 = u((bsz, *dshape), 0.3, 3.0)
    eta0 = torch.randn((bsz, *dshape), generator=g, dtype=F64).to(dtype)
    return phi, r, a, p, lam0, eta0


def textbook_kf(y, rho, h, a, p, mu0, P0):
    """Covariance-form Kalman filter, one scalar system per element, written from the textbook:
    predict mu- = a mu, P- = a^2 P + p; update S = h^2 P- + R, K = P- h / S, mu = mu- + K (y - h mu-),
    P = (1 - K h) P-.  ``y`` NaN (or ``rho == 0``) means no observation: the update is skipped.
    Shapes: y, rho, h (B, L, *D); a, p broadcast to (B, *D); mu0, P0 (B, *D)."""
    mu, P = mu0.clone(), P0.clone()
    mus, Ps = [], []
    for t in range(y.shape[1]):
        mu_pred = a * mu
        P_pred = a * a * P + p
        yt, rt, ht = y[:, t], rho[:, t], h[:, t]
        observed = ~torch.isnan(yt) & (rt > 0)
        R = 1.0 / torch.where(observed, rt, torch.ones_like(rt))
        S = ht * ht * P_pred + R
        K = P_pred * ht / S
        mu_upd = mu_pred + K * (torch.where(observed, yt, torch.zeros_like(yt)) - ht * mu_pred)
        P_upd = (1.0 - K * ht) * P_pred
        mu = torch.where(observed, mu_upd, mu_pred)
        P = torch.where(observed, P_upd, P_pred)
        mus.append(mu)
        Ps.append(P)
    return torch.stack(mus, 1), torch.stack(Ps, 1)


# ----------------------------------------------------------------------------------------------------------
# Worked example, solved by hand
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "scan"])
def test_worked_example(backend):
    v = torch.tensor([2.0, 2.0, -2.0], dtype=F64).view(1, 3, 1)
    prec = torch.tensor([1.0, 2.0, 1.0], dtype=F64).view(1, 3, 1)
    k = torch.tensor([1.0, 1.0, 0.5], dtype=F64).view(1, 3, 1)
    out = kla_filter(v, prec, k, 0.5, 0.25, backend=backend)
    torch.testing.assert_close(out.lam.flatten(), torch.tensor([3.0, 5.0, 3.583333333333333], dtype=F64))
    torch.testing.assert_close(out.eta.flatten(), torch.tensor([2.0, 5.0, 2.0 / 3.0], dtype=F64))
    torch.testing.assert_close(out.mean.flatten(), torch.tensor([2 / 3, 1.0, 0.18604651162790697], dtype=F64))
    torch.testing.assert_close(out.var.flatten(), torch.tensor([1 / 3, 0.2, 0.27906976744186046], dtype=F64))


def test_worked_example_leaf_products():
    # textbook leaves (unscaled): M1 = [[5,1],[1,1]], M2 = [[6,2],[1,1]]; M2 M1 = [[32,8],[6,2]], lam_2 = 5.
    m1 = tuple(torch.tensor([x], dtype=F64) for x in (5.0, 1.0, 1.0, 1.0))
    m2 = tuple(torch.tensor([x], dtype=F64) for x in (6.0, 2.0, 1.0, 1.0))
    pa, pb, pc, pd = _mobius_combine(m1, m2)
    scale = 34.0  # trace of [[32, 8], [6, 2]]
    torch.testing.assert_close(torch.cat([pa, pb, pc, pd]) * scale, torch.tensor([32.0, 8.0, 6.0, 2.0], dtype=F64))
    assert float((pa * 1.0 + pb) / (pc * 1.0 + pd)) == pytest.approx(5.0, rel=1e-14)


# ----------------------------------------------------------------------------------------------------------
# Parallel scan == sequential reference (float64, tight)
# ------------------------------------------------------------------------------------------------------------
CASES = [
    (2, 1, (3, 4)),
    (1, 2, (5,)),
    (3, 3, (2, 3)),
    (2, 7, (4, 2)),
    (2, 16, (3, 5)),
    (1, 31, (6,)),
    (2, 64, (2, 2)),
    (2, 65, (3, 3)),
    (1, 127, (4, 8)),
    (2, 1000, (3, 2)),
    (1, 4096, (2,)),
]


@pytest.mark.parametrize("bsz,length,dshape", CASES)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_scan_matches_reference_float64(bsz, length, dshape, chunk):
    phi, r, a, p, lam0, eta0 = random_problem(bsz, length, dshape, seed=length)
    lam_ref, eta_ref = kla_scan(phi, r, a, p, lam0, eta0, backend="reference")
    n = math.prod(dshape)
    lam, eta = kla_scan_torch(
        phi.reshape(bsz, length, n), r.reshape(bsz, length, n), a.reshape(n), p.reshape(n),
        lam0.reshape(bsz, n), eta0.reshape(bsz, n), chunk=chunk,
    )  # fmt: skip
    assert lam.shape == (bsz, length, n) and eta.shape == (bsz, length, n)
    assert rel_err(lam.reshape(lam_ref.shape), lam_ref) < 1e-10
    assert rel_err(eta.reshape(eta_ref.shape), eta_ref) < 1e-10


@pytest.mark.parametrize("length", [1, 9, 100])
def test_dispatch_scan_with_batched_params_and_scalars(length):
    phi, r, a, p, lam0, eta0 = random_problem(3, length, (2, 3), seed=7, batched_params=True)
    for args in [(a, p, lam0, eta0), (0.7, 0.1, 2.0, -0.5), (a[:1], p, lam0[0], eta0)]:
        ref = kla_scan(phi, r, *args, backend="reference")
        out = kla_scan(phi, r, *args, backend="scan")
        assert rel_err(out[0], ref[0]) < 1e-10 and rel_err(out[1], ref[1]) < 1e-10


def test_float32_scan_stays_close_to_float64_reference_on_long_sequences():
    phi, r, a, p, lam0, eta0 = random_problem(2, 4096, (4,), seed=3)
    a = 0.9 + 0.0999 * torch.rand(4, dtype=F64)  # slow dynamics: the hard case for float32
    lam_ref, eta_ref = kla_scan_reference(phi, r, a, p, lam0, eta0)
    lam, eta = kla_scan(*(x.float() for x in (phi, r, a, p, lam0, eta0)), backend="scan")
    mu, mu_ref = posterior(lam.double(), eta.double())[0], posterior(lam_ref, eta_ref)[0]
    assert rel_err(lam.double(), lam_ref) < 1e-5
    assert rel_err(mu, mu_ref) < 1e-4


def test_split_and_carry_equals_one_pass():
    phi, r, a, p, lam0, eta0 = random_problem(2, 50, (3, 2), seed=11)
    lam, eta = kla_scan(phi, r, a, p, lam0, eta0, backend="scan")
    l1, e1 = kla_scan(phi[:, :23], r[:, :23], a, p, lam0, eta0, backend="scan")
    l2, e2 = kla_scan(phi[:, 23:], r[:, 23:], a, p, l1[:, -1], e1[:, -1], backend="scan")
    assert rel_err(torch.cat([l1, l2], 1), lam) < 1e-12
    assert rel_err(torch.cat([e1, e2], 1), eta) < 1e-12


# ----------------------------------------------------------------------------------------------------------
# Generic associative scan
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13, 64, 100])
def test_associative_scan_affine_matches_loop(n):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(3, n, 2, generator=g, dtype=F64) + 0.5
    b = torch.randn(3, n, 2, generator=g, dtype=F64)
    ga, gb = associative_scan(_affine_combine, (a, b), dim=1)
    x = torch.zeros(3, 2, dtype=F64)
    prod = torch.ones(3, 2, dtype=F64)
    for t in range(n):
        x = a[:, t] * x + b[:, t]
        prod = prod * a[:, t]
        assert torch.allclose(gb[:, t], x, rtol=1e-12, atol=1e-12)
        assert torch.allclose(ga[:, t], prod, rtol=1e-12, atol=1e-12)


def test_associative_scan_other_dims():
    a = torch.rand(5, 7, dtype=F64) + 0.5
    b = torch.randn(5, 7, dtype=F64)
    ga, gb = associative_scan(_affine_combine, (a, b), dim=0)
    ga_t, gb_t = associative_scan(_affine_combine, (a.T, b.T), dim=-1)
    torch.testing.assert_close(ga, ga_t.T)
    torch.testing.assert_close(gb, gb_t.T)
    torch.testing.assert_close(ga, torch.cumprod(a, 0))


def test_mobius_combine_is_associative_in_action():
    g = torch.Generator().manual_seed(0)
    mats = [tuple(torch.rand(10, generator=g, dtype=F64) + 0.1 for _ in range(4)) for _ in range(3)]
    left = _mobius_combine(_mobius_combine(mats[0], mats[1]), mats[2])
    right = _mobius_combine(mats[0], _mobius_combine(mats[1], mats[2]))
    lam0 = torch.rand(10, generator=g, dtype=F64) + 0.5
    act = [(m[0] * lam0 + m[1]) / (m[2] * lam0 + m[3]) for m in (left, right)]
    torch.testing.assert_close(act[0], act[1], rtol=1e-13, atol=0)
    for x, y in zip(left, right):  # trace-normalised, so the entries agree too
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------------------------
# Linear-Gaussian special case == textbook covariance-form Kalman filter
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "scan"])
def test_elementwise_filter_equals_textbook_kalman(backend):
    g = torch.Generator().manual_seed(5)
    bsz, length, n = 3, 40, 6
    y = torch.randn(bsz, length, n, generator=g, dtype=F64) * 2
    rho = torch.rand(bsz, length, n, generator=g, dtype=F64) * 3 + 0.05
    h = torch.randn(bsz, length, n, generator=g, dtype=F64)
    a = torch.rand(n, generator=g, dtype=F64) * 1.2 + 0.1  # includes a > 1 (unstable but observed)
    p = torch.rand(n, generator=g, dtype=F64) * 0.5 + 1e-3
    mu0 = torch.randn(bsz, n, generator=g, dtype=F64)
    P0 = torch.rand(bsz, n, generator=g, dtype=F64) * 2 + 0.1
    mu_kf, P_kf = textbook_kf(y, rho, h, a, p, mu0, P0)
    lam, eta = kla_scan(rho * h * h, rho * h * y, a, p, 1.0 / P0, mu0 / P0, backend=backend)
    mu, var = posterior(lam, eta)
    assert rel_err(mu, mu_kf) < 1e-10
    assert rel_err(var, P_kf) < 1e-10


@pytest.mark.parametrize("backend", ["reference", "scan"])
def test_kla_filter_equals_textbook_kalman(backend):
    # KLA's observation model: channel m's value observes every lane (m, s) through the key k[s].
    g = torch.Generator().manual_seed(6)
    bsz, length, m, s = 2, 33, 3, 4
    v = torch.randn(bsz, length, m, generator=g, dtype=F64)
    prec = torch.rand(bsz, length, m, generator=g, dtype=F64) * 4 + 0.1
    k = torch.randn(bsz, length, s, generator=g, dtype=F64)
    q = torch.randn(bsz, length, s, generator=g, dtype=F64)
    a = torch.rand(m, s, generator=g, dtype=F64) * 0.8 + 0.2
    p = torch.rand(m, s, generator=g, dtype=F64) * 0.3 + 1e-3
    out = kla_filter(v, prec, k, a, p, q=q, backend=backend)
    shape = (bsz, length, m, s)
    mu_kf, P_kf = textbook_kf(
        v.unsqueeze(-1).expand(shape), prec.unsqueeze(-1).expand(shape), k.unsqueeze(2).expand(shape),
        a, p, torch.zeros(bsz, m, s, dtype=F64), torch.ones(bsz, m, s, dtype=F64),
    )  # fmt: skip
    assert rel_err(out.mean, mu_kf) < 1e-10
    assert rel_err(out.var, P_kf) < 1e-10
    y_ref = (mu_kf * q.unsqueeze(2)).sum(-1)
    yv_ref = (P_kf * (q * q).unsqueeze(2)).sum(-1)
    assert rel_err(out.y, y_ref) < 1e-10 and rel_err(out.y_var, yv_ref) < 1e-10


# ----------------------------------------------------------------------------------------------------------
# Missing observations: NaN skips the update (documented behaviour)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "scan"])
def test_nan_observation_skips_update(backend):
    g = torch.Generator().manual_seed(9)
    bsz, length, m, s = 2, 30, 3, 2
    v = torch.randn(bsz, length, m, generator=g, dtype=F64)
    missing = torch.rand(bsz, length, m, generator=g) < 0.3
    missing[:, :4] = True  # a run of missing steps at the start, including t = 0
    v = v.masked_fill(missing, float("nan"))
    prec = torch.rand(bsz, length, m, generator=g, dtype=F64) + 0.5
    k = torch.randn(bsz, length, s, generator=g, dtype=F64)
    a = torch.rand(m, s, generator=g, dtype=F64) * 0.5 + 0.5
    p = torch.rand(m, s, generator=g, dtype=F64) * 0.2 + 0.01
    out = kla_filter(v, prec, k, a, p, backend=backend)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.var).all()
    shape = (bsz, length, m, s)
    mu_kf, P_kf = textbook_kf(
        v.unsqueeze(-1).expand(shape), prec.unsqueeze(-1).expand(shape), k.unsqueeze(2).expand(shape),
        a, p, torch.zeros(bsz, m, s, dtype=F64), torch.ones(bsz, m, s, dtype=F64),
    )  # fmt: skip
    assert rel_err(out.mean, mu_kf) < 1e-10
    assert rel_err(out.var, P_kf) < 1e-10
    # During the all-missing prefix the belief only predicts: P_t = a^2 P_{t-1} + p from P_0 = 1.
    P = torch.ones(m, s, dtype=F64)
    for t in range(4):
        P = a * a * P + p
        torch.testing.assert_close(out.var[:, t], P.expand(bsz, m, s))


@pytest.mark.parametrize("backend", ["reference", "scan"])
def test_nan_in_information_increments_is_masked_with_zero_gradient(backend):
    phi, r, a, p, lam0, eta0 = random_problem(2, 20, (3,), seed=2)
    holes = torch.rand(phi.shape, generator=torch.Generator().manual_seed(1)) < 0.25
    phi_nan = phi.masked_fill(holes, float("nan")).requires_grad_()
    r_nan = r.masked_fill(holes, float("nan")).requires_grad_()
    lam, eta = kla_scan(phi_nan, r_nan, a, p, lam0, eta0, backend=backend)
    lam_ref, eta_ref = kla_scan_reference(phi.masked_fill(holes, 0), r.masked_fill(holes, 0), a, p, lam0, eta0)
    assert rel_err(lam, lam_ref) < 1e-12 and rel_err(eta, eta_ref) < 1e-12
    (lam.sum() + eta.sum()).backward()
    assert torch.isfinite(phi_nan.grad).all() and torch.isfinite(r_nan.grad).all()
    assert (phi_nan.grad[holes] == 0).all() and (r_nan.grad[holes] == 0).all()
    assert (r_nan.grad[~holes] != 0).any()


def test_nan_propagates_when_masking_is_off():
    phi, r, a, p, lam0, eta0 = random_problem(1, 5, (2,), seed=2)
    r[0, 2, 0] = float("nan")
    _, eta = kla_scan(phi, r, a, p, lam0, eta0, backend="scan", mask_nan=False)
    assert torch.isnan(eta[0, 2:, 0]).all() and torch.isfinite(eta[0, :, 1]).all()


# ----------------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,chunk", [("reference", None), ("scan", None), ("scan", 1), ("scan", 2)])
@pytest.mark.parametrize("length", [1, 5, 17])
def test_gradcheck(backend, chunk, length):
    phi, r, a, p, lam0, eta0 = random_problem(2, length, (3,), seed=length)
    phi = phi * 0.5 + 0.1  # keep phi > 0 under finite-difference perturbations
    inputs = tuple(x.clone().requires_grad_() for x in (phi, r, a, p, lam0, eta0))

    def fn(*xs):
        if backend == "reference":
            return kla_scan_reference(*xs)
        return kla_scan_torch(*xs, chunk=chunk)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_scan_gradients_match_reference():
    phi, r, a, p, lam0, eta0 = random_problem(2, 60, (4,), seed=4)
    g = torch.Generator().manual_seed(0)
    w_lam, w_eta = (
        torch.randn(phi.shape, generator=g, dtype=F64),
        torch.randn(phi.shape, generator=g, dtype=F64),
    )
    grads = {}
    for backend in ("reference", "scan"):
        xs = [x.clone().requires_grad_() for x in (phi, r, a, p, lam0, eta0)]
        lam, eta = kla_scan(*xs, backend=backend)
        grads[backend] = torch.autograd.grad((lam * w_lam).sum() + (eta * w_eta).sum(), xs)
    for gs, gr in zip(grads["scan"], grads["reference"]):
        assert rel_err(gs, gr) < 1e-10


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------
def _good():
    return dict(zip(("phi", "r", "a", "p", "lam0", "eta0"), random_problem(2, 6, (3, 2), seed=1)))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda d: d.update(lam0=torch.zeros_like(d["lam0"])), "lam0"),
        (lambda d: d.update(lam0=-1.0), "lam0"),
        (lambda d: d["lam0"].__setitem__((0, 1, 1), -0.5), "lam0"),
        (lambda d: d["lam0"].__setitem__((0, 1, 1), float("nan")), "lam0"),
        (lambda d: d.update(r=d["r"][:, :5]), "r has shape"),
        (lambda d: d.update(a=torch.rand(4, 2, dtype=F64)), "a has shape"),
        (lambda d: d.update(lam0=torch.ones(5, 3, 2, dtype=F64)), "lam0 has shape"),
        (lambda d: d.update(r=d["r"].float()), "r has dtype"),
        (lambda d: d.update(a=d["a"].float()), "a has dtype"),
        (lambda d: d.update(eta0=d["eta0"].float()), "eta0 has dtype"),
        (lambda d: d.update(p=-d["p"]), "p \\(process-noise"),
        (lambda d: d.update(a=torch.zeros_like(d["a"]), p=torch.zeros_like(d["p"])), "a and p"),
        (lambda d: d["phi"].__setitem__((0, 0, 0, 0), -1.0), "phi"),
        (lambda d: d.update(phi=d["phi"][0, 0, 0]), "phi must have shape"),
        (lambda d: d.update(phi=d["phi"].long(), r=d["r"].long()), "phi must be a floating"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    d = _good()
    change(d)
    with pytest.raises(ValueError, match=match):
        kla_scan(d["phi"], d["r"], d["a"], d["p"], d["lam0"], d["eta0"], backend="scan")


def test_bad_observation_inputs():
    v = torch.randn(2, 5, 3, dtype=F64)
    prec = torch.rand(2, 5, 3, dtype=F64)
    k = torch.randn(2, 5, 4, dtype=F64)
    a, p = torch.full((3, 4), 0.9, dtype=F64), torch.full((3, 4), 0.1, dtype=F64)
    with pytest.raises(ValueError, match="v must be"):
        kla_filter(v[0], prec, k, a, p)
    with pytest.raises(ValueError, match="obs_precision has shape"):
        kla_filter(v, prec[:, :, :2], k, a, p)
    with pytest.raises(ValueError, match="obs_precision must be >= 0"):
        kla_filter(v, -prec, k, a, p)
    with pytest.raises(ValueError, match="k has shape"):
        kla_filter(v, prec, k[:, :4], a, p)
    with pytest.raises(ValueError, match="k has dtype"):
        kla_filter(v, prec, k.float(), a, p)
    with pytest.raises(ValueError, match="q has shape"):
        kla_filter(v, prec, k, a, p, q=k[..., :2])
    with pytest.raises(ValueError, match="a has shape"):
        kla_filter(v, prec, k, torch.full((4, 3), 0.9, dtype=F64), p)


def test_backend_selection():
    x = torch.zeros(1, 2, 3)
    assert resolve_backend("auto", x) == "scan"  # CPU tensors never take the kernel path automatically
    assert resolve_backend("reference", x) == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", x)
    if not tk.HAS_TRITON:
        with pytest.raises(ValueError, match="triton is not installed"):
            resolve_backend("triton", x)
    elif not tk.INTERPRET:
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            kla_scan(x, x, 0.5, 0.1, backend="triton")


def test_empty_sequence():
    phi = torch.zeros(2, 0, 3, dtype=F64)
    for backend in ("reference", "scan"):
        lam, eta = kla_scan(phi, phi, 0.5, 0.1, backend=backend)
        assert lam.shape == (2, 0, 3) and eta.shape == (2, 0, 3)
