"""Tests for agents/planning.py (MPPI).

Most tests use a scalar linear-quadratic (LQ) problem whose optimal first action is known in closed form:

    x' = x + a,   r(x, a) = -(x² + c·a²),   terminal value V(x) = -P·x².

With discount ρ, guess V(x) = -P x². The Bellman equation
    -P x² = max_a [ -(x² + c a²) - ρ P (x + a)² ]
has maximiser a* = -K x with K = ρP / (c + ρP) (set the derivative -2ca - 2ρP(x+a) to zero), and
substituting back gives P = 1 + ρ P c / (c + ρP)  (equivalently P = 1 + ρP − ρ²P² / (c + ρP)),
i.e. the positive root of ρP² + (c − ρ − ρc)P − c = 0. Because V is the fixed point, the H-step planning
objective J = Σ_{h<H} ρ^h r_h + ρ^H V(x_H) has the same stationary first action a* = -K x for every H.
The test verifies this numerically three ways (value iteration, a grid search over the action in the
Bellman equation, and solving the quadratic J exactly) before using it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from agents.planning import MPPIConfig, MPPIPlanner, rollout_uncertainty

C = 3.0  # action cost; large enough that horizon and terminal value visibly change the first action
RHO = 0.9
STATES = [-1.5, -0.7, 0.4, 1.2]  # |a*| <= 0.6: the [-1, 1] bounds never bind


def riccati_p(c: float, rho: float) -> float:
    """Positive root of ρP² + (c − ρ − ρc)P − c = 0."""
    b = c - rho - rho * c
    return (-b + math.sqrt(b * b + 4 * rho * c)) / (2 * rho)


def first_gain(c: float, weights: list[float], terminal: float) -> float:
    """Optimal first-action gain K_0 (a_0 = -K_0 x) of max Σ_h w_h r_h − terminal·x_H², by backward DP:
    V_h(x) = -W_h x², W_H = terminal, W_h = w_h + W_{h+1} w_h c / (w_h c + W_{h+1})."""
    w_next = terminal
    for h in reversed(range(1, len(weights))):
        w_h = weights[h]
        w_next = w_h + w_next * w_h * c / (w_h * c + w_next)
    return w_next / (weights[0] * c + w_next)


P_STAR = riccati_p(C, RHO)
K_STAR = RHO * P_STAR / (C + RHO * P_STAR)


class LQModel:
    """PlanningModel for the LQ problem; latent = state x, shape [N, 1]."""

    def __init__(self, c: float = C, p: float = P_STAR, prior: str = "bad", prior_noise: float = 0.0):
        self.c, self.p, self.prior, self.prior_noise = c, p, prior, prior_noise
        self.gen = torch.Generator().manual_seed(123)  # model-side noise is the model's own business
        self.policy_inputs: list[torch.Tensor] = []
        self.reward_actions: list[torch.Tensor] = []

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return z + a

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        self.reward_actions.append(a.clone())
        return -(z**2 + self.c * a**2).sum(-1)

    def value(self, z: torch.Tensor) -> torch.Tensor:
        return -self.p * (z**2).sum(-1)

    def policy(self, z: torch.Tensor) -> torch.Tensor:
        self.policy_inputs.append(z.clone())
        if self.prior == "optimal":
            a = -K_STAR * z
        else:  # a deliberately bad prior: always push hard to the right
            a = torch.full_like(z, 0.9)
        return a + self.prior_noise * torch.randn(a.shape, generator=self.gen)


class UncertainLQModel(LQModel):
    """Uncertainty is large for positive actions."""

    def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return 5.0 * a.clamp(min=0).sum(-1)


def q_value(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """True optimal action value of taking a in x, then acting optimally forever."""
    return -(x**2 + C * a**2) - RHO * P_STAR * (x + a) ** 2


PRECISE = MPPIConfig(iterations=8, num_samples=1024, num_elites=64, num_pi_trajs=0, min_std=0.01, discount=RHO)
# The executed action is the first action of one elite drawn by score, so it scatters around the final mean by
# about the last round's sampling std (min_std = 0.01 here); the final mean is tighter. Tests assert both, each
# with a tolerance set well above that std.
ACT_TOL, MEAN_TOL = 0.02, 0.005


def states() -> torch.Tensor:
    return torch.tensor(STATES).unsqueeze(1)


def plan(cfg: MPPIConfig, x: torch.Tensor, model: LQModel, seed: int = 0, **kw) -> torch.Tensor:
    return plan_and_mean(cfg, x, model, seed, **kw)[0]


def plan_and_mean(
    cfg: MPPIConfig, x: torch.Tensor, model: LQModel, seed: int = 0, **kw
) -> tuple[torch.Tensor, torch.Tensor]:
    """The executed action ``[B, A]`` and the first step ``[B, A]`` of the planner's final mean."""
    planner = MPPIPlanner(cfg, action_dim=1, device="cpu")
    a = planner.plan(x, model, generator=torch.Generator().manual_seed(seed), **kw)
    mean = planner.prev_mean(eval_mode=kw.get("eval_mode", False))
    assert mean is not None
    return a, mean[:, 0]


