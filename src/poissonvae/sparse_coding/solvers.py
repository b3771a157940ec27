"""Sparse-coding inference: ISTA, FISTA and LCA, batched, in pure PyTorch.

All three minimise, independently for each sample, the objective of P-VAE
eq. (1) with a 1/2 (see :mod:`.core`):

    E(z) = 1/2 ||x - Phi z||^2 + penalty ||z||_1     (and z >= 0 if nonnegative)

Shapes: ``x`` ``(B, D)``, ``dictionary`` ``(D, K)``, returned codes ``(B, K)``.
They run on ``x``'s device in ``x``'s dtype, without autograd.

Stopping rule (all methods): every ``CHECK_EVERY`` iterations, stop when
``max_b ||w_t - w_{t-1}|| / max(||w_{t-1}||, eps) < tol`` where ``w`` is the
code for ISTA/FISTA and the membrane potential ``u`` for LCA (its codes can sit
still at zero while ``u`` is still charging towards threshold); otherwise stop
at ``max_iter``. Checking only every few iterations keeps host syncs rare.

Cost. One iteration of any method is one gradient step, dominated by one
``(B, K) x (K, K)`` product (or two through Phi when ``K > 2D``); everything
else is a handful of elementwise passes, done in place on buffers allocated
once per call. On the CPU the product exploits the sparsity of the codes: when
fewer than ``SPARSE_BELOW[dtype]`` of the entries are non-zero, the code matrix is
packed as CSR and multiplied sparse x dense (the codes are sparse by design,
and LCA's start from zero and fill in slowly). The sparse and dense products
compute the same sums in another order, so results agree to rounding.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .core import METHODS, InferInfo, check_step, lipschitz, relative_change, validate

CHECK_EVERY = 10
# Density of non-zeros below which the CPU gradient step multiplies a CSR copy of
# the codes instead of the dense matrix, per dtype. Measured (B = 1000, K = 512,
# AMD EPYC, 1-2 threads): packing + sparse product cost about 0.7 of the dense
# float32 product at 7.5% non-zeros and break even at 10-12%; float64's dense
# product is twice as slow, the sparse one less so, and they break even near 17%.
SPARSE_BELOW = {torch.float32: 0.1, torch.float64: 0.15}


def _csr_rows(z: Tensor) -> Tensor | None:
    """``z`` ``(B, K)`` packed as a CSR matrix when it is sparse enough for the
    sparse product to pay (see ``SPARSE_BELOW``), ``z`` itself otherwise, and
    ``None`` when ``z`` is all zeros (the product is then zero). CPU only: on a
    GPU the dense product is fast and the count would cost a host sync."""
    below = SPARSE_BELOW.get(z.dtype, 0.0)
    if z.device.type != "cpu" or below <= 0:
        return z
    n_rows, k = z.shape
    # The index bookkeeping runs in NumPy on a zero-copy view: its comparison,
    # popcount and flatnonzero on a boolean mask are 3-4x faster than
    # torch.count_nonzero + torch.nonzero on CPU, and here they cost as much as
    # the sparse product itself.
    values = z.numpy().reshape(-1)
    mask = values != 0
    nnz = int(np.count_nonzero(mask))
    if nnz == 0:
        return None
    if nnz >= below * values.size:
        return z
    flat = np.flatnonzero(mask)  # row-major order is CSR order
    crow = np.searchsorted(flat, np.arange(0, values.size + 1, k))  # entries before each row start
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(flat % k),
                                       torch.from_numpy(values[flat]), (n_rows, k), check_invariants=False)


class _GradientStep:
    """``z -> z - s grad(z) = z + s Phi^T (x - Phi z)`` for code rows ``z``
    ``(B, K)``: one step of gradient descent on ``1/2 ||x - Phi z||^2``, written
    into a caller's buffer. ``None`` stands for ``z = 0`` and costs no product
    (the usual cold start).

    With ``K <= 2D`` it works in code space: ``c + z M`` with ``c = s Phi^T x``
    and ``M = I - s Phi^T Phi`` formed once (``B K^2`` multiply-adds per step);
    for larger K the two thin products through Phi (``2 B D K``) are cheaper."""

    def __init__(self, x: Tensor, dictionary: Tensor, s: float) -> None:
        d, k = dictionary.shape
        self.s = s
        self.c = torch.mm(x, dictionary).mul_(s)  # s Phi^T x, (B, K)
        self.gram = k <= 2 * d
        if self.gram:
            self.m = torch.eye(k, dtype=x.dtype, device=x.device) - s * (dictionary.T @ dictionary)
        else:
            self.x, self.phi, self.phi_t = x, dictionary, dictionary.T
            self.residual = x.new_empty(x.shape)  # (B, D) buffer

    def __call__(self, z: Tensor | None, out: Tensor) -> Tensor:
        """Write the step from ``z`` into ``out`` (``(B, K)``, must not alias ``z``); returns ``out``."""
        packed = None if z is None else _csr_rows(z)
        if packed is None:
            return out.copy_(self.c)
        if self.gram:
            return torch.addmm(self.c, packed, self.m, out=out)
        torch.addmm(self.x, packed, self.phi_t, alpha=-1.0, out=self.residual)  # x - Phi z
        return torch.addmm(z, self.residual, self.phi, alpha=self.s, out=out)


def _shrink_(v: Tensor, threshold: float, nonnegative: bool, scratch: Tensor) -> Tensor:
    """Soft threshold in place (core.soft_threshold without allocating):
    ``v - clamp(v, -t, t)`` is ``sign(v) max(|v| - t, 0)`` exactly, term by term;
    ``max(v - t, 0)`` when ``nonnegative``. ``scratch`` is a buffer like ``v``."""
    if nonnegative:
        return v.sub_(threshold).clamp_(min=0.0)
    torch.clamp(v, -threshold, threshold, out=scratch)
    return v.sub_(scratch)


def _iterate(advance: Callable[[], None], watched: Callable[[], Tensor], max_iter: int, tol: float) -> InferInfo:
    """Call ``advance`` up to ``max_iter`` times, applying the stopping rule to
    ``watched()`` every ``CHECK_EVERY`` iterations (and at the last one)."""
    rel = math.nan
    for it in range(1, max_iter + 1):
        check = (tol > 0 and it % CHECK_EVERY == 0) or it == max_iter  # tol = 0: fixed iteration count
        prev = watched().clone() if check else None
        advance()
        if prev is not None:
            rel = relative_change(watched(), prev)
            if rel < tol:
                return InferInfo(it, True, rel)
    return InferInfo(max_iter, False, rel)


def _start(x: Tensor, k: int, z0: Tensor | None, nonnegative: bool) -> Tensor:
    if z0 is None:
        return x.new_zeros(x.shape[0], k)
    return z0.clamp(min=0.0) if nonnegative else z0.clone()


def _finish(z: Tensor, info: InferInfo, return_info: bool) -> Tensor | tuple[Tensor, InferInfo]:
    return (z, info) if return_info else z


def _no_tau(tau: float | None, method: str) -> None:
    if tau is not None:
        raise ValueError(f"tau is the LCA time constant; {method} takes a step size (step) only")


def _proximal_setup(method, x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0):
    """What ISTA and FISTA share: checked inputs, the gradient step at step size
    ``s`` (default ``1/L``), the threshold ``s * penalty`` and the start codes."""
    _no_tau(tau, method)
    x, dictionary, z0 = validate(x, dictionary, penalty, max_iter, tol, z0)
    lip = lipschitz(dictionary)
    s = 1.0 / lip if step is None else check_step(step, lip, "step")
    return _GradientStep(x, dictionary, s), s * float(penalty), _start(x, dictionary.shape[1], z0, nonnegative), z0


@torch.no_grad()
def ista(x: Tensor, dictionary: Tensor, penalty: float, nonnegative: bool = False, max_iter: int = 1000,
         tol: float = 1e-6, step: float | None = None, tau: float | None = None, z0: Tensor | None = None,
         return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """ISTA (Daubechies et al. 2004): ``z <- T_{step*penalty}(z - step grad)``,
    proximal gradient descent on E. ``step`` defaults to ``1/L`` (L the largest
    eigenvalue of ``Phi^T Phi``), for which E decreases monotonically."""
    forward, thr, z, z0 = _proximal_setup("ista", x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0)
    v, scratch = torch.empty_like(z), torch.empty_like(z)
    cold = z0 is None  # z = 0: the first step needs no product

    def advance() -> None:
        nonlocal z, v, cold
        _shrink_(forward(None if cold else z, out=v), thr, nonnegative, scratch)
        z, v = v, z  # the new codes; the old buffer takes the next step
        cold = False

    info = _iterate(advance, lambda: z, max_iter, tol)
    return _finish(z, info, return_info)


@torch.no_grad()
def fista(x: Tensor, dictionary: Tensor, penalty: float, nonnegative: bool = False, max_iter: int = 1000,
          tol: float = 1e-6, step: float | None = None, tau: float | None = None, z0: Tensor | None = None,
          return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """FISTA (Beck & Teboulle 2009): the ISTA step taken at an extrapolated point
    ``y = z_t + (t_k - 1)/t_{k+1} (z_t - z_{t-1})``, O(1/k^2) instead of O(1/k).

    With the gradient restart of O'Donoghue & Candes (2015), per sample: when
    ``<y - z_{t+1}, z_{t+1} - z_t> > 0`` the momentum points uphill, so that
    sample's momentum is reset. This removes FISTA's ripples once the support
    settles (the lasso is then locally strongly convex) and gives a linear rate.
    ``step`` defaults to ``1/L`` (FISTA's guarantee needs ``step <= 1/L``)."""
    forward, thr, z, z0 = _proximal_setup("fista", x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0)
    y, v, delta, scratch = z.clone(), torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
    t = z.new_ones(z.shape[0], 1)
    cold = z0 is None  # y = 0: the first step needs no product

    def advance() -> None:
        nonlocal z, v, t, cold
        z_new = _shrink_(forward(None if cold else y, out=v), thr, nonnegative, scratch)
        cold = False
        torch.sub(z_new, z, out=delta)
        # <y - z_new, delta> per sample, as linalg.vecdot computes it (product, then sum) without allocating
        restart = torch.sub(y, z_new, out=scratch).mul_(delta).sum(-1, keepdim=True) > 0
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        momentum = torch.where(restart, 0.0, (t - 1.0) / t_new)
        t = torch.where(restart, 1.0, t_new)
        torch.addcmul(z_new, momentum, delta, out=y)
        z, v = z_new, z  # the old codes' buffer takes the next step

    info = _iterate(advance, lambda: z, max_iter, tol)
    return _finish(z, info, return_info)


@torch.no_grad()
def lca(x: Tensor, dictionary: Tensor, penalty: float, nonnegative: bool = False, max_iter: int = 1000,
        tol: float = 1e-6, step: float | None = None, tau: float | None = None, z0: Tensor | None = None,
        return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """Locally competitive algorithm (Rozell et al. 2008), forward-Euler steps of

        tau du/dt = Phi^T x - u - (Phi^T Phi - I) a,    a = T_penalty(u)

    (membrane potentials u, codes a; T the soft threshold, or ReLU(u - penalty)
    when ``nonnegative``). A fixed point satisfies the lasso's optimality
    conditions, so LCA minimises E. ``step`` is the Euler step dt (default 1)
    and ``tau`` the time constant (default ``L``), so each update moves u by
    ``eta = step / tau`` (default ``1/L``) of the way along du/dt.

    Stability: on a fixed active set the update is ``u <- u - eta Phi_A^T Phi_A
    u + const``, stable iff ``eta < 2 / lambda_max(Phi_A^T Phi_A)``; inactive
    units decay by ``(1 - eta)``, stable iff ``eta < 2``. ``eta < 2 / max(L, 1)``
    covers both for every active set; ``eta = 1/L`` is the largest step that
    damps every mode without overshoot.

    Rewritten as ``u <- (1 - eta)(u - a) + [a + eta Phi^T (x - Phi a)]`` it costs
    one gradient step, the same as ISTA: LCA is ISTA with a leaky memory of the
    sub-threshold drive. Only the active units' codes enter the product, so
    while few units are above threshold (early on, from a cold start) the step
    is cheap (sparse product, see the module docstring)."""
    x, dictionary, z0 = validate(x, dictionary, penalty, max_iter, tol, z0)
    lip = lipschitz(dictionary)
    dt = 1.0 if step is None else float(step)
    time_constant = lip if tau is None else float(tau)
    if not (dt > 0 and time_constant > 0):
        raise ValueError(f"LCA step and tau must be positive, got step={dt}, tau={time_constant}")
    eta = check_step(dt / time_constant, max(lip, 1.0), "LCA step/tau")
    forward = _GradientStep(x, dictionary, eta)
    lam = float(penalty)
    a = _start(x, dictionary.shape[1], z0, nonnegative)
    u = a + lam * torch.sign(a)  # the potential whose threshold is z0 (u = 0 without z0)

    def below(out: Tensor) -> Tensor:
        # u - a = u - T(u): the part of u below threshold, clamp(u, -lam, lam) (min(u, lam) if nonnegative)
        return torch.clamp(u, max=lam, out=out) if nonnegative else torch.clamp(u, -lam, lam, out=out)

    leak = below(torch.empty_like(u))
    cold = z0 is None  # a = 0: the first step needs no product

    def advance() -> None:
        nonlocal cold
        forward(None if cold else a, out=u).add_(leak, alpha=1.0 - eta)  # a and leak are from the old u
        cold = False
        torch.sub(u, below(out=leak), out=a)  # a = u - clamp(u) = T(u), exactly

    info = _iterate(advance, lambda: u, max_iter, tol)
    return _finish(a, info, return_info)


_SOLVERS = {"fista": fista, "ista": ista, "lca": lca}  # keys are core.METHODS


def infer(x: Tensor, dictionary: Tensor, penalty: float, method: str = "fista", nonnegative: bool = False,
          max_iter: int = 1000, tol: float = 1e-6, step: float | None = None, tau: float | None = None,
          z0: Tensor | None = None, return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """Sparse codes ``(B, K)`` of ``x`` ``(B, D)`` under ``dictionary`` ``(D, K)``:
    the minimiser of ``1/2 ||x - Phi z||^2 + penalty ||z||_1`` per sample (P-VAE
    eq. (1) with a 1/2; scikit-learn's ``Lasso(alpha=penalty / D)``), by
    ``method`` in ``{"fista", "ista", "lca"}``; ``z >= 0`` when ``nonnegative``.

    ``max_iter`` caps iterations; ``tol`` is the relative-change stopping
    threshold (module docstring); ``step``/``tau`` see :func:`ista`,
    :func:`fista`, :func:`lca`; ``z0`` ``(B, K)`` warm-starts. With
    ``return_info`` returns ``(codes, InferInfo)``. Raises ``ValueError`` on
    bad input (shapes, NaN, negative penalty, unknown method)."""
    if method not in _SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return _SOLVERS[method](x, dictionary, penalty, nonnegative=nonnegative, max_iter=max_iter, tol=tol,
                            step=step, tau=tau, z0=z0, return_info=return_info)
