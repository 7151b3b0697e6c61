"""SFR: Sparse Function-space Representation of a trained scalar-output MLP (Scannell et al., ICLR 2024).

The network ``f(x; w) = output_fn(net(x))`` is linearised at the fitted weights ``w*`` and read as a GP with the
Jacobian kernel ``κ(x, x') = s·K̃(x, x')``, ``K̃(x, x') = J(x)·J(x')ᵀ``, ``J(x) = ∂f(x; w)/∂w |_{w*}``,
``s = 1/(δ·N)`` (``δ`` prior precision, ``N`` number of absorbed points). Gaussian likelihood with fixed noise
variance ``σ²``: dual parameters ``α̂_i = (y_i − f_i)/σ²``, ``β_i = 1/σ²``, pseudo-targets ``ỹ_i = α̂_i + β_i·f_i``.
With ``M`` inducing inputs ``Z`` the data enter only through the unscaled sums

    ỹ_u = Σ_i K̃(Z, x_i)·ỹ_i                 [M]
    S_B = Σ_i K̃(Z, x_i)·β_i·K̃(x_i, Z)       [M, M]

and the predictive mean and variance (of f, without σ²) are, with ``B_u = s·S_B`` and jitter ``ε``:

    α_u  = (K̃_zz + B_u + εI)⁻¹·ỹ_u
    m(x) = s·K̃(x, Z)·α_u
    v(x) = s·[K̃(x, x) − K̃(x, Z)·(K̃_zz + εI)⁻¹·K̃(Z, x) + K̃(x, Z)·(K̃_zz + B_u + εI)⁻¹·K̃(Z, x)]

``s`` always uses the current ``N``, so a dual update (adding the sums of new points computed at the same frozen
weights) equals a refit on the union with the same ``Z``.

The kernel is computed without materialising ``J`` (``[N, P]``): for a Linear layer with input ``u`` and
output-gradient ``δ = ∂f/∂(layer output)`` the contribution is ``(u(a)·u(b) + 1)·(δ(a)·δ(b))`` (``+1``: bias), for a
LayerNorm with normalised input ``x̂`` it is ``(x̂(a)∘δ(a))·(x̂(b)∘δ(b)) + δ(a)·δ(b)``. One forward pass and one
``autograd.grad`` give every row's ``δ``s, because rows of the batch are independent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SFR"]

# Per-row kernel features: Linear layers as (input with a ones column, output-gradient) pairs whose kernel is the
# product of the two Gram matrices, and all LayerNorm features concatenated into one plain linear block.
Features = tuple[list[tuple[Tensor, Tensor]], Tensor]

_CHUNK = 1024  # rows per absorption chunk: bounds the autograd graph and the [M, chunk] kernel block
_SIZED = ("inducing", "y_u", "s_b", "chol_zz", "chol_b", "alpha_u")  # buffers whose shape is set by fit()


def _layers(net: nn.Module) -> Iterator[nn.Module]:
    """The layers of ``net`` (nested Sequentials flattened); a ValueError names any layer SFR cannot handle."""
    for layer in net if isinstance(net, nn.Sequential) else [net]:
        if isinstance(layer, nn.Sequential):
            yield from _layers(layer)
        elif isinstance(layer, nn.Linear) or (isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1):
            yield layer
        elif isinstance(layer, nn.modules.dropout._DropoutNd) or any(True for _ in layer.parameters()):
            raise ValueError(
                f"SFR: unsupported layer {type(layer).__name__} ({layer}); expected nn.Linear, "
                "nn.LayerNorm over the last dim, or a deterministic parameter-free activation"
            )
        else:
            yield layer


def _cross(fa: Features, fb: Features) -> Tensor:
    """K̃(a, b) = J(a)·J(b)ᵀ from the features of a and b: ``[Na, Nb]``."""
    (pairs_a, lin_a), (pairs_b, lin_b) = fa, fb
    k = lin_a @ lin_b.T
    for (ua, da), (ub, db) in zip(pairs_a, pairs_b):
        k = k + (ua @ ub.T) * (da @ db.T)
    return k


def _diag(fa: Features) -> Tensor:
    """K̃(x, x) for every row: ``[N]``."""
    pairs, lin = fa
    k = lin.square().sum(-1)
    for u, d in pairs:
        k = k + u.square().sum(-1) * d.square().sum(-1)
    return k


def _resize_on_load(module: SFR, state_dict: dict, prefix: str, *args) -> None:
    # A fresh SFR does not know M (nor the input dim): take the fitted shapes from the checkpoint.
    for name in _SIZED:
        if (value := state_dict.get(prefix + name)) is not None:
            old = getattr(module, name)
            setattr(module, name, torch.empty(value.shape, dtype=old.dtype, device=old.device))
    module._zcache = None
    module._qcache = None


class SFR(nn.Module):
    """Sparse GP view of the scalar MLP ``network`` (see the module docstring for the equations).

    ``fit`` snapshots the live network (later training does not change the GP); the snapshot, ``Z``, ``ỹ_u``,
    ``S_B``, ``N``, the Cholesky factors and ``α_u`` are all in the state dict, so ``load_state_dict`` into a freshly
    constructed SFR (same architecture) restores identical predictions. ``predict`` returns float64.
    """

    def __init__(
        self,
        network: nn.Sequential,
        *,
        num_inducing: int,
        prior_precision: float,
        noise_var: float,
        jitter: float = 1e-6,
        output_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        for name, value, ok, need in (
            ("num_inducing", num_inducing, num_inducing >= 1, ">= 1"),
            ("prior_precision", prior_precision, prior_precision > 0, "> 0"),
            ("noise_var", noise_var, noise_var > 0, "> 0"),
            ("jitter", jitter, jitter >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(f"SFR: {name} must be {need}, got {value}")
        if not any(isinstance(layer, nn.Linear) for layer in list(_layers(network))):
            raise ValueError("SFR: the network needs at least one nn.Linear")
        self.num_inducing, self.prior_precision, self.noise_var = num_inducing, prior_precision, noise_var
        self.jitter, self.output_fn = jitter, output_fn
        self._live = (network,)  # a tuple: the live weights belong to their owner, not to this module's state
        self.snapshot = copy.deepcopy(network).requires_grad_(False)  # replaced by fit(); here for load_state_dict
        dtype = next(network.parameters()).dtype
        self.register_buffer("inducing", torch.empty(0, 0, dtype=dtype))
        for name, shape in (("y_u", (0,)), ("s_b", (0, 0)), ("chol_zz", (0, 0)), ("chol_b", (0, 0)), ("alpha_u", (0,))):
            self.register_buffer(name, torch.empty(shape, dtype=torch.float64))
        self.register_buffer("num_data", torch.zeros((), dtype=torch.long))
        self._zcache: Features | None = None
        self._qcache: tuple[torch.device, Tensor] | None = None
        self.register_load_state_dict_pre_hook(_resize_on_load)

    @property
    def fitted(self) -> bool:
        return bool(self.num_data > 0)

    def _features(self, net: nn.Module, x: Tensor) -> tuple[Features, Tensor]:
        """Kernel features of the rows of ``x`` and ``f(x)`` at ``net``'s weights (no ``.grad`` is touched)."""
        dtype = next(net.parameters()).dtype
        records: list[tuple[nn.Module, Tensor, Tensor]] = []  # (layer, input u or x̂, layer output)
        with torch.inference_mode(False), torch.enable_grad():
            # Differentiating w.r.t. the recorded outputs only needs a graph, which a grad-requiring input gives
            # even when the weights are frozen (the clone turns an inference-mode tensor into a normal one).
            h = x.detach().to(dtype).clone().requires_grad_(True)
            for layer in _layers(net):
                if isinstance(layer, nn.Linear):
                    u, h = h, F.linear(h, layer.weight, layer.bias)
                    records.append((layer, u, h))
                elif isinstance(layer, nn.LayerNorm):
                    h = xhat = F.layer_norm(h, layer.normalized_shape, eps=layer.eps)
                    h = h if layer.weight is None else h * layer.weight
                    h = h if layer.bias is None else h + layer.bias
                    if layer.weight is not None or layer.bias is not None:
                        records.append((layer, xhat, h))
                else:
                    h = layer(h)
            if h.shape[-1] != 1:
                raise ValueError(f"SFR: the network must output one value per row, got shape {tuple(h.shape)}")
            f = (h if self.output_fn is None else self.output_fn(h)).squeeze(-1)
            grads = torch.autograd.grad(f.sum(), [out for _, _, out in records])
        pairs, lin = [], []
        for (layer, u, _), d in zip(records, grads):
            u = u.detach()
            if isinstance(layer, nn.Linear):
                pairs.append((u if layer.bias is None else torch.cat([u, u.new_ones(len(u), 1)], -1), d))
            else:
                lin += ([] if layer.weight is None else [u * d]) + ([] if layer.bias is None else [d])
        lin_t = torch.cat(lin, -1) if lin else h.new_zeros(len(h), 0).detach()
        return (pairs, lin_t), f.detach()

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """Unscaled K̃(a, b) = J(a)·J(b)ᵀ ``[Na, Nb]`` at the snapshot (at the live network before the first fit)."""
        net = self.snapshot if self.fitted else self._live[0]
        return _cross(self._features(net, a)[0], self._features(net, b)[0])

    def _zfeatures(self) -> Features:
        z = self.inducing  # recompute after load_state_dict, fit, or a device/dtype move of the module
        if self._zcache is None or (self._zcache[1].device, self._zcache[1].dtype) != (z.device, z.dtype):
            self._zcache = self._features(self.snapshot, z)[0]
        return self._zcache

    def _scale(self) -> Tensor:
        return 1.0 / (self.prior_precision * self.num_data.double())

    def fit(
        self, x: Tensor, y: Tensor, inducing: Tensor | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Snapshot the live network, pick ``Z`` (``inducing``, else ``min(M, N)`` random rows of ``x``), absorb."""
        self.snapshot = copy.deepcopy(self._live[0]).requires_grad_(False)
        if inducing is None:
            device = generator.device if generator is not None else x.device
            inducing = x[torch.randperm(len(x), generator=generator, device=device)[: self.num_inducing].to(x.device)]
        dtype = next(self.snapshot.parameters()).dtype
        self.inducing = inducing.detach().to(dtype).clone()
        self._zcache = None
        m = len(self.inducing)
        self.y_u = torch.zeros(m, dtype=torch.float64, device=x.device)
        self.s_b = torch.zeros(m, m, dtype=torch.float64, device=x.device)
        self.num_data.zero_()
        self.update(x, y)

    def update(self, x: Tensor, y: Tensor) -> None:
        """Dual update: add the new points' ``ỹ_u``/``S_B`` sums (same snapshot and ``Z``), ``N += len(x)``."""
        if len(self.inducing) == 0:
            raise RuntimeError("SFR.update called before fit()")
        y = y.reshape(len(x))
        zf = self._zfeatures()
        for xc, yc in zip(x.split(_CHUNK), y.split(_CHUNK)):
            feats, f = self._features(self.snapshot, xc)
            k_zx = _cross(zf, feats).double()
            f, yc = f.double(), yc.double()
            alpha_hat = (yc - f) / self.noise_var
            beta = torch.full_like(f, 1.0 / self.noise_var)
            self.y_u += k_zx @ (alpha_hat + beta * f)
            self.s_b += (k_zx * beta) @ k_zx.T
        self.num_data += len(x)
        self._factorise()

    def _factorise(self) -> None:
        k_zz = _cross(self._zfeatures(), self._zfeatures()).double()
        k_zz = 0.5 * (k_zz + k_zz.T)  # symmetric up to rounding; Cholesky reads only one triangle anyway
        self.chol_zz = self._cholesky(k_zz)
        self.chol_b = self._cholesky(k_zz + self._scale() * self.s_b)
        self.alpha_u = torch.cholesky_solve(self.y_u[:, None], self.chol_b)[:, 0]
        self._qcache = None

    def _cholesky(self, a: Tensor) -> Tensor:
        eye = torch.eye(len(a), dtype=a.dtype, device=a.device)
        jitter = self.jitter
        for _ in range(6):  # like the reference: grow the jitter when the factorisation fails
            chol, info = torch.linalg.cholesky_ex(a + jitter * eye)
            if info == 0:
                return chol
            jitter = max(10 * jitter, 1e-10 * a.diagonal().abs().mean().item())
        raise torch.linalg.LinAlgError(f"SFR: Cholesky failed even with jitter {jitter:g}")

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``m(x)`` and variance ``v(x) >= 0`` of f (no σ²) at the rows of ``x``: two float64 ``[N]`` tensors."""
        if not self.fitted:
            raise RuntimeError("SFR.predict called before fit()")
        feats, _ = self._features(self.snapshot, x)
        k_zx = _cross(self._zfeatures(), feats).double()
        s = self._scale()
        mean = s * (k_zx.T @ self.alpha_u.double())
        var = s * (_diag(feats).double() - ((self._q() @ k_zx) * k_zx).sum(0))
        return mean, var.clamp_min(0.0)

    def _q(self) -> Tensor:
        """``Q = (K̃_zz + εI)⁻¹ − (K̃_zz + B_u + εI)⁻¹`` ``[M, M]`` from the two factors, cached until they change:
        the variance is then one product per call, ``v(x) = s·[K̃(x, x) − K̃(x, Z)·Q·K̃(Z, x)]``."""
        key = self.chol_zz.device  # invalidated by _factorise and by loading a state dict
        if self._qcache is None or self._qcache[0] != key:
            eye = torch.eye(len(self.chol_zz), dtype=torch.float64, device=self.chol_zz.device)
            q = torch.cholesky_solve(eye, self.chol_zz.double()) - torch.cholesky_solve(eye, self.chol_b.double())
            self._qcache = (key, 0.5 * (q + q.T))
        return self._qcache[1]
