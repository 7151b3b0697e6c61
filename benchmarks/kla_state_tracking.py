"""State tracking: a small KLA sequence model vs a GLA-style diagonal gated linear recurrence, same width.

Both models share everything except the recurrence inside the mixer:
embedding -> N x [x + mixer(RMSNorm x); x + SwiGLU(RMSNorm x)] -> RMSNorm -> linear head, and the mixer is
in_proj -> (z, g), causal depthwise conv + SiLU, sensor projection, recurrence over an M x S state, query
read-out + skip, SiLU(g) gate, out_proj.

* KLA:  information-form Kalman filter per lane, phi = Lv[m] k[s]^2, r = Lv[m] v[m] k[s], read-out of the
        posterior mean mu = eta / lam (world_models.kla.KLALayer).
* GLA:  h_t[m, s] = alpha_t[s] h_{t-1}[m, s] + v_t[m] k_t[s],  alpha_t = sigmoid(w_t)^(1/16) (GLA's gate
        normaliser), read-out y[m] = sum_s q[s] h[m, s].

Every position is labelled with the state after the prefix (dense supervision).  Training uses sequences of
length --train-len; evaluation also uses longer sequences (--test-len) to see whether the learnt solution holds
beyond the training length.  Both models get the same data, steps, optimiser and schedule.

What separates the two recurrences.  Both are diagonal with *positive* per-lane dynamics: GLA's gate is in
(0, 1); KLA's posterior mean evolves as ``mu_t = (1 - K_t) a mu_{t-1} + K_t v_t / k_t`` with ``(1 - K_t) a``
in (0, 1), and its precision follows positive Moebius maps, which are increasing.  On a constant input every
lane of either model converges monotonically, so neither can track parity / Z5 / S3 at unbounded length (that
needs an oscillating, i.e. negative or complex, eigenvalue).  What KLA has and GLA lacks is a *state-dependent*
gain ``K_t = phi_t / lam_t``: evidence is weighted against the precision already accumulated, the belief is a
convex combination of observations (bounded), and a confident belief resists later weak evidence.  GLA keeps
unnormalised sums, which is what counting (and hence mod-5 counting at bounded length) needs.

Tasks (--task):
* ``first`` (default): tokens write-0 / write-1 / ignore (writes 20 % of tokens); label = the *first* written
  bit (0 before any write).  The gate must depend on the state (has anything been written yet?), not on the
  token alone.  In KLA the first write leaves a large precision, so later (imperfectly suppressed) writes get
  a gain ~phi_later / lam and barely move the belief; in GLA every leaked write adds linearly to the state.
* ``flipflop``: same tokens, label = the last written bit (an input-only gate suffices).
* ``parity``: bits, label = parity of the prefix (group Z2).
* ``mod5``: digits 0..4, label = prefix sum mod 5 (group Z5).
* ``s3``: the 6 permutations of 3 items, label = prefix composition (non-abelian group S3).
* ``majority``: bits, label = whether 1s are at least half of the prefix.
* ``bandit``: tokens (arm, outcome) with per-sequence success rates and pull frequencies; label = whether
  arm A's Laplace-smoothed success rate exceeds arm B's (a ratio comparison).
* ``tracking`` (regression): a hidden AR(1) state ``x_t = a x_{t-1} + w_t``, ``w_t ~ N(0, q)`` (stationary
  variance 1), seen through observations ``y_t = x_t + v_t``, ``v_t ~ N(0, sigma_t^2)`` whose reliability changes
  every step (``sigma_t`` in {0.1, 1, 10} with probabilities 0.15 / 0.35 / 0.5; the model is told ``sigma_t``).
  Target: ``x_t`` (MSE). The Bayes-optimal estimate is the Kalman filter's posterior mean, computed by a plain
  scalar Kalman filter in this script; the table reports each model's MSE divided by the filter's (1.0 =
  optimal). The optimal gain ``K_t = P_t^- / (P_t^- + sigma_t^2)`` depends on how much reliable evidence the
  history holds (``P_t^-``), not on the current input alone: KLA's precision-weighted update has that form;
  GLA's gate sees only the current token (and a 4-token convolution window).

Run: ``python benchmarks/kla_state_tracking.py`` (defaults: task ``first``, 2 layers, d_model 32, d_state 8,
train length 32, test lengths 128 and 512, 500 steps, seeds 0, 1, 2; ~5-7 minutes on 2 busy CPU cores).
``python benchmarks/kla_state_tracking.py --task tracking --train-len 256 --test-len 1024 --eval-seqs 256``:
the noisy-tracking comparison against the optimal filter (~8 minutes per seed on one CPU thread).
For reference, the best filter whose gain depends on the current ``sigma_t`` alone (a grid search over one
gain per noise level, the most an input-only gate can do without history) reaches an MSE ratio of ~1.16 on
the default tracking task.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_models.kla import KLALayer
from world_models.kla.scan import associative_scan

# -----------------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------------------
_PERMS = list(itertools.permutations(range(3)))
_PERM_INDEX = {p: i for i, p in enumerate(_PERMS)}
# composition table: state s then token g -> g o s
_S3_TABLE = torch.tensor(
    [[_PERM_INDEX[tuple(g[s[i]] for i in range(3))] for g in _PERMS] for s in _PERMS], dtype=torch.long
)

TASKS = {
    "parity": (2, 2),
    "mod5": (5, 5),
    "s3": (6, 6),
    "flipflop": (3, 2),
    "first": (3, 2),
    "majority": (2, 2),
    "bandit": (4, 2),
    "tracking": (0, 1),  # vocab 0: continuous input features; 1 output: regression
}
# tracking: AR(1) coefficient, process-noise variance (stationary variance 1), observation noise levels
TRACK_A = 0.995
TRACK_Q = 1.0 - TRACK_A**2
TRACK_SIGMAS = (0.1, 1.0, 10.0)
TRACK_PROBS = (0.15, 0.35, 0.5)


def set_tracking(a: float, sigmas: list[float], probs: list[float]) -> None:
    """Set the tracking task's parameters (module-level, read by make_tracking and kalman_tracking)."""
    global TRACK_A, TRACK_Q, TRACK_SIGMAS, TRACK_PROBS
    TRACK_A, TRACK_Q, TRACK_SIGMAS, TRACK_PROBS = a, 1.0 - a**2, tuple(sigmas), tuple(probs)


