"""Kalman Linear Attention (KLA): an information-form Kalman filter computed as an associative scan.

Public API:
    kla_scan            filter from information increments (phi, r);
                        backend "auto" | "reference" | "scan" | "triton"
    kla_filter          filter driven by observations (v, obs_precision, k), NaN = missing; read-out q
    posterior           (lam, eta) -> (mean, var)
    kla_readout         query read-out of a (B, L, M, S) belief
    associative_scan    generic work-efficient scan of an associative operator (PyTorch)
    kla_scan_reference  the sequential oracle (Python loop over time)
    kla_scan_torch      the parallel PyTorch scan on flattened lanes
    kla_scan_triton     the fused Triton kernel on flattened lanes (CUDA, or TRITON_INTERPRET=1)
    KLALayer, KLABlock, KLAState, KLALayerOutput   the sequence-model layer and a stackable block
    KLABeliefWorldModel, KLABeliefConfig, Belief, BeliefState   belief-state world model (filtered latent)
"""

from .belief import Belief, BeliefFilterOutput, BeliefState, KLABeliefConfig, KLABeliefWorldModel, LaneDynamics
from .layer import KLABlock, KLALayer, KLALayerOutput, KLAState
from .reference import kla_scan_reference
from .scan import (
    BACKENDS,
    KLAFilterOutput,
    associative_scan,
    kla_filter,
    kla_readout,
    kla_scan,
    kla_scan_torch,
    posterior,
    resolve_backend,
)
from .triton_kernels import HAS_TRITON, kla_scan_triton

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "Belief",
    "BeliefFilterOutput",
    "BeliefState",
    "KLABeliefConfig",
    "KLABeliefWorldModel",
    "KLABlock",
    "KLAFilterOutput",
    "KLALayer",
    "KLALayerOutput",
    "KLAState",
    "LaneDynamics",
    "associative_scan",
    "kla_filter",
    "kla_readout",
    "kla_scan",
    "kla_scan_reference",
    "kla_scan_torch",
    "kla_scan_triton",
    "posterior",
    "resolve_backend",
]