# --------------------------------------------------------------------------- (a) LQ optimum
def test_lq_reference_solution_is_correct() -> None:
    # value iteration from V = 0 converges to the closed-form P
    p = 0.0
    for _ in range(500):
        p = 1 + RHO * p * C / (C + RHO * p)
    assert p == pytest.approx(P_STAR, rel=1e-10)
    # the Bellman equation holds on a fine action grid, with argmax -K x
    grid = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    for x0 in STATES:
        x = torch.tensor(x0, dtype=torch.float64)
        q = q_value(x, grid)
        assert q.max().item() == pytest.approx(-P_STAR * x0**2, abs=1e-8)
        assert grid[q.argmax()].item() == pytest.approx(-K_STAR * x0, abs=2e-5)
    # the planner's own objective J (H = 3, terminal ρ³V) is maximised at a_0 = -K x: solve the quadratic
    model = LQModel()
    for x0 in STATES:

        def j(acts: torch.Tensor, x0: float = x0) -> torch.Tensor:
            x = torch.tensor([[x0]], dtype=torch.float64)
            total = torch.zeros((), dtype=torch.float64)
            for h in range(3):
                a = acts[h].view(1, 1)
                total = total + RHO**h * model.reward(x, a).sum()
                x = model.next(x, a)
            return total + RHO**3 * model.value(x).sum()

        zero = torch.zeros(3, dtype=torch.float64)
        grad = torch.autograd.functional.jacobian(j, zero)
        hess = torch.autograd.functional.hessian(j, zero)
        opt = -torch.linalg.solve(hess, grad)
        assert opt[0].item() == pytest.approx(-K_STAR * x0, abs=1e-9)
    assert first_gain(C, [RHO**h for h in range(3)], RHO**3 * P_STAR) == pytest.approx(K_STAR, abs=1e-12)


def test_lq_tolerance_separates_wrong_objectives() -> None:
    """Honesty check: the tolerance used below is tight enough to catch a planner that drops the
    terminal value or leaves the rewards undiscounted. (A wrong exponent on the terminal discount moves
    a* by < 0.01 here, too little for MPPI tolerances; test_estimate_value_formula catches that exactly.)"""
    wrong = {
        "no terminal value": first_gain(C, [RHO**h for h in range(3)], 0.0),
        "undiscounted": first_gain(C, [1.0] * 3, riccati_p(C, 1.0 - 1e-12)),
        "rewards undiscounted": first_gain(C, [1.0] * 3, RHO**3 * P_STAR),
    }
    x_max = max(abs(s) for s in STATES)
    for name, k in wrong.items():
        assert abs(k - K_STAR) * x_max > 2 * 0.02, name