def is_regression(task: str) -> bool:
    return TASKS[task][0] == 0


def make_tracking(batch: int, length: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Features ``(batch, length, 2)`` = (y / sqrt(1 + sigma^2), log sigma), targets ``x`` and the noise std."""
    probs = torch.tensor(TRACK_PROBS)
    sigma = torch.tensor(TRACK_SIGMAS)[torch.multinomial(probs, batch * length, True, generator=gen)]
    sigma = sigma.view(batch, length)
    w = torch.randn(batch, length, generator=gen) * TRACK_Q**0.5
    x = torch.empty(batch, length)
    state = torch.randn(batch, generator=gen)  # x_0 from the stationary distribution N(0, 1)
    for t in range(length):
        state = TRACK_A * state + w[:, t] if t > 0 else state
        x[:, t] = state
    y = x + sigma * torch.randn(batch, length, generator=gen)
    feats = torch.stack([y / (1.0 + sigma**2) ** 0.5, sigma.log()], dim=-1)
    return feats, x, sigma


def kalman_tracking(feats: Tensor, sigma: Tensor) -> Tensor:
    """The textbook scalar Kalman filter for ``tracking`` (known a, q, sigma_t): posterior means ``(B, L)``."""
    y = feats[..., 0] * (1.0 + sigma**2) ** 0.5
    mean = torch.zeros(y.shape[0], dtype=torch.float64)
    var = torch.ones(y.shape[0], dtype=torch.float64)  # prior N(0, 1) = the stationary distribution
    out = torch.empty_like(y, dtype=torch.float64)
    for t in range(y.shape[1]):
        if t > 0:  # predict
            mean, var = TRACK_A * mean, TRACK_A**2 * var + TRACK_Q
        r = sigma[:, t].double() ** 2
        gain = var / (var + r)  # update
        mean, var = mean + gain * (y[:, t].double() - mean), (1 - gain) * var
        out[:, t] = mean
    return out.float()


def make_batch(task: str, batch: int, length: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Token ids ``(batch, length)`` and per-position state labels ``(batch, length)``."""
    vocab, _ = TASKS[task]
    if task in ("flipflop", "first"):
        # writes are sparse so that the state has to be held over long gaps
        u = torch.rand(batch, length, generator=gen)
        x = torch.where(u < 0.1, 0, torch.where(u < 0.2, 1, 2))
    elif task == "bandit":
        # token = 2 * arm + outcome; each sequence has its own success rates p_A, p_B ~ U(0, 1) and its own
        # probability of pulling arm B, so arms are pulled unequally often and net counts mislead.
        rates = torch.rand(batch, 2, generator=gen)
        pull_b = 0.05 + 0.9 * torch.rand(batch, 1, generator=gen)
        arm = (torch.rand(batch, length, generator=gen) < pull_b).long()
        outcome = (torch.rand(batch, length, generator=gen) < rates.gather(1, arm)).long()
        x = 2 * arm + outcome
    else:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
    if task == "parity":
        y = torch.cumsum(x, 1) % 2
    elif task == "mod5":
        y = torch.cumsum(x, 1) % 5
    elif task == "bandit":
        arm, outcome = x // 2, x % 2
        n_b, s_b = torch.cumsum(arm, 1), torch.cumsum(arm * outcome, 1)
        n_a, s_a = torch.cumsum(1 - arm, 1), torch.cumsum((1 - arm) * outcome, 1)
        # Laplace-smoothed success rates (s + 1) / (n + 2), compared exactly by cross-multiplication
        y = ((s_a + 1) * (n_b + 2) > (s_b + 1) * (n_a + 2)).long()
    elif task == "majority":
        y = (2 * torch.cumsum(x, 1) >= torch.arange(1, length + 1)).long()
    elif task == "s3":
        y = torch.empty_like(x)
        s = torch.zeros(batch, dtype=torch.long)
        for t in range(length):
            s = _S3_TABLE[s, x[:, t]]
            y[:, t] = s
    elif task == "flipflop":
        y = torch.empty_like(x)
        s = torch.zeros(batch, dtype=torch.long)
        for t in range(length):
            s = torch.where(x[:, t] < 2, x[:, t], s)
            y[:, t] = s
    elif task == "first":
        y = torch.empty_like(x)
        s = torch.zeros(batch, dtype=torch.long)
        seen = torch.zeros(batch, dtype=torch.bool)
        for t in range(length):
            write = x[:, t] < 2
            s = torch.where(write & ~seen, x[:, t], s)
            seen = seen | write
            y[:, t] = s
    else:
        raise ValueError(f"unknown task {task!r}")
    return x, y


# ----------------------------------------------------------------------------------------------------------
# GLA-style baseline mixer (same block layout as KLALayer, linear recurrence instead of the Kalman filter)
# ------------------------------------------------------------------------------------------------------------
def _affine_combine(x: tuple[Tensor, ...], y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return y[0] * x[0], y[0] * x[1] + y[1]


class GLALayer(nn.Module):
    """Diagonal gated linear recurrence over an ``M x S`` state (GLA-style key-dim gate)."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, gate_norm: float = 16.0):
        super().__init__()
        m, s = expand * d_model, d_state
        self.d_inner, self.d_state, self.d_conv, self.gate_norm = m, s, d_conv, gate_norm
        self.in_proj = nn.Linear(d_model, 2 * m, bias=False)
        self.conv = nn.Conv1d(m, m, d_conv, groups=m, bias=True)
        self.sensor = nn.Linear(m, m + 3 * s, bias=False)
        self.out_proj = nn.Linear(m, d_model, bias=False)
        self.skip = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x: Tensor) -> Tensor:
        z, g = self.in_proj(x).chunk(2, dim=-1)
        zc = F.silu(self.conv(F.pad(z.transpose(1, 2), (self.d_conv - 1, 0)))).transpose(1, 2)
        m, s = self.d_inner, self.d_state
        v, w, k, q = self.sensor(zc).split([m, s, s, s], dim=-1)
        alpha = torch.exp(F.logsigmoid(w) / self.gate_norm)  # (B, L, S), in (0, 1)
        k = F.normalize(k, dim=-1, eps=1e-6)
        q = F.normalize(q, dim=-1, eps=1e-6)
        bsz, length = x.shape[:2]
        gates = alpha.unsqueeze(2).expand(bsz, length, m, s).reshape(bsz, length, m * s)
        inputs = (v.unsqueeze(-1) * k.unsqueeze(-2)).reshape(bsz, length, m * s)
        _, h = associative_scan(_affine_combine, (gates, inputs), dim=1)
        y = torch.einsum("blms,bls->blm", h.view(bsz, length, m, s), q) + self.skip * zc
        return self.out_proj(y * F.silu(g))


class KLAMixer(nn.Module):
    def __init__(self, d_model: int, d_state: int, expand: int) -> None:
        super().__init__()
        self.layer = KLALayer(d_model, d_state=d_state, expand=expand, backend="scan")

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x).out


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, d_model: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model, eps=1e-5), nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = mixer
        hidden = int(8 * d_model / 3)
        self.w12 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        h1, h2 = self.w12(self.norm2(x)).chunk(2, dim=-1)
        return x + self.w3(F.silu(h1) * h2)


class SequenceModel(nn.Module):
    def __init__(self, kind: str, vocab: int, classes: int, d_model: int, d_state: int, expand: int, layers: int):
        super().__init__()
        # vocab 0: continuous features (the tracking task's 2 per step) through a linear map
        self.embed = nn.Embedding(vocab, d_model) if vocab else nn.Linear(2, d_model)

        def mixer() -> nn.Module:
            return KLAMixer(d_model, d_state, expand) if kind == "kla" else GLALayer(d_model, d_state, expand)

        self.blocks = nn.ModuleList(Block(mixer(), d_model) for _ in range(layers))
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, classes, bias=False)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


# ----------------------------------------------------------------------------------------------------------
# Training and evaluation
# ------------------------------------------------------------------------------------------------------------
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        dyn = name.rsplit(".", 1)[-1] in ("theta", "delta", "p_c", "skip")
        (no_decay if (dyn or prm.dim() < 2) else decay).append(prm)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, task: str, length: int, n_seqs: int, seed: int) -> tuple[float, float, float]:
    """Accuracy per token, on the last token and on whole sequences, over ``n_seqs`` fresh sequences.

    ``tracking``: (MSE / Kalman-filter MSE, model MSE, Kalman-filter MSE) over all positions.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    batch = max(8, min(n_seqs, 16384 // length))  # bounded memory for long test sequences
    if is_regression(task):
        err = opt = 0.0
        done = 0
        while done < n_seqs:
            b = min(batch, n_seqs - done)
            feats, x, sigma = make_tracking(b, length, gen)
            err += float(((model(feats)[..., 0] - x) ** 2).sum())
            opt += float(((kalman_tracking(feats, sigma) - x) ** 2).sum())
            done += b
        model.train()
        return err / opt, err / (n_seqs * length), opt / (n_seqs * length)
    tok = last = seq = 0
    done = 0
    while done < n_seqs:
        b = min(batch, n_seqs - done)
        x, y = make_batch(task, b, length, gen)
        ok = model(x).argmax(-1) == y
        tok += int(ok.sum())
        last += int(ok[:, -1].sum())
        seq += int(ok.all(1).sum())
        done += b
    model.train()
    return tok / (n_seqs * length), last / n_seqs, seq / n_seqs


def train(kind: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one model from ``seed`` and evaluate it at the train length and every test length."""
    torch.manual_seed(seed)
    vocab, classes = TASKS[args.task]
    model = SequenceModel(kind, vocab, classes, args.d_model, args.d_state, args.expand, args.layers)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed + 1)  # same data stream for both models
    start = time.perf_counter()
    for step in range(args.steps):
        if is_regression(args.task):
            feats, target, _ = make_tracking(args.batch, args.train_len, gen)
            loss = F.mse_loss(model(feats)[..., 0], target)
        else:
            x, y = make_batch(args.task, args.batch, args.train_len, gen)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if args.log_every and (step + 1) % args.log_every == 0:
            elapsed = time.perf_counter() - start
            print(f"  [{kind} seed {seed}] step {step + 1:5d}  loss {loss.item():.4f}  {elapsed:6.1f}s", flush=True)
    res = {
        "model": kind,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "time": time.perf_counter() - start,
    }
    for length in (args.train_len, *args.test_len):
        res[length] = evaluate(model, args.task, length, args.eval_seqs, seed + 12345)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="first", choices=sorted(TASKS))
    ap.add_argument("--models", default="kla,gla")
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=8)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--train-len", type=int, default=32)
    ap.add_argument("--test-len", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--eval-seqs", type=int, default=512)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--track-a", type=float, default=TRACK_A, help="tracking: AR(1) coefficient")
    ap.add_argument("--track-sigmas", type=float, nargs="+", default=list(TRACK_SIGMAS), help="tracking: noise stds")
    ap.add_argument("--track-probs", type=float, nargs="+", default=list(TRACK_PROBS), help="tracking: their probs")
    args = ap.parse_args()
    if len(args.track_sigmas) != len(args.track_probs) or not 0 < args.track_a < 1:
        ap.error("--track-sigmas and --track-probs need the same length; --track-a in (0, 1)")
    set_tracking(args.track_a, args.track_sigmas, args.track_probs)
    torch.set_num_threads(args.threads)
    print(
        f"task={args.task} d_model={args.d_model} d_state={args.d_state} expand={args.expand} "
        f"layers={args.layers} train_len={args.train_len} steps={args.steps} batch={args.batch} lr={args.lr} "
        f"seeds={args.seeds}"
        + (f" a={TRACK_A} sigmas={TRACK_SIGMAS} probs={TRACK_PROBS}" if is_regression(args.task) else "")
    )
    kinds = args.models.split(",")
    results = [train(kind, seed, args) for seed in args.seeds for kind in kinds]
    lengths = (args.train_len, *args.test_len)
    head = f"{'model':<6}{'seed':>5}{'params':>8}{'train s':>9}"
    if is_regression(args.task):
        for length in lengths:
            head += f"  {'ratio@' + str(length):>9}{'mse':>7}{'kf':>7}"
        print("\nMSE at each length: model / optimal Kalman filter (1.0 = optimal), model MSE, filter MSE")
    else:
        for length in lengths:
            head += f"  {'acc@' + str(length):>9}{'last':>7}{'seq':>7}"
        print("\naccuracy at each length: per token / last token / whole sequence correct")
    print(head)

    def row(model: str, seed: str, params: str, secs: float, accs: dict) -> str:
        line = f"{model:<6}{seed:>5}{params:>8}{secs:>9.1f}"
        for length in lengths:
            line += f"  {accs[length][0]:>9.4f}{accs[length][1]:>7.3f}{accs[length][2]:>7.3f}"
        return line

    for r in results:
        print(row(r["model"], str(r["seed"]), str(r["params"]), r["time"], r))
    if len(args.seeds) > 1:
        for kind in kinds:
            rs = [r for r in results if r["model"] == kind]
            mean = {n: tuple(sum(r[n][i] for r in rs) / len(rs) for i in range(3)) for n in lengths}
            print(row(kind, "mean", str(rs[0]["params"]), sum(r["time"] for r in rs) / len(rs), mean))


if __name__ == "__main__":
    main()
