"""FISTA / LCA / ISTA (ours, PyTorch) against scikit-learn's Lasso and SparseCoder
at equal objective value, on the same whitened patches and dictionary in one run.

    PYTHONPATH=src python benchmarks/bench_sparse_coding.py [--n 1000] [--K 512 256]
        [--density 0.075] [--gaps 1e-3] [--threads 2] [--dictionary learned|random]

Problem: per patch, E(z) = 1/2 ||x - Phi z||^2 + penalty ||z||_1 (P-VAE eq. (1)
with a 1/2), unconstrained sign. scikit-learn's ``Lasso(alpha=penalty / D)``
minimises E / D (its loss carries 1/(2 n_samples), n_samples = D pixels) and
fits the columns of a multi-output y independently; ``SparseCoder(
transform_alpha=penalty, transform_algorithm="lasso_cd")`` divides its alpha
by D itself, so it minimises the same E. The penalty is set so that the
optimal codes have about ``--density`` non-zeros.

Our methods run with their defaults, plus FISTA with ``compile=True`` (its
elementwise work as torch.compile'd kernels; compiled once per process before
timing) and LCA with ``tau = L/1.8`` (Euler step 1.8/L, inside its stability
bound 2/L, against the default 1/L).

"Equal objective": E* = per-sample minimum over a tight scikit-learn fit and
a long float64 FISTA run. For each method the cheapest setting on its ladder
(iterations for ours, CD sweeps for scikit-learn) whose mean objective is within
``gap`` (relative) of mean E* is then timed in ``--repeats`` interleaved rounds
(every method once per round, so a change of machine load hits all alike);
the table shows the best and the median round and the speed-up of each over the
fastest scikit-learn method, from the best and from the median rounds.
Objectives are evaluated in float64 whatever dtype a method ran in.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import SparseCoder
from sklearn.linear_model import Lasso

from poissonvae.data import DataConfig, prepare_patches
from poissonvae.sparse_coding import infer, learn_dictionary, lipschitz, objective, random_dictionary

# Settings tried, cheapest first. Ours step by one iteration up to 30 (as scikit-learn's
# ladder steps by one sweep up to 5, each sweep costing several of our iterations), so
# that neither side is charged for a coarse ladder.
OURS_LADDER = [*range(2, 31), 35, 40, 50, 60, 75, 100, 150, 200, 300, 500, 1000]
SKLEARN_LADDER = [1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100, 300, 1000]
LABELS = {"tau": "L/1.8", "compile": "True"}  # how the extra settings of our methods are named


def get_dictionary(kind: str, x_train: np.ndarray, K: int, cache_dir: Path) -> torch.Tensor:
    """Unit-norm (D, K) float64 dictionary: random, or from a short learn_dictionary
    run (FISTA, 1 epoch over 4000 training patches; cached so reruns share it)."""
    D = x_train.shape[1]
    if kind == "random":
        return random_dictionary(D, K, seed=0, dtype=torch.float64)
    path = cache_dir / f"bench_sparse_coding_dict_K{K}.pt"
    if path.is_file():
        return torch.load(path).double()
    phi, _ = learn_dictionary(torch.from_numpy(x_train[:4000]), K, penalty=1.0, method="fista",
                              nonnegative=False, epochs=1, batch_size=250, lr=0.1, max_iter=50, tol=1e-3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(phi.double(), path)
    return phi.double()


def calibrate_penalty(x: torch.Tensor, phi: torch.Tensor, density: float) -> float:
    """Bisect log(penalty) so FISTA codes of the first 200 patches have ``density`` non-zeros."""
    lo, hi = -4.0, 4.0
    xs = x[:200].float()
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        z = infer(xs, phi.float(), float(np.exp(mid)), method="fista", max_iter=300, tol=1e-7)
        lo, hi = (mid, hi) if float((z != 0).float().mean()) > density else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def sklearn_lasso(x: np.ndarray, phi: np.ndarray, penalty: float, sweeps: int, tol: float = 1e-4,
                  precompute: bool = False) -> np.ndarray:
    model = Lasso(alpha=penalty / phi.shape[0], fit_intercept=False, max_iter=sweeps, tol=tol,
                  precompute=precompute)
    return model.fit(phi, x.T).coef_


def sparse_coder(x: np.ndarray, phi: np.ndarray, penalty: float, sweeps: int, n_jobs: int = 1) -> np.ndarray:
    coder = SparseCoder(dictionary=phi.T, transform_algorithm="lasso_cd", transform_alpha=penalty,
                        transform_max_iter=sweeps, n_jobs=n_jobs)
    return coder.transform(x)


def build_methods(x64: torch.Tensor, phi: torch.Tensor, pen: float) -> dict[str, tuple]:
    """name -> (function of the ladder setting returning codes, ladder)."""
    methods: dict[str, tuple] = {}
    for dt in (np.float64, np.float32):
        xn, pn, tag = x64.numpy().astype(dt), phi.numpy().astype(dt), "f64" if dt is np.float64 else "f32"
        methods[f"sklearn Lasso {tag}"] = (lambda s, xn=xn, pn=pn: sklearn_lasso(xn, pn, pen, s), SKLEARN_LADDER)
        methods[f"sklearn Lasso {tag} precompute"] = (
            lambda s, xn=xn, pn=pn: sklearn_lasso(xn, pn, pen, s, precompute=True), SKLEARN_LADDER)
    xn, pn = x64.numpy(), phi.numpy()
    methods["sklearn SparseCoder f64"] = (lambda s: sparse_coder(xn, pn, pen, s), SKLEARN_LADDER)
    methods["sklearn SparseCoder f64 n_jobs=2"] = (lambda s: sparse_coder(xn, pn, pen, s, n_jobs=2), SKLEARN_LADDER)
    tau = lipschitz(phi) / 1.8
    for dtype in (torch.float64, torch.float32):
        xd, pd_, tag = x64.to(dtype), phi.to(dtype), "f64" if dtype == torch.float64 else "f32"
        for label, method, extra in (("FISTA", "fista", {}), ("FISTA", "fista", {"compile": True}),
                                     ("LCA", "lca", {}), ("LCA", "lca", {"tau": tau}), ("ISTA", "ista", {})):
            name = f"{label} {tag}" + "".join(f" {k}={LABELS[k]}" for k in extra)
            methods[name] = (lambda s, xd=xd, pd_=pd_, method=method, extra=extra: infer(
                xd, pd_, pen, method, max_iter=s, tol=0.0, **extra), OURS_LADDER)
    return methods


def run_target(methods: dict[str, tuple], gap_of, target: float, repeats: int) -> None:
    """Find each method's cheapest setting within ``target``, time all in interleaved rounds, print."""
    chosen = {}
    for name, (fn, ladder) in methods.items():
        chosen[name] = next((s for s in ladder if gap_of(fn(s))[1] <= target), None)
    times: dict[str, list[float]] = {name: [] for name in methods}
    results = {}
    for _ in range(repeats + 1):  # round 0 is a warm-up (thread pools, joblib workers, allocator)
        for name, (fn, _) in methods.items():
            if chosen[name] is None:
                continue
            t0 = time.perf_counter()
            results[name] = fn(chosen[name])
            times[name].append(time.perf_counter() - t0)
    best = {name: min(t[1:]) for name, t in times.items() if t}
    median = {name: statistics.median(t[1:]) for name, t in times.items() if t}
    sk_best = min(v for name, v in best.items() if name.startswith("sklearn"))
    sk_median = min(v for name, v in median.items() if name.startswith("sklearn"))
    print(f"\n  target relative gap {target:.0e}:")
    header = ("method", "setting", "best (s)", "median", "mean E", "gap", "x best", "x median")
    print("  {:34s} {:>7s} {:>9s} {:>8s} {:>11s} {:>8s} {:>7s} {:>8s}".format(*header))
    for name in methods:
        if name not in best:
            print(f"  {name:34s} {'-':>7s}  (no ladder setting reached the target)")
            continue
        e, g = gap_of(results[name])
        print(f"  {name:34s} {chosen[name]:7d} {best[name]:9.4f} {median[name]:8.4f} {e:11.5f} {g:8.1e} "
              f"{sk_best / best[name]:6.1f}x {sk_median / median[name]:7.1f}x")
    print("  (setting: iterations for ours, max CD sweeps for sklearn; x best / x median: speed-up over the\n"
          "   fastest sklearn method, from the best rounds / from the median rounds)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="number of validation patches coded")
    p.add_argument("--K", type=int, nargs="+", default=[512, 256])
    p.add_argument("--density", type=float, default=0.075, help="target fraction of non-zero codes")
    p.add_argument("--gaps", type=float, nargs="+", default=[1e-3], help="relative objective gaps to E*")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dictionary", choices=("learned", "random"), default="learned")
    p.add_argument("--cache-dir", default=".cache/poissonvae")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # sklearn ConvergenceWarning at capped sweeps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; torch {torch.__version__} ({args.threads} threads); n={args.n}")
    patches = prepare_patches(DataConfig(n_train=20_000, n_val=max(args.n, 2000), cache_dir=args.cache_dir))
    x64 = torch.from_numpy(patches.val[: args.n]).double()
    for K in args.K:
        phi = get_dictionary(args.dictionary, patches.train, K, Path(args.cache_dir))
        pen = calibrate_penalty(x64, phi, args.density)

        def gap_of(z) -> tuple[float, float]:
            e = objective(x64, phi, torch.as_tensor(np.asarray(z)).double(), pen).mean().item()
            return e, (e - e_star) / e_star

        z_sk = sklearn_lasso(x64.numpy(), phi.numpy(), pen, sweeps=100_000, tol=1e-10)
        z_fi = infer(x64, phi, pen, method="fista", max_iter=20_000, tol=1e-10)
        e_sk, e_fi = objective(x64, phi, torch.from_numpy(z_sk), pen), objective(x64, phi, z_fi, pen)
        e_star = torch.minimum(e_sk, e_fi).mean().item()
        print(f"\nK={K} ({args.dictionary} dictionary, L={lipschitz(phi):.3f}), penalty={pen:.4f} "
              f"(sklearn Lasso alpha={pen / phi.shape[0]:.3e}), non-zeros {float((z_fi != 0).double().mean()):.3f}, "
              f"E*={e_star:.5f}; sklearn-tight vs FISTA-tight max |dE|/E = "
              f"{float(((e_sk - e_fi).abs() / e_fi).max()):.1e}")
        methods = build_methods(x64, phi, pen)
        for target in args.gaps:
            run_target(methods, gap_of, target, args.repeats)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