@pytest.mark.parametrize("seed", [0, 1])
def test_lq_precise_config_finds_optimal_first_action(seed: int) -> None:
    x = states()
    a, mean = plan_and_mean(PRECISE, x, LQModel(), seed=seed)
    assert a.shape == (len(STATES), 1)
    # the final MPPI mean sits on the closed-form optimum a* = -K x ...
    err_mean = (mean - (-K_STAR * x)).abs().max().item()
    assert err_mean < MEAN_TOL, err_mean
    # ... and the executed action (an elite drawn by score) is within the draw's scatter of it
    err = (a - (-K_STAR * x)).abs().max().item()
    assert err < ACT_TOL, err


def test_lq_bad_prior_does_not_spoil_the_optimum() -> None:
    x = states()
    cfg = dataclasses.replace(PRECISE, num_pi_trajs=24)
    a, mean = plan_and_mean(cfg, x, LQModel(prior="bad", prior_noise=0.1))
    assert (mean - (-K_STAR * x)).abs().max().item() < MEAN_TOL
    assert (a - (-K_STAR * x)).abs().max().item() < ACT_TOL


def test_lq_default_config_gets_close() -> None:
    x = states()
    cfg = MPPIConfig()  # defaults: elite drawn by score, discount 0.9 = RHO, 24 (bad) prior trajectories
    assert cfg.discount == RHO
    runs = [plan_and_mean(cfg, x, LQModel(), seed=s) for s in range(5)]
    errs = torch.stack([(a - (-K_STAR * x)).abs() for a, _ in runs])
    assert errs.max().item() < 0.06, errs.max().item()
    assert errs.mean().item() < 0.03, errs.mean().item()
    # the final mean, which the executed elite scatters around, is tighter
    mean_errs = torch.stack([(m - (-K_STAR * x)).abs() for _, m in runs])
    assert mean_errs.max().item() < 0.02, mean_errs.max().item()


# --------------------------------------------------------------------------- (b) policy prior
def test_optimal_prior_is_found_exactly_with_one_elite() -> None:
    x = states()
    cfg = MPPIConfig(iterations=2, num_samples=16, num_elites=1, num_pi_trajs=4, discount=RHO)
    model = LQModel(prior="optimal")
    a = plan(cfg, x, model)
    # the prior rollout is the exact maximiser of J, so it is the single elite in every round
    torch.testing.assert_close(a, -K_STAR * x, rtol=0, atol=1e-6)
    # and the policy was rolled out through the model: H calls on B·P rows, env-major
    assert len(model.policy_inputs) == 3
    assert model.policy_inputs[0].shape == (len(STATES) * 4, 1)
    torch.testing.assert_close(model.policy_inputs[0], x.repeat_interleave(4, dim=0))
    torch.testing.assert_close(model.policy_inputs[1], x.repeat_interleave(4, dim=0) * (1 - K_STAR))


def test_optimal_prior_helps_with_few_samples() -> None:
    x = states()
    few = MPPIConfig(iterations=2, num_samples=16, num_elites=4, discount=RHO)
    regrets = {}
    for name, cfg, prior in [
        ("optimal prior", dataclasses.replace(few, num_pi_trajs=8), "optimal"),
        ("no prior", dataclasses.replace(few, num_pi_trajs=0), "bad"),
        ("bad prior", dataclasses.replace(few, num_pi_trajs=8), "bad"),
    ]:
        total = 0.0
        for seed in range(10):
            a = plan(cfg, x, LQModel(prior=prior, prior_noise=0.02), seed=seed)
            total += (q_value(x, -K_STAR * x) - q_value(x, a)).mean().item()
        regrets[name] = total / 10
    assert regrets["optimal prior"] <= regrets["no prior"], regrets
    assert regrets["optimal prior"] <= regrets["bad prior"], regrets
    assert regrets["optimal prior"] < 0.5 * regrets["no prior"], regrets


