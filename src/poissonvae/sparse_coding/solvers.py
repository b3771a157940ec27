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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .core import METHODS, InferInfo, check_step, lipschitz, relative_change, soft_threshold, validate

CHECK_EVERY = 10


def _gradient_map(x: Tensor, dictionary: Tensor, s: float) -> Callable[[Tensor | None], Tensor]:
    """``z -> z - s grad(z) = z + s (x - z Phi^T) Phi`` for rows ``z`` ``(B, K)``:
    one step of gradient descent on ``1/2 ||x - Phi z||^2``. ``None`` stands for
    ``z = 0`` and costs no product (the usual cold start).

    With ``K <= 2D`` it is one fused product ``z (I - s Phi^T Phi) + s x Phi``
    (``B K^2`` multiply-adds); for larger K the two thin products through Phi
    (``2 B D K``) are cheaper."""
    d, k = dictionary.shape
    c = s * (x @ dictionary)
    if k <= 2 * d:
        m = torch.eye(k, dtype=x.dtype, device=x.device) - s * (dictionary.T @ dictionary)
        return lambda z: c.clone() if z is None else torch.addmm(c, z, m)
    phi_t = dictionary.T

    def step(z: Tensor | None) -> Tensor:
        if z is None:
            return c.clone()
        return torch.addmm(z, torch.addmm(x, z, phi_t, alpha=-1.0), dictionary, alpha=s)

    return step


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
    """What ISTA and FISTA share: checked inputs, the gradient map at step
    ``s`` (default ``1/L``), the threshold ``s * penalty`` and the start codes."""
    _no_tau(tau, method)
    x, dictionary, z0 = validate(x, dictionary, penalty, max_iter, tol, z0)
    lip = lipschitz(dictionary)
    s = 1.0 / lip if step is None else check_step(step, lip, "step")
    return _gradient_map(x, dictionary, s), s * float(penalty), _start(x, dictionary.shape[1], z0, nonnegative), x, z0


@torch.no_grad()
def ista(x: Tensor, dictionary: Tensor, penalty: float, nonnegative: bool = False, max_iter: int = 1000,
         tol: float = 1e-6, step: float | None = None, tau: float | None = None, z0: Tensor | None = None,
         return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """ISTA (Daubechies et al. 2004): ``z <- T_{step*penalty}(z - step grad)``,
    proximal gradient descent on E. ``step`` defaults to ``1/L`` (L the largest
    eigenvalue of ``Phi^T Phi``), for which E decreases monotonically."""
    forward, thr, z, x, z0 = _proximal_setup("ista", x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0)
    cold = z0 is None  # z = 0: the first step needs no product

    def advance() -> None:
        nonlocal z, cold
        z = soft_threshold(forward(None if cold else z), thr, nonnegative)
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
    forward, thr, z, x, z0 = _proximal_setup("fista", x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0)
    y = z.clone()
    t = x.new_ones(x.shape[0], 1)
    cold = z0 is None  # y = 0: the first step needs no product

    def advance() -> None:
        nonlocal z, y, t, cold
        z_new = soft_threshold(forward(None if cold else y), thr, nonnegative)
        cold = False
        delta = z_new - z
        restart = torch.linalg.vecdot(y - z_new, delta).unsqueeze(-1) > 0
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        momentum = torch.where(restart, 0.0, (t - 1.0) / t_new)
        t = torch.where(restart, 1.0, t_new)
        y = torch.addcmul(z_new, momentum, delta)
        z = z_new

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
    sub-threshold drive."""
    x, dictionary, z0 = validate(x, dictionary, penalty, max_iter, tol, z0)
    lip = lipschitz(dictionary)
    dt = 1.0 if step is None else float(step)
    time_constant = lip if tau is None else float(tau)
    if not (dt > 0 and time_constant > 0):
        raise ValueError(f"LCA step and tau must be positive, got step={dt}, tau={time_constant}")
    eta = check_step(dt / time_constant, max(lip, 1.0), "LCA step/tau")
    forward = _gradient_map(x, dictionary, eta)
    lam = float(penalty)
    a = _start(x, dictionary.shape[1], z0, nonnegative)
    u = a + lam * torch.sign(a)  # the potential whose threshold is z0 (u = 0 without z0)
    cold = z0 is None  # a = 0: the first step needs no product

    def advance() -> None:
        nonlocal u, a, cold
        # u - a = u - T(u): the part of u below threshold, clamp(u, -lam, lam) (min(u, lam) if nonnegative)
        leak = u.clamp(max=lam) if nonnegative else u.clamp(-lam, lam)
        u = forward(None if cold else a).add_(leak, alpha=1.0 - eta)
        cold = False
        a = soft_threshold(u, lam, nonnegative)

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
