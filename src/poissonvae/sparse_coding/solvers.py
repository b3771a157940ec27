"""Sparse-coding inference: ISTA, FISTA and LCA, batched, in pure PyTorch.

All three minimise, independently for each sample, the objective of P-VAE
eq. (1) with a 1/2 (see :mod:`.core`):

    E(z) = 1/2 ||x - Phi z||^2 + penalty ||z||_1     (and z >= 0 if nonnegative)

Shapes: ``x`` ``(B, D)``, ``dictionary`` ``(D, K)``, returned codes ``(B, K)``.
They run on ``x``'s device in ``x``'s dtype, without autograd. FISTA, with its
per-sample backtracking, lives in :mod:`.fista_solver`; ISTA and LCA are here.

Stopping rule (all methods, :func:`.core.iterate`): every ``CHECK_EVERY``
iterations, stop when ``max_b ||w_t - w_{t-1}|| / max(||w_{t-1}||, eps) < tol``
where ``w`` is the code for ISTA/FISTA and the membrane potential ``u`` for LCA
(its codes can sit still at zero while ``u`` is still charging towards
threshold); otherwise stop at ``max_iter``. Checking only every few iterations
keeps host syncs rare.

Cost. One iteration of any method is one gradient step, dominated by one
product of the codes (see :mod:`.products`, which multiplies sparse codes in CSR
form on the CPU); everything else is a handful of elementwise passes, done here
in place on buffers allocated once per call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .core import METHODS, InferInfo, check_step, iterate, lipschitz, no_tau, start_codes, validate
from .fista_solver import fista
from .products import GradientStep, code_gram


def _shrink_(v: Tensor, threshold: float, nonnegative: bool, scratch: Tensor) -> Tensor:
    """Soft threshold in place (core.soft_threshold without allocating):
    ``v - clamp(v, -t, t)`` is ``sign(v) max(|v| - t, 0)`` exactly, term by term;
    ``max(v - t, 0)`` when ``nonnegative``. ``scratch`` is a buffer like ``v``."""
    if nonnegative:
        return v.sub_(threshold).clamp_(min=0.0)
    torch.clamp(v, -threshold, threshold, out=scratch)
    return v.sub_(scratch)


def _proximal_setup(x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0):
    """ISTA's set-up: checked inputs, the gradient step at step size ``s`` (default
    ``1/L``), the threshold ``s * penalty`` and the start codes."""
    no_tau(tau, "ista")
    x, dictionary, z0 = validate(x, dictionary, penalty, max_iter, tol, z0)
    gram = code_gram(dictionary)
    lip = lipschitz(dictionary, gram)
    s = 1.0 / lip if step is None else check_step(step, lip, "step")
    codes = start_codes(x, dictionary.shape[1], z0, nonnegative)
    return GradientStep(x, dictionary, s, gram), s * float(penalty), codes, z0


@torch.no_grad()
def ista(x: Tensor, dictionary: Tensor, penalty: float, nonnegative: bool = False, max_iter: int = 1000,
         tol: float = 1e-6, step: float | None = None, tau: float | None = None, z0: Tensor | None = None,
         return_info: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """ISTA (Daubechies et al. 2004): ``z <- T_{step*penalty}(z - step grad)``,
    proximal gradient descent on E. ``step`` defaults to ``1/L`` (L the largest
    eigenvalue of ``Phi^T Phi``), for which E decreases monotonically."""
    forward, thr, z, z0 = _proximal_setup(x, dictionary, penalty, nonnegative, max_iter, tol, step, tau, z0)
    v, scratch = torch.empty_like(z), torch.empty_like(z)
    cold = z0 is None  # z = 0: the first step needs no product

    def advance() -> None:
        nonlocal z, v, cold
        _shrink_(forward(None if cold else z, out=v), thr, nonnegative, scratch)
        z, v = v, z  # the new codes; the old buffer takes the next step
        cold = False

    info = iterate(advance, lambda: z, max_iter, tol)
    return (z, info) if return_info else z


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
    gram = code_gram(dictionary)
    lip = lipschitz(dictionary, gram)
    dt = 1.0 if step is None else float(step)
    time_constant = lip if tau is None else float(tau)
    if not (dt > 0 and time_constant > 0):
        raise ValueError(f"LCA step and tau must be positive, got step={dt}, tau={time_constant}")
    eta = check_step(dt / time_constant, max(lip, 1.0), "LCA step/tau")
    forward = GradientStep(x, dictionary, eta, gram)
    lam = float(penalty)
    a = start_codes(x, dictionary.shape[1], z0, nonnegative)
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

    info = iterate(advance, lambda: u, max_iter, tol)
    return (a, info) if return_info else a


_SOLVERS = {"fista": fista, "ista": ista, "lca": lca}  # keys are core.METHODS


def infer(x: Tensor, dictionary: Tensor, penalty: float, method: str = "fista", nonnegative: bool = False,
          max_iter: int = 1000, tol: float = 1e-6, step: float | None = None, tau: float | None = None,
          z0: Tensor | None = None, return_info: bool = False,
          compile: bool = False) -> Tensor | tuple[Tensor, InferInfo]:
    """Sparse codes ``(B, K)`` of ``x`` ``(B, D)`` under ``dictionary`` ``(D, K)``:
    the minimiser of ``1/2 ||x - Phi z||^2 + penalty ||z||_1`` per sample (P-VAE
    eq. (1) with a 1/2; scikit-learn's ``Lasso(alpha=penalty / D)``), by
    ``method`` in ``{"fista", "ista", "lca"}``; ``z >= 0`` when ``nonnegative``.

    ``max_iter`` caps iterations; ``tol`` is the relative-change stopping
    threshold (module docstring); ``step``/``tau`` see :func:`ista`,
    :func:`fista`, :func:`lca`; ``z0`` ``(B, K)`` warm-starts. With
    ``return_info`` returns ``(codes, InferInfo)``. ``compile`` (FISTA only)
    fuses its elementwise work with ``torch.compile`` (see :mod:`.fista_solver`).
    Raises ``ValueError`` on bad input (shapes, NaN, negative penalty, unknown
    method, ``compile`` with another method)."""
    if method not in _SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    kwargs = dict(nonnegative=nonnegative, max_iter=max_iter, tol=tol, step=step, tau=tau, z0=z0,
                  return_info=return_info)
    if compile:
        if method != "fista":
            raise ValueError(f"compile=True fuses FISTA's elementwise kernels; {method} has none to fuse")
        kwargs["compile"] = True
    return _SOLVERS[method](x, dictionary, penalty, **kwargs)