def test_prior_sequences_join_the_pool_each_with_its_own_noise() -> None:
    x, p, s = states(), 4, 16
    b = len(STATES)
    cfg = MPPIConfig(iterations=1, num_samples=s, num_elites=8, num_pi_trajs=p, discount=RHO)
    model = LQModel(prior="optimal", prior_noise=0.1)
    planner = MPPIPlanner(cfg, action_dim=1)
    a = planner.plan(x, model, generator=torch.Generator().manual_seed(0))
    # one rollout per prior trajectory: H policy calls on B·P rows
    assert [z.shape for z in model.policy_inputs] == [(b * p, 1)] * cfg.horizon
    acts = torch.stack(model.reward_actions, dim=1).view(b, p + s, cfg.horizon, 1)
    prior = acts[:, :p]
    # every prior sequence carries its own noise (the public code's broadcast noise would make them identical)
    assert (prior - prior[:, :1]).abs().amax(dim=(2, 3))[:, 1:].min() > 1e-4
    # the refit counts them as pool members: the stored mean is the refit over prior + sampled sequences ...
    elites, _, mean, _ = reference_iteration(x, acts, cfg)
    prev = planner.prev_mean()
    assert prev is not None
    torch.testing.assert_close(prev, mean)
    # ... where the near-optimal prior sequences take elite slots
    is_prior = (elites.unsqueeze(2) == prior.unsqueeze(1)).flatten(3).all(-1).any(-1)  # [B, K]
    assert is_prior.any(dim=1).all()
    # the executed action is the first action of one of the elites
    assert torch.isclose(elites[:, :, 0, 0], a).any(dim=1).all()


def reference_iteration(x: torch.Tensor, acts: torch.Tensor, cfg: MPPIConfig):
    """One MPPI refit written out from the equations, on the sampled sequences acts [B, S, H, 1]."""
    b, s, h_, _ = acts.shape
    xs = x.unsqueeze(1).expand(b, s, 1).clone()
    j = torch.zeros(b, s)
    for h in range(h_):
        a = acts[:, :, h]
        j += cfg.discount**h * -(xs**2 + C * a**2).squeeze(-1)
        xs = xs + a
    j += cfg.discount**h_ * -P_STAR * (xs**2).squeeze(-1)
    top, idx = j.topk(cfg.num_elites, dim=1)
    elites = torch.stack([acts[i, idx[i]] for i in range(b)])  # [B, K, H, 1]
    score = torch.exp(cfg.temperature * (top - top.max(dim=1, keepdim=True).values))
    score = score / score.sum(dim=1, keepdim=True)
    mean = (score[:, :, None, None] * elites).sum(1)
    std = (score[:, :, None, None] * (elites - mean.unsqueeze(1)) ** 2).sum(1).sqrt()
    return elites, score, mean, std.clamp(cfg.min_std, cfg.max_std)


def test_one_iteration_matches_the_equations() -> None:
    x = torch.tensor([[-1.0], [0.5]])
    cfg = MPPIConfig(
        horizon=2, iterations=1, num_samples=32, num_elites=8, num_pi_trajs=0, temperature=2.0,
        discount=RHO, max_std=0.8,
    )  # fmt: skip
    planner, model = MPPIPlanner(cfg, action_dim=1), LQModel()
    a = planner.plan(x, model, generator=torch.Generator().manual_seed(0))
    acts = torch.stack(model.reward_actions, dim=1).view(2, 32, 2, 1)
    assert acts.abs().max() <= 1.0
    elites, score, mean, std = reference_iteration(x, acts, cfg)
    assert score.max() > 2.0 / cfg.num_elites  # the scores are far from uniform: the weighting is tested
    prev = planner.prev_mean()
    assert prev is not None and planner.last_std is not None
    torch.testing.assert_close(prev, mean)
    torch.testing.assert_close(planner.last_std, std[:, 0])
    # the executed action is the first action of one of the elites (drawn by score: next test)
    assert torch.isclose(elites[:, :, 0, 0], a).any(dim=1).all()


