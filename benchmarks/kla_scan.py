"""Scaling of the KLA filter: parallel PyTorch scan vs the sequential loop (and the Triton kernel on CUDA).

For each sequence length T the script times, in the same run and on the same inputs (float32,
``phi, r: (B, T, M, S)``), the median of ``--repeats`` calls after ``--warmup`` calls:

* ``loop``:   the sequential reference (one predict + update per time step, Python loop),
* ``scan``:   the parallel PyTorch scan (chunked: sequential inside ~sqrt(T) chunks, associative scan across),
* ``triton``: the fused Triton kernel (CUDA only),

and prints ``loop/scan`` (and ``scan/triton``).  On CUDA it also reports the kernel's achieved memory
bandwidth (bytes of phi, r read plus lam, eta written, per second; with ``--backward`` add lam, eta and the
two upstream grads read and dphi, dr written) as a fraction of the device's measured device-to-device copy
bandwidth.

Run: ``python benchmarks/kla_scan.py`` (CPU defaults take well under 3 minutes), e.g.
``python benchmarks/kla_scan.py --lengths 64 1024 16384 --batch 4 --channels 64 --state 16 --device cuda``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from world_models.kla import kla_scan
from world_models.kla import triton_kernels as tk


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device, warmup=3, repeats=10)
    return 2 * nbytes / t


def make_inputs(bsz: int, length: int, m: int, s: int, device: torch.device, grad: bool):
    g = torch.Generator(device="cpu").manual_seed(length)
    phi = (torch.rand(bsz, length, m, s, generator=g) * 2).to(device)
    r = torch.randn(bsz, length, m, s, generator=g).to(device)
    a = (0.5 + 0.5 * torch.rand(m, s, generator=g)).to(device)
    p = (1e-3 + 0.05 * torch.rand(m, s, generator=g)).to(device)
    if grad:
        for x in (phi, r, a, p):
            x.requires_grad_()
    return phi, r, a, p


def runner(inputs, backend: str, backward: bool) -> Callable[[], object]:
    phi, r, a, p = inputs

    def run():
        if not backward:
            with torch.no_grad():
                return kla_scan(phi, r, a, p, backend=backend, validate=False, mask_nan=False)
        lam, eta = kla_scan(phi, r, a, p, backend=backend, validate=False, mask_nan=False)
        return torch.autograd.grad((lam.sum() + eta.sum()), (phi, r, a, p))

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64 << i for i in range(9)])  # 64 ... 16384
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--channels", type=int, default=16, help="M (channels)")
    ap.add_argument("--state", type=int, default=16, help="S (state lanes per channel)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    ap.add_argument("--no-loop", action="store_true", help="skip the sequential loop (slow on long sequences)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_triton = device.type == "cuda" and tk.HAS_TRITON
    bsz, m, s = args.batch, args.channels, args.state
    mode = "forward+backward" if args.backward else "forward"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    print(f"KLA filter {mode}, float32, B={bsz} M={m} S={s} (B*M*S={bsz * m * s} lanes), device: {name}")
    print(f"median of {args.repeats} runs after {args.warmup} warm-up; times in ms")
    copy_bw = copy_bandwidth(device) if use_triton else None
    if copy_bw:
        print(f"measured copy bandwidth: {copy_bw / 1e9:.1f} GB/s")
    head = f"{'T':>7} {'loop':>10} {'scan':>10} {'loop/scan':>10}"
    if use_triton:
        head += f" {'triton':>10} {'scan/triton':>12} {'GB/s':>8} {'of copy':>8}"
    print(head)
    for length in args.lengths:
        inputs = make_inputs(bsz, length, m, s, device, args.backward)
        t_scan = bench(runner(inputs, "scan", args.backward), device, args.warmup, args.repeats)
        t_loop = float("nan")
        if not args.no_loop:
            t_loop = bench(runner(inputs, "reference", args.backward), device, args.warmup, args.repeats)
        line = f"{length:>7} {t_loop * 1e3:>10.2f} {t_scan * 1e3:>10.2f} {t_loop / t_scan:>10.2f}"
        if use_triton:
            t_tri = bench(runner(inputs, "triton", args.backward), device, args.warmup, args.repeats)
            elems = bsz * length * m * s
            nbytes = (10 if args.backward else 4) * elems * 4
            bw = nbytes / t_tri
            line += f" {t_tri * 1e3:>10.3f} {t_scan / t_tri:>12.1f} {bw / 1e9:>8.1f} {bw / copy_bw:>8.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
