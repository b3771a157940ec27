"""``poissonvae.functional.relu_moments`` against the same formulas written with
``torch.special.erfcx`` and ``torch.where`` (forward, and forward + backward).

The comparator evaluates eqs. (18)-(19) in units of sigma with the Mills ratio
``r = sqrt(pi/2) erfcx(|zeta| / sqrt 2)`` and branches on the sign of zeta with
``torch.where``: the textbook stable form. Ours avoids ``erfcx`` (not
vectorised on CPU) and ``torch.where`` (see ``functional.relu_moment_terms``).
Cases are interleaved round by round; medians are printed.

Inputs: ``--spread wide`` (default) draws mu ~ N(0, 4) and sigma ~ U(0.1, 1.1),
so 14% of |mu / sigma| lie above 7, where ours switches to the continued
fraction; ``--spread training`` draws sigma ~ U(0.5, 1.5), 0.9% above 7, about
as in a G_relu-VAE's training batches (0.05-0.7% measured).

    PYTHONPATH=src python benchmarks/bench_relu_moments.py [--shape 1000 512] [--rounds 25] [--spread wide|training]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from poissonvae.functional import relu_moments


def erfcx_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The comparator: Mills ratio from erfcx, the two signs by torch.where; autograd backward."""
    zeta = mu / sigma
    a = zeta.abs()
    phi = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    r = math.sqrt(math.pi / 2) * torch.special.erfcx(a / math.sqrt(2))
    q = phi * r
    p = 1 - q
    mean_pos = zeta * p + phi
    var_pos = zeta * zeta * p * q + p - zeta * phi * (p - q) - phi * phi
    mean_neg = phi * (1 - a * r)
    var_neg = phi * ((a * a + 1) * r - a) - mean_neg * mean_neg
    positive = zeta >= 0
    mean = sigma * torch.where(positive, mean_pos, mean_neg)
    var = sigma * sigma * torch.where(positive, var_pos, var_neg).clamp(min=0)
    return mean, var


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=[1000, 512])
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--spread", choices=("wide", "training"), default="wide")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    mu = (torch.randn(*args.shape, generator=g) * 2).requires_grad_()
    low = 0.1 if args.spread == "wide" else 0.5
    sigma = (torch.rand(*args.shape, generator=g) + low).requires_grad_()
    with torch.no_grad():  # same values, to float32 precision
        m1, v1 = relu_moments(mu.double(), sigma.double())
        m2, v2 = erfcx_moments(mu.double(), sigma.double())
        agree = max(float((m1 - m2).abs().max()), float((v1 - v2).abs().max()))

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(mu, sigma)
        return run

    def both(fn):
        def run():
            m, v = fn(mu, sigma)
            torch.autograd.grad((m + v).sum(), (mu, sigma))
        return run

    cases = {"ours, forward": forward(relu_moments), "erfcx + where, forward": forward(erfcx_moments),
             "ours, forward + backward": both(relu_moments), "erfcx + where, forward + backward": both(erfcx_moments)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; shape {tuple(args.shape)} float32; float64 max |difference| {agree:.1e}; "
          f"|zeta| > 7: {float(((mu / sigma).abs() > 7).float().mean()):.2%}")
    for name, ts in times.items():
        print(f"{name:36s} {statistics.median(ts) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