def test_executed_elite_is_drawn_in_proportion_to_score() -> None:
    x = torch.tensor([[-1.0]])
    cfg = MPPIConfig(horizon=1, iterations=1, num_samples=8, num_elites=4, num_pi_trajs=0, temperature=3.0)
    picked_top, expected_top, n = 0.0, 0.0, 1000
    for seed in range(n):
        planner, model = MPPIPlanner(cfg, action_dim=1), LQModel()
        a = planner.plan(x, model, generator=torch.Generator().manual_seed(seed))
        acts = model.reward_actions[0].view(1, 8, 1, 1)
        elites, score, _, _ = reference_iteration(x, acts, cfg)
        first = elites[0, :, 0, 0]
        assert torch.isclose(first, a[0, 0]).any()  # the action is one of the elites' first actions
        match = torch.isclose(first, a[0, 0]).float()
        picked_top += (match[0] / match.sum()).item()
        expected_top += score[0, 0].item()
    # the best elite is chosen as often as its score says (binomial sd ≈ 0.015), not always (argmax)
    assert abs(picked_top - expected_top) / n < 0.06, (picked_top / n, expected_top / n)
    assert expected_top / n < 0.8


# --------------------------------------------------------------------------- (c) warm start
def test_warm_start_stores_plan_and_reset_clears_it() -> None:
    x = states()
    b = len(STATES)
    cfg = MPPIConfig(num_pi_trajs=0, max_std=0.3, min_std=0.01, discount=RHO)
    planner = MPPIPlanner(cfg, action_dim=1)
    assert planner.prev_mean() is None
    torch.testing.assert_close(planner.warm_start_mean(b), torch.zeros(b, 3, 1))

    a = planner.plan(x, LQModel(), generator=torch.Generator().manual_seed(0))
    prev = planner.prev_mean()
    assert prev is not None and prev.shape == (b, 3, 1)
    # the plan is the LQ optimum along the optimal path: a_0 = -K x, then a_1 = -K x_1 with x_1 = (1 - K) x;
    # the executed action is an elite's first action, close to the mean's
    torch.testing.assert_close(prev[:, 0], -K_STAR * x, rtol=0, atol=0.02)
    torch.testing.assert_close(a, prev[:, 0], rtol=0, atol=ACT_TOL)
    torch.testing.assert_close(prev[:, 1], -K_STAR * (1 - K_STAR) * x, rtol=0, atol=0.05)
    shifted = planner.warm_start_mean(b)
    torch.testing.assert_close(shifted[:, :-1], prev[:, 1:])
    torch.testing.assert_close(shifted[:, -1], torch.zeros(b, 1))
    assert planner.last_std is not None and planner.last_std.shape == (b, 1)

    # the next plan really starts from the shifted mean: first-round samples centre on it (σ = 0.3)
    model = LQModel()
    planner.plan(x, model, generator=torch.Generator().manual_seed(1))
    first_round = torch.stack(model.reward_actions[:3], dim=1).view(b, cfg.num_samples, 3, 1)
    torch.testing.assert_close(first_round.mean(dim=1), shifted, rtol=0, atol=0.05)

    # an eval plan uses its own slot
    train_prev = planner.prev_mean()
    planner.plan(-x, LQModel(), eval_mode=True, generator=torch.Generator().manual_seed(2))
    assert planner.prev_mean() is train_prev
    assert planner.prev_mean(eval_mode=True) is not None

    planner.reset()
    assert planner.prev_mean() is None and planner.prev_mean(eval_mode=True) is None
    torch.testing.assert_close(planner.warm_start_mean(b), torch.zeros(b, 3, 1))
    # a new episode's first round centres on zero again
    model = LQModel()
    planner.plan(x, model, generator=torch.Generator().manual_seed(3))
    first_round = torch.stack(model.reward_actions[:3], dim=1).view(b, cfg.num_samples, 3, 1)
    torch.testing.assert_close(first_round.mean(dim=1), torch.zeros(b, 3, 1), rtol=0, atol=0.05)


