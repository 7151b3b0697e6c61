"""Triton kernel == sequential reference, forward and backward, under the Triton CPU interpreter.

``TRITON_INTERPRET=1`` must be set before triton is first imported, and other test modules import triton
(through ``world_models.kla``) in the same pytest process.  So the checks run in a fresh subprocess of this
very file (``__main__`` branch below) with the interpreter and output poisoning (every kernel output buffer
starts as NaN) switched on; it prints one JSON line of measured errors that the tests below assert on.  On a
CUDA machine the same checks also run on the GPU in-process (``test_triton_on_cuda``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

F32_TOL = 1e-5  # norm-wise relative error for float32 kernels (fp32 accumulation, different summation order)
F64_TOL = 1e-12


def run_checks(device: str) -> dict:
    """Compare the Triton backend with the float64 reference on small problems; return errors per case."""
    import torch

    from world_models.kla import kla_filter, kla_scan, triton_kernels

    def rel(x, ref):
        x = x.detach().double().cpu()
        ref = ref.detach().double().cpu()
        return float((x - ref).abs().max() / ref.abs().max().clamp_min(1.0))

    def problem(bsz, length, dshape, seed, batched=False):
        g = torch.Generator().manual_seed(seed)
        pshape = (bsz, *dshape) if batched else dshape
        f64 = torch.float64
        return (
            torch.rand((bsz, length, *dshape), generator=g, dtype=f64) * 2,
            torch.randn((bsz, length, *dshape), generator=g, dtype=f64),
            torch.rand(pshape, generator=g, dtype=f64) * 0.8 + 0.2,
            torch.rand(pshape, generator=g, dtype=f64) * 0.5 + 1e-3,
            torch.rand((bsz, *dshape), generator=g, dtype=f64) * 2 + 0.3,
            torch.randn((bsz, *dshape), generator=g, dtype=f64),
        )

    def compare(inputs, dtype, weights_seed=0):
        g = torch.Generator().manual_seed(weights_seed)
        shape = inputs[0].shape
        w_lam = torch.randn(shape, generator=g, dtype=torch.float64)
        w_eta = torch.randn(shape, generator=g, dtype=torch.float64)
        outs = {}
        for backend in ("reference", "triton"):
            cast = torch.float64 if backend == "reference" else dtype
            xs = [x.to(device=device if backend == "triton" else "cpu", dtype=cast).requires_grad_() for x in inputs]
            lam, eta = kla_scan(*xs, backend=backend)
            wl, we = w_lam.to(lam.device, cast), w_eta.to(lam.device, cast)
            grads = torch.autograd.grad((lam * wl).sum() + (eta * we).sum(), xs)
            outs[backend] = (lam, eta, *grads)
        names = ("lam", "eta", "dphi", "dr", "da", "dp", "dlam0", "deta0")
        errs = {n: rel(t, ref) for n, t, ref in zip(names, outs["triton"], outs["reference"])}
        errs["finite"] = all(bool(torch.isfinite(t).all()) for t in outs["triton"])
        return errs

    results = {}
    default_blocks = (triton_kernels.BLOCK_T, triton_kernels.BLOCK_N)
    # Small blocks: several time chunks and a partial lane block (N = 6 with BLOCK_N = 4).
    triton_kernels.BLOCK_T, triton_kernels.BLOCK_N = 8, 4
    for length in (1, 7, 8, 9, 30):
        for dtype in (torch.float32, torch.float64):
            results[f"small_L{length}_{str(dtype)[6:]}"] = compare(problem(2, length, (2, 3), seed=length), dtype)
    results["batched_params"] = compare(problem(3, 19, (5,), seed=3, batched=True), torch.float32)
    # Non-contiguous inputs (a transposed view) go through .contiguous() inside the wrapper.
    phi, r, a, p, lam0, eta0 = problem(2, 12, (3, 2), seed=4)
    results["noncontiguous"] = compare(
        (phi.transpose(2, 3).contiguous().transpose(2, 3), r, a, p, lam0, eta0), torch.float32
    )
    # NaN observations: the dispatcher masks them before the kernel.
    import math

    v = torch.randn(2, 15, 3, dtype=torch.float64)
    v[0, 3:6, 1] = math.nan
    v[1, 0, :] = math.nan
    prec = torch.rand(2, 15, 3, dtype=torch.float64) + 0.2
    k = torch.randn(2, 15, 4, dtype=torch.float64)
    a2, p2 = torch.full((3, 4), 0.8, dtype=torch.float64), torch.full((3, 4), 0.05, dtype=torch.float64)
    ref = kla_filter(v, prec, k, a2, p2, backend="reference")
    out = kla_filter(*(x.to(device, torch.float32) for x in (v, prec, k, a2, p2)), backend="triton")
    results["nan_mask"] = {"mean": rel(out.mean, ref.mean), "var": rel(out.var, ref.var),
                           "finite": bool(torch.isfinite(out.mean).all())}  # fmt: skip
    # Default (GPU) block sizes: two time chunks and two lane blocks.
    triton_kernels.BLOCK_T, triton_kernels.BLOCK_N = default_blocks
    results["default_blocks"] = compare(
        problem(1, default_blocks[0] + 5, (default_blocks[1] + 1,), seed=8), torch.float32
    )
    results["poisoned"] = triton_kernels.POISON
    return results


def _interpreter_results() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", KLA_TRITON_POISON="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interp() -> dict:
    return _interpreter_results()


def _assert_case(errs: dict, tol: float) -> None:
    assert errs.pop("finite") is True, "kernel left NaN/unwritten elements"
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"errors above {tol}: {bad}"


def test_outputs_were_poisoned(interp):
    assert interp["poisoned"] is True


@pytest.mark.parametrize("length", [1, 7, 8, 9, 30])
@pytest.mark.parametrize("dtype,tol", [("float32", F32_TOL), ("float64", F64_TOL)])
def test_triton_forward_backward_match_reference(interp, length, dtype, tol):
    _assert_case(interp[f"small_L{length}_{dtype}"], tol)


@pytest.mark.parametrize("case", ["batched_params", "noncontiguous", "default_blocks"])
def test_triton_layouts(interp, case):
    _assert_case(interp[case], F32_TOL)


def test_triton_nan_masking(interp):
    _assert_case(interp["nan_mask"], F32_TOL)


def test_triton_on_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from world_models.kla import triton_kernels

    poison = triton_kernels.POISON
    triton_kernels.POISON = True
    try:
        res = run_checks("cuda")
    finally:
        triton_kernels.POISON = poison
    res.pop("poisoned")
    for name, errs in res.items():
        tol = F64_TOL * 10 if name.endswith("float64") else F32_TOL
        _assert_case(errs, tol)


if __name__ == "__main__":
    print(json.dumps(run_checks("cpu")))