# --------------------------------------------------------------------------- (d) determinism, batching
def test_same_seed_same_action() -> None:
    x = states()
    cfg = MPPIConfig(discount=RHO)  # the elite draw also goes through the generator
    a1 = plan(cfg, x, LQModel(), seed=7)
    a2 = plan(cfg, x, LQModel(), seed=7)
    assert torch.equal(a1, a2)
    a3 = plan(cfg, x, LQModel(), seed=8)
    assert not torch.equal(a1, a3)


def test_batched_equals_separate_up_to_sampling() -> None:
    x = states()
    batched, batched_mean = plan_and_mean(PRECISE, x, LQModel(), seed=0)
    separate_runs = [plan_and_mean(PRECISE, x[i : i + 1], LQModel(), seed=10 + i) for i in range(len(STATES))]
    separate = torch.cat([a for a, _ in separate_runs])
    separate_mean = torch.cat([m for _, m in separate_runs])
    torch.testing.assert_close(batched_mean, separate_mean, rtol=0, atol=MEAN_TOL)
    torch.testing.assert_close(batched_mean, -K_STAR * x, rtol=0, atol=MEAN_TOL)
    torch.testing.assert_close(batched, separate, rtol=0, atol=ACT_TOL)
    torch.testing.assert_close(batched, -K_STAR * x, rtol=0, atol=ACT_TOL)


# --------------------------------------------------------------------------- (e) config validation
@pytest.mark.parametrize(
    "field, value",
    [
        ("horizon", 0),
        ("iterations", 0),
        ("num_samples", 0),
        ("num_elites", 0),
        ("num_elites", 512 + 24 + 1),
        ("num_pi_trajs", -1),
        ("min_std", 0.0),
        ("min_std", 3.0),  # > max_std
        ("max_std", 0.01),  # < min_std
        ("temperature", 0.0),
        ("discount", 0.0),
        ("discount", 1.5),
    ],
)
def test_invalid_config_raises(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        MPPIConfig(**{field: value})


def test_config_boundaries_are_valid() -> None:
    MPPIConfig(num_elites=512 + 24, discount=1.0, min_std=2.0, max_std=2.0, num_pi_trajs=0, num_samples=600)


def test_paper_size_agent_config_plans_with_the_dataclass_defaults() -> None:
    """configs/agent/dcmpc.yaml at paper size sets every MPPIConfig field (agent.planner) to exactly its default."""
    from training.setup import agent_settings, compose_config

    cfg = compose_config(["agent=dcmpc", "agent.size=paper", "device=cpu"])
    assert set(cfg.agent.planner) == {f.name for f in dataclasses.fields(MPPIConfig)}
    assert agent_settings(cfg).planner == MPPIConfig()


# --------------------------------------------------------------------------- (f) uncertainty term
def penalised_optimum(x0: float, coef: float) -> float:
    """Brute force: first action maximising J + coef·Σ_h ρ^h 5·max(a_h, 0) over a 3-D action grid."""
    g = torch.linspace(-0.4, 1.0, 141, dtype=torch.float64)  # step 0.01
    a0, a1, a2 = torch.meshgrid(g, g, g, indexing="ij")
    x, total = torch.full_like(a0, x0), torch.zeros_like(a0)
    for h, a in enumerate((a0, a1, a2)):
        total += RHO**h * (-(x**2 + C * a**2) + coef * 5.0 * a.clamp(min=0))
        x = x + a
    total += RHO**3 * -P_STAR * x**2
    return a0.flatten()[total.argmax()].item()


def test_caution_in_evaluation_and_optimism_in_training_shift_the_action() -> None:
    x = torch.tensor([[-1.5]])  # a* = +0.59: exactly where the uncertainty is large

    def first_step(coef: float, act_tol: float = ACT_TOL) -> float:
        """The final mean's first action for J + coef·U (caution in evaluation when coef < 0, optimism in
        training when coef > 0); the executed elite's lies within the draw's scatter of it."""
        cfg = dataclasses.replace(PRECISE, caution=max(-coef, 0.0), optimism=max(coef, 0.0))
        a, mean = plan_and_mean(cfg, x, UncertainLQModel(), eval_mode=coef < 0)
        assert (a - mean).abs().max().item() < act_tol, (coef, a, mean)
        return mean.item()

    # a penalty puts the optimum at or near the kink of max(a, 0), where the elites spread wider
    base, penal, bonus = first_step(0.0), first_step(-2.0, 0.03), first_step(0.1)
    assert base == pytest.approx(K_STAR * 1.5, abs=MEAN_TOL)
    assert penal < base - 0.4, (base, penal)
    assert bonus > base + 0.01, (base, bonus)
    # and the planner lands on the brute-force optimum of the penalised objective
    assert penal == pytest.approx(penalised_optimum(-1.5, -2.0), abs=0.03)
    assert first_step(-1.0, 0.03) == pytest.approx(penalised_optimum(-1.5, -1.0), abs=0.03)


def test_each_setting_applies_only_in_its_own_mode() -> None:
    """Optimism only shapes training plans and caution only evaluation plans: in the other mode the plan is
    exactly the plain planner's, and the uncertainty is never called."""
    x = torch.tensor([[-1.5]])

    class Counting(UncertainLQModel):
        calls = 0

        def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return super().uncertainty(z, a)

    for cfg, eval_mode in (
        (dataclasses.replace(PRECISE, optimism=0.5), True),
        (dataclasses.replace(PRECISE, caution=2.0), False),
    ):
        got = plan_and_mean(cfg, x, Counting(), eval_mode=eval_mode)
        plain = plan_and_mean(PRECISE, x, UncertainLQModel(), eval_mode=eval_mode)
        assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    assert Counting.calls == 0


@pytest.mark.parametrize("key", ["optimism", "caution"])
def test_negative_coefficients_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(ValueError, match=rf"MPPIConfig.{key} must be >= 0"):
        MPPIConfig(**{key: -0.1})


def test_uncertainty_needs_the_method_and_is_skipped_when_off() -> None:
    x = states()
    with pytest.raises(TypeError, match="uncertainty"):
        plan(MPPIConfig(caution=1.0), x, LQModel(), eval_mode=True)

    class Exploding(LQModel):
        def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            raise AssertionError("uncertainty must not be called when optimism == caution == 0")

    plan(MPPIConfig(iterations=1), x, Exploding())
    plan(MPPIConfig(iterations=1), x, Exploding(), eval_mode=True)


def test_rollout_uncertainty_is_the_mean_along_the_plan() -> None:
    model = UncertainLQModel()
    z = torch.tensor([[1.0], [-2.0]])
    acts = torch.tensor([[[0.5], [-1.0], [0.2]], [[0.25], [0.75], [-0.5]]])
    want = [sum(5.0 * max(acts[i, h, 0].item(), 0.0) for h in range(3)) / 3 for i in range(2)]
    torch.testing.assert_close(rollout_uncertainty(z, acts, model), torch.tensor(want))


def test_estimate_value_formula() -> None:
    cfg = MPPIConfig(horizon=2, discount=0.5, caution=2.0)
    planner = MPPIPlanner(cfg, action_dim=1)
    z = torch.tensor([[1.0], [-2.0]])
    acts = torch.tensor([[[0.5], [-1.0]], [[0.25], [0.75]]])
    model = UncertainLQModel(c=1.0, p=3.0)
    got = planner.estimate_value(z, acts, model, unc_coef=-2.0)
    want = []
    for i in range(2):
        x, j, u = z[i, 0].item(), 0.0, 0.0
        for h in range(2):
            a = acts[i, h, 0].item()
            j += 0.5**h * -(x**2 + a**2)
            u += 0.5**h * 5.0 * max(a, 0.0)
            x += a
        want.append(j + 0.5**2 * -3.0 * x**2 - 2.0 * u)
    torch.testing.assert_close(got, torch.tensor(want))


def test_a_model_with_uncertainty_alone_is_scored_once_per_rollout() -> None:
    """Steps without a ``next_and_uncertainty`` value are scored by one ``uncertainty`` call on all H·N rows; the
    value is the same as per-step scoring (the formula test above checks it against scalar arithmetic)."""

    class Counting(UncertainLQModel):
        def __init__(self) -> None:
            super().__init__(c=1.0, p=3.0)
            self.rows: list[int] = []

        def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            self.rows.append(z.shape[0])
            return super().uncertainty(z, a)

    class PerStep(UncertainLQModel):
        def next_and_uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.next(z, a), UncertainLQModel.uncertainty(self, z, a)

        def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            raise AssertionError("next_and_uncertainty gave every step's uncertainty")

    planner = MPPIPlanner(MPPIConfig(horizon=4, discount=0.7, optimism=1.5), action_dim=1)
    g = torch.Generator().manual_seed(0)
    z, acts = torch.randn(5, 1, generator=g), torch.rand(5, 4, 1, generator=g) * 2 - 1
    counting = Counting()
    once = planner.estimate_value(z, acts, counting, unc_coef=1.5)
    assert counting.rows == [4 * 5]
    per_step = planner.estimate_value(z, acts, PerStep(c=1.0, p=3.0), unc_coef=1.5)
    torch.testing.assert_close(once, per_step)
    torch.testing.assert_close(rollout_uncertainty(z, acts, counting), rollout_uncertainty(z, acts, PerStep()))
    assert counting.rows == [20, 20]


# --------------------------------------------------------------------------- misc contract
def test_bounds_shape_and_multi_dim_actions() -> None:
    class Linear:
        """Reward favours a = (+1, -1): optimum on the bounds."""

        def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return z

        def __init__(self) -> None:
            self.max_abs_action = 0.0

        def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            self.max_abs_action = max(self.max_abs_action, a.abs().max().item())
            return a[:, 0] - a[:, 1]

        def value(self, z: torch.Tensor) -> torch.Tensor:
            return torch.zeros(z.shape[0])

        def policy(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full((z.shape[0], 2), 5.0)  # out of bounds: must be clamped

    z = torch.zeros(3, 4, 2)  # latent of any shape
    model = Linear()
    a = MPPIPlanner(MPPIConfig(), action_dim=2).plan(z, model, generator=torch.Generator().manual_seed(0))
    assert model.max_abs_action <= 1.0  # samples (std 2) and prior actions are clamped before evaluation
    assert a.shape == (3, 2)
    assert a.abs().max().item() <= 1.0
    assert (a[:, 0] > 0.9).all() and (a[:, 1] < -0.9).all()


def test_non_finite_returns() -> None:
    class NaNModel(LQModel):
        def __init__(self, all_nan: bool):
            super().__init__()
            self.all_nan = all_nan

        def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            r = super().reward(z, a)
            if self.all_nan:
                return torch.full_like(r, float("nan"))
            return torch.where(a[:, 0] > 0.95, torch.full_like(r, float("nan")), r)

    x = states()
    a, mean = plan_and_mean(PRECISE, x, NaNModel(all_nan=False))  # NaN rows are never elites
    torch.testing.assert_close(mean, -K_STAR * x, rtol=0, atol=MEAN_TOL)
    torch.testing.assert_close(a, -K_STAR * x, rtol=0, atol=ACT_TOL)
    with pytest.raises(RuntimeError, match="non-finite"):
        plan(PRECISE, x, NaNModel(all_nan=True))
