"""Sparse-coding solvers, dictionary learning and experiments (issue #5).

Objective throughout: E(z) = 1/2 ||x - Phi z||^2 + penalty ||z||_1 (P-VAE eq. (1)
with a 1/2), which is scikit-learn's Lasso with alpha = penalty / D.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import Lasso

from poissonvae.sparse_coding import (
    COLUMNS,
    amortization_gap,
    best_models,
    code_metrics,
    dictionary_from_weights,
    fig5b,
    infer,
    infer_batched,
    ista,
    learn_dictionary,
    objective,
    penalty_sweep,
    random_dictionary,
)

SOLVERS = ("ista", "fista", "lca")


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny; torch's thread pool only adds overhead (badly so
    when other processes share the two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sparse_problem(nonnegative: bool, D: int = 64, K: int = 32, B: int = 16, nnz: int = 4, noise: float = 1e-3,
                   seed: int = 0):
    """x = Phi z_true + noise, unit-norm Phi (D, K), nnz non-zeros per row of
    z_true with magnitudes in [1, 2] (random signs unless non-negative)."""
    g = torch.Generator().manual_seed(seed)
    phi = random_dictionary(D, K, seed=seed + 100, dtype=torch.float64)
    z = torch.zeros(B, K, dtype=torch.float64)
    for b in range(B):
        support = torch.randperm(K, generator=g)[:nnz]
        mags = 1.0 + torch.rand(nnz, generator=g, dtype=torch.float64)
        signs = torch.ones(nnz, dtype=torch.float64) if nonnegative else torch.randint(0, 2, (nnz,), generator=g) * 2.0 - 1
        z[b, support] = mags * signs
    x = z @ phi.T + noise * torch.randn(B, D, generator=g, dtype=torch.float64)
    return x, phi, z


def lasso_problem(seed: int = 1, D: int = 64, K: int = 96, B: int = 8):
    g = torch.Generator().manual_seed(seed)
    phi = random_dictionary(D, K, seed=seed, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return x, phi


def sklearn_codes(x: torch.Tensor, phi: torch.Tensor, penalty: float, positive: bool) -> torch.Tensor:
    """Per-sample sklearn Lasso at alpha = penalty / D (its 1/(2D) scaling times D is E)."""
    D = phi.shape[0]
    rows = []
    for xb in x.numpy():
        model = Lasso(alpha=penalty / D, fit_intercept=False, tol=1e-10, max_iter=100000, positive=positive)
        rows.append(model.fit(phi.numpy(), xb).coef_)
    return torch.from_numpy(np.stack(rows))


# --- recovery of known sparse codes -------------------------------------------------


@pytest.mark.parametrize("nonnegative", [False, True])
@pytest.mark.parametrize("method", SOLVERS)
def test_recovers_known_sparse_codes(method, nonnegative):
    penalty = 0.02
    x, phi, z_true = sparse_problem(nonnegative)
    z = infer(x, phi, penalty, method=method, nonnegative=nonnegative, max_iter=20000, tol=1e-10)
    # Support exactly right.
    assert torch.equal(z != 0, z_true != 0)
    # L1 shrinkage biases the values by about penalty * ||(Phi_S^T Phi_S)^-1|| (<~ 2 penalty here).
    assert (z - z_true).abs().max() < 3 * penalty
    # Least squares on the found support removes the bias: then only the 1e-3 noise remains.
    debiased = torch.zeros_like(z)
    for b in range(x.shape[0]):
        s = z[b] != 0
        debiased[b, s] = torch.linalg.lstsq(phi[:, s], x[b].unsqueeze(-1)).solution.squeeze(-1)
    assert (debiased - z_true).abs().max() < 5e-3


# --- same minimiser as scikit-learn's Lasso ----------------------------------------------


@pytest.mark.parametrize("nonnegative", [False, True])
@pytest.mark.parametrize("shape", [(64, 96), (16, 48)], ids=["gram-form", "factored-form"])
def test_same_minimiser_as_sklearn_lasso(nonnegative, shape):
    """D=64, K=96 runs the gradient through Phi^T Phi; K > 2D through Phi twice."""
    D, K = shape
    penalty = 1.0 if D == 64 else 0.3
    x, phi = lasso_problem(D=D, K=K)
    ref = sklearn_codes(x, phi, penalty, positive=nonnegative)
    e_ref = objective(x, phi, ref, penalty)
    assert (ref != 0).float().mean() < 0.5  # a genuinely sparse problem
    for method in SOLVERS:
        z = infer(x, phi, penalty, method=method, nonnegative=nonnegative, max_iter=50000, tol=1e-12)
        assert z.dtype == torch.float64
        e = objective(x, phi, z, penalty)
        assert ((e - e_ref).abs() / e_ref).max() < 1e-5, method
        assert (z - ref).abs().max() < 1e-6, method
        if nonnegative:
            assert (z >= 0).all()


def test_sklearn_fits_multi_output_columns_independently():
    """The benchmark fits y = x.T (D, B) in one Lasso call; check that equals per-column fits."""
    x, phi = lasso_problem(B=3)
    multi = Lasso(alpha=1.0 / 64, fit_intercept=False, tol=1e-10, max_iter=100000).fit(phi.numpy(), x.numpy().T)
    single = sklearn_codes(x, phi, 1.0, positive=False).numpy()
    np.testing.assert_allclose(multi.coef_, single, atol=1e-8)


# --- convergence behaviour ------------------------------------------------------------------


def test_ista_objective_decreases_monotonically():
    x, phi = lasso_problem()
    z = torch.zeros(x.shape[0], phi.shape[1], dtype=torch.float64)
    previous = objective(x, phi, z, 1.0)
    for _ in range(60):  # ISTA is memoryless, so one iteration at a time is its trajectory
        z = ista(x, phi, 1.0, max_iter=1, tol=0.0, z0=z)
        current = objective(x, phi, z, 1.0)
        assert (current <= previous + 1e-12).all()
        previous = current


def test_fista_beats_ista_at_equal_iterations():
    x, phi = lasso_problem()
    e_ista = objective(x, phi, infer(x, phi, 0.5, method="ista", max_iter=30, tol=0.0), 0.5).mean()
    e_fista = objective(x, phi, infer(x, phi, 0.5, method="fista", max_iter=30, tol=0.0), 0.5).mean()
    assert e_fista < e_ista


@pytest.mark.parametrize("nonnegative", [False, True])
def test_lca_fixed_point_satisfies_kkt(nonnegative):
    penalty = 0.7
    x, phi = lasso_problem(seed=3)
    a, info = infer(x, phi, penalty, method="lca", nonnegative=nonnegative, max_iter=50000, tol=1e-12,
                    return_info=True)
    assert info.converged
    corr = (x - a @ phi.T) @ phi  # Phi^T (x - Phi a): minus the gradient of the quadratic term
    active = a != 0
    # Active: the gradient balances the L1 subgradient exactly.
    assert (corr[active] - penalty * torch.sign(a[active])).abs().max() < 1e-8
    # Inactive: |corr| <= penalty (only corr <= penalty for the non-negative lasso).
    slack = corr[~active] if nonnegative else corr[~active].abs()
    assert slack.max() <= penalty + 1e-8


@pytest.mark.parametrize("method", SOLVERS)
def test_float32_and_stopping_rule(method):
    x64, phi64, _ = sparse_problem(nonnegative=True)
    z64 = infer(x64, phi64, 0.05, method=method, nonnegative=True, max_iter=20000, tol=1e-12)
    z, info = infer(x64.float(), phi64.float(), 0.05, method=method, nonnegative=True, max_iter=5000,
                    tol=1e-5, return_info=True)
    assert z.dtype == torch.float32
    assert info.converged and info.n_iter < 5000 and info.rel_change < 1e-5
    assert (z.double() - z64).abs().max() < 1e-3
    e32, e64 = objective(x64, phi64, z.double(), 0.05), objective(x64, phi64, z64, 0.05)
    assert ((e32 - e64) / e64).abs().max() < 1e-4
    # A dictionary in another dtype follows x.
    assert infer(x64.float(), phi64, 0.05, method=method, max_iter=5).dtype == torch.float32


def test_max_iter_caps_iterations():
    x, phi = lasso_problem()
    _, info = infer(x, phi, 0.5, method="ista", max_iter=7, tol=1e-14, return_info=True)
    assert info.n_iter == 7 and not info.converged


def test_bad_inputs_raise_clear_errors():
    x, phi = lasso_problem()
    cases = [
        (dict(x=x[:, :10]), "shape mismatch"),
        (dict(x=x[0]), r"x must have shape \(B, D\)"),
        (dict(dictionary=phi[None]), r"dictionary must have shape \(D, K\)"),
        (dict(penalty=-0.1), "penalty must be a non-negative"),
        (dict(penalty=float("nan")), "penalty must be a non-negative"),
        (dict(x=torch.where(x > 2, float("nan"), x)), "x contains NaN"),
        (dict(method="omp"), "unknown method 'omp'"),
        (dict(z0=torch.zeros(3, 3)), "z0 must have shape"),
        (dict(max_iter=0), "max_iter must be a positive integer"),
        (dict(step=10.0), r"must be in \(0, 2/L\)"),
        (dict(tau=5.0), "tau is the LCA time constant"),
        (dict(method="lca", tau=0.01), r"LCA step/tau=.* must be in \(0, 2/L\)"),
        (dict(x=x.long()), "floating point"),
    ]
    for override, message in cases:
        kwargs = dict(x=x, dictionary=phi, penalty=0.5, method="fista") | override
        with pytest.raises(ValueError, match=message):
            infer(**kwargs)


# --- dictionary learning --------------------------------------------------------------------


def test_learn_dictionary_recovers_generating_dictionary():
    g = torch.Generator().manual_seed(5)
    D, K, N = 16, 8, 3000
    true = random_dictionary(D, K, seed=123, dtype=torch.float64)
    z = (torch.rand(N, K, generator=g) < 0.25) * (1.0 + torch.rand(N, K, generator=g, dtype=torch.float64))
    x = (z @ true.T + 0.01 * torch.randn(N, D, generator=g, dtype=torch.float64)).float()
    phi, history = learn_dictionary(x, K, 0.1, method="fista", nonnegative=True, epochs=10, batch_size=100,
                                    lr=1.0, max_iter=100, tol=1e-4, seed=0)
    assert phi.shape == (D, K) and phi.dtype == torch.float32
    torch.testing.assert_close(phi.norm(dim=0), torch.ones(K))
    best_cos = (true.T.float() @ phi).abs().max(dim=1).values  # up to permutation (and sign)
    assert (best_cos > 0.9).sum() >= K - 1
    assert len(history) == 10 and history[-1]["mse"] < history[0]["mse"]


# --- experiments --------------------------------------------------------------------------


def lifetime_sparsity_by_hand(z: np.ndarray) -> float:
    """P-VAE eq. (5) per unit, averaged over the units that ever fire."""
    n = z.shape[0]
    fired = (z**2).sum(0) > 0
    s1, s2 = z[:, fired].sum(0), (z[:, fired] ** 2).sum(0)
    return float(np.mean((1 - s1**2 / (n * s2)) / (1 - 1 / n)))


def test_penalty_sweep_metrics_match_direct_computation():
    x, phi_true, _ = sparse_problem(nonnegative=True, D=16, K=8, B=600, nnz=2, noise=0.01, seed=7)
    x = x.float()
    df, dictionaries = penalty_sweep(x[:500], x[500:], K=8, penalties=[0.05, 0.2], methods=("lca", "ista"),
                                     epochs=2, batch_size=100, lr=0.5, max_iter=100, return_dictionaries=True)
    assert list(df.columns) == COLUMNS and len(df) == 4
    row = df[(df.method == "lca") & (df.penalty == 0.2)].iloc[0]
    phi = dictionaries[("lca", 0.2)]
    codes = infer_batched(x[500:], phi, 0.2, method="lca", nonnegative=True, max_iter=100, tol=1e-4)
    xv, zc = x[500:].double().numpy(), codes.double().numpy()
    mse = ((xv - zc @ phi.double().numpy().T) ** 2).sum(1).mean()
    assert row.mse == pytest.approx(mse, rel=1e-4)
    assert row.lifetime_sparsity == pytest.approx(lifetime_sparsity_by_hand(zc), rel=1e-4)
    assert row.proportion_zeros == pytest.approx((zc == 0).mean(), rel=1e-6)
    # A larger penalty gives sparser codes.
    lca_rows = df[df.method == "lca"].set_index("penalty")
    assert lca_rows.loc[0.2, "proportion_zeros"] > lca_rows.loc[0.05, "proportion_zeros"]


def test_amortization_gap_and_figure(tmp_path):
    x, phi, _ = sparse_problem(nonnegative=True, D=16, K=8, B=200, nnz=2, seed=9)
    scaled = phi * torch.linspace(0.5, 3.0, 8, dtype=torch.float64)  # a decoder with uneven column norms
    df = amortization_gap(scaled, x, penalties=[0.01, 0.1, 0.5], max_iter=2000, label="lca on pvae")
    assert list(df.columns) == COLUMNS and (df.method == "lca on pvae").all()
    assert df.mse.is_monotonic_increasing and df.proportion_zeros.is_monotonic_increasing
    direct = code_metrics(x, phi, infer(x, phi, 0.1, method="lca", nonnegative=True, max_iter=2000, tol=1e-5), 0.1)
    assert df.iloc[1].mse == pytest.approx(direct["mse"], rel=1e-6)
    both = pd.concat([df, df.assign(method="lca", mse=df.mse * 2)])
    paths = fig5b(both, tmp_path / "fig5b.png")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths) and paths[1].suffix == ".pdf"
    best = best_models(both)
    assert set(best.method) == {"lca", "lca on pvae"}
    assert best.set_index("method").loc["lca", "paper_mse"] == 50.17
    assert math.isnan(best.set_index("method").loc["lca on pvae", "paper_mse"])


def test_dictionary_from_weights(tmp_path):
    from poissonvae.checkpoint import save_weights
    from poissonvae.config import ModelConfig
    from poissonvae.models import LinearVAE

    model = LinearVAE(ModelConfig(family="poisson", K=8, input_dim=16), seeds=(0, 1))
    save_weights(model, tmp_path / "w.safetensors")
    phi = dictionary_from_weights(tmp_path / "w.safetensors", index=1)
    torch.testing.assert_close(phi, model.dictionary.detach()[1])
    with pytest.raises(ValueError, match="out of range"):
        dictionary_from_weights(tmp_path / "w.safetensors", index=2)


# --- fast paths (products.py, solvers.py): sparse products, in-place thresholds -------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(64, 96), (16, 48)], ids=["gram-form", "factored-form"])
@pytest.mark.parametrize("method", SOLVERS)
def test_sparse_and_dense_products_give_the_same_codes(monkeypatch, method, shape, dtype):
    """The sparse products (used while few codes are non-zero: CSR in float64,
    embedding_bag in float32) only reorder sums."""
    from poissonvae.sparse_coding import products

    D, K = shape
    x, phi = lasso_problem(D=D, K=K, B=32)
    x, phi = x.to(dtype), phi.to(dtype)
    kinds = []
    real = products.pack_rows

    def spy(z):
        packed = real(z)
        if packed is not None:
            kinds.append("dense" if isinstance(packed, torch.Tensor) and packed.layout == torch.strided else
                         type(packed).__name__ if not isinstance(packed, torch.Tensor) else "csr")
        return packed

    monkeypatch.setattr(products, "pack_rows", spy)
    runs = {}
    for below in (0.0, 1.01):  # never / always sparse
        monkeypatch.setitem(products.SPARSE_BELOW, dtype, below)
        kinds.clear()
        for nonnegative in (False, True):
            runs[below, nonnegative] = infer(x, phi, 0.5, method=method, nonnegative=nonnegative, max_iter=300,
                                             tol=0.0)
        sparse_kind = "csr" if dtype == torch.float64 else "BagRows"
        assert set(kinds) == ({sparse_kind} if below > 1 else {"dense"})
    for nonnegative in (False, True):
        dense, sparse = runs[0.0, nonnegative], runs[1.01, nonnegative]
        assert (sparse != 0).float().mean() < 0.5
        atol = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(sparse, dense, rtol=0, atol=atol)


def test_in_place_threshold_is_the_soft_threshold_exactly():
    from poissonvae.sparse_coding.core import soft_threshold
    from poissonvae.sparse_coding.solvers import _shrink_

    v = torch.randn(200, 50, dtype=torch.float32) * 3
    v[0, :3] = torch.tensor([1.5, -1.5, 0.0])  # at the threshold
    for nonnegative in (False, True):
        got = _shrink_(v.clone(), 1.5, nonnegative, torch.empty_like(v))
        assert torch.equal(got, soft_threshold(v, 1.5, nonnegative))


def test_scale_lr_makes_dictionary_learning_invariant_to_the_data_scale():
    """Scaling x by c scales the optimal codes at penalty c*lambda by c: the plain gradient
    step then grows by c^2, the scaled one does not (dictionary.py's docstring)."""
    x, _, _ = sparse_problem(nonnegative=True, D=16, K=8, B=400, nnz=2, seed=11)
    kw = dict(method="fista", nonnegative=True, epochs=2, batch_size=100, max_iter=300, tol=1e-10, seed=3)
    ref, _ = learn_dictionary(x, 8, 0.1, lr=0.05, scale_lr=True, **kw)
    scaled, _ = learn_dictionary(3 * x, 8, 0.3, lr=0.05, scale_lr=True, **kw)
    torch.testing.assert_close(scaled, ref, rtol=0, atol=1e-6)
    plain, _ = learn_dictionary(x, 8, 0.1, lr=0.05, **kw)
    plain_scaled, _ = learn_dictionary(3 * x, 8, 0.3, lr=0.05, **kw)
    assert (plain_scaled - plain).abs().max() > 1e-3


def test_learn_dictionary_reports_every_epoch():
    x, _, _ = sparse_problem(nonnegative=True, D=16, K=8, B=200, nnz=2, seed=2)
    seen = []
    _, history = learn_dictionary(x.float(), 8, 0.1, epochs=3, batch_size=100, on_epoch=seen.append)
    assert seen == history and [h["epoch"] for h in seen] == [1.0, 2.0, 3.0]


# --- FISTA's backtracking and gradient-space momentum (fista.py) ----------------------------


def _direct_f(x, phi, z):
    """f(z) = 1/2 ||x - Phi z||^2 evaluated through Phi, not through gradients."""
    return 0.5 * ((x - z @ phi.T) ** 2).sum(-1, keepdim=True)


@pytest.mark.parametrize("shape", [(64, 96), (16, 48)], ids=["gram-form", "factored-form"])
def test_gradient_and_acceptance_test_match_direct_computations(shape):
    """accept()'s test is f(z') <= f(y) + <grad f(y), z' - y> + |z' - y|^2 / (2s) with f
    computed directly; its extrapolated gradient is the gradient at the extrapolated point."""
    from poissonvae.sparse_coding.fista_solver import accept, propose
    from poissonvae.sparse_coding.products import Gradient

    D, K = shape
    x, phi = lasso_problem(D=D, K=K, B=64, seed=4)
    g = torch.Generator().manual_seed(5)
    gradient = Gradient(x, phi)
    z = torch.randn(64, K, generator=g, dtype=torch.float64) * (torch.rand(64, K, generator=g) < 0.2)
    y = z + 0.3 * torch.randn(64, K, generator=g, dtype=torch.float64)
    grad_z, grad_y = gradient(z), gradient(y)
    # the gradient against autograd of the directly computed f
    y_req = y.clone().requires_grad_(True)
    _direct_f(x, phi, y_req).sum().backward()
    torch.testing.assert_close(grad_y, y_req.grad, rtol=1e-10, atol=1e-10)
    lip = float(torch.linalg.eigvalsh(phi.T @ phi)[-1])
    step = torch.logspace(-1, 1, 64, dtype=torch.float64).unsqueeze(-1) / lip  # 0.1/L .. 10/L
    z_new = propose(y, grad_y, step, 0.2 * step, nonnegative=False)
    grad_new = gradient(z_new)
    ok, y_next, grad_y_next, _ = accept(z_new, grad_new, z, grad_z, y, grad_y, step, torch.ones(64, 1).double())
    d = z_new - y
    model = _direct_f(x, phi, y) + (grad_y * d).sum(-1, keepdim=True) + (d * d).sum(-1, keepdim=True) / (2 * step)
    assert torch.equal(ok, _direct_f(x, phi, z_new) <= model + 1e-9)
    assert ok[step <= 1 / lip].all() and not ok.all()  # 1/L always passes; 10/L does not
    torch.testing.assert_close(grad_y_next, gradient(y_next), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_backtracking_fista_needs_fewer_iterations_and_never_raises_its_step(nonnegative):
    """On a 2x overcomplete dictionary with sparse optima the per-sample steps stay above
    1/L: at equal iterations backtracking is closer to the optimum, and it still reaches
    the minimiser; every sample's step is 2/L or 1/L."""
    x, phi = lasso_problem(D=32, K=64, B=64, seed=6)
    penalty = 1.0
    best = objective(x, phi, infer(x, phi, penalty, nonnegative=nonnegative, max_iter=20000, tol=1e-13), penalty)
    lip = float(torch.linalg.eigvalsh(phi.T @ phi)[-1])
    for n in (5, 10, 20):
        gap_bt = objective(x, phi, infer(x, phi, penalty, nonnegative=nonnegative, max_iter=n, tol=0.0), penalty) - best
        gap_fixed = objective(x, phi, infer(x, phi, penalty, nonnegative=nonnegative, max_iter=n, tol=0.0,
                                            step=1 / lip), penalty) - best
        assert gap_bt.mean() < gap_fixed.mean()
    # reaches scikit-learn's minimiser
    z = infer(x[:8], phi, penalty, nonnegative=nonnegative, max_iter=20000, tol=1e-12)
    torch.testing.assert_close(z, sklearn_codes(x[:8], phi, penalty, nonnegative), rtol=0, atol=1e-6)


def test_compiled_fista_kernels_give_the_eager_codes():
    """compile=True runs the same propose/accept math as torch.compile'd kernels (opt-in)."""
    x, phi = lasso_problem(D=32, K=64, B=50, seed=7)
    for nonnegative in (False, True):
        eager = infer(x, phi, 0.5, nonnegative=nonnegative, max_iter=40, tol=0.0)
        try:
            with warnings.catch_warnings():  # torch's compiler stack warns about its own deprecations
                warnings.simplefilter("ignore")
                fused = infer(x, phi, 0.5, nonnegative=nonnegative, max_iter=40, tol=0.0, compile=True)
        except Exception as e:  # no C++ compiler / unsupported platform: the feature is opt-in
            pytest.skip(f"torch.compile is not usable here: {type(e).__name__}: {str(e)[:200]}")
        torch.testing.assert_close(fused, eager, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="compile=True fuses FISTA"):
        infer(x, phi, 0.5, method="lca", compile=True)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("nonnegative", [False, True])
def test_warm_start_reaches_the_same_minimiser(method, nonnegative):
    """z0 (e.g. the previous batch's codes in dictionary learning) only moves the start:
    from the minimiser the codes stay put, from elsewhere they reach scikit-learn's."""
    x, phi = lasso_problem(seed=8)
    penalty = 0.5
    best = sklearn_codes(x, phi, penalty, nonnegative)
    still = infer(x, phi, penalty, method=method, nonnegative=nonnegative, max_iter=5, tol=0.0, z0=best)
    torch.testing.assert_close(still, best, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(9)
    start = torch.randn(best.shape, generator=g, dtype=torch.float64)
    far = infer(x, phi, penalty, method=method, nonnegative=nonnegative, max_iter=50000, tol=1e-12, z0=start)
    torch.testing.assert_close(far, best, rtol=0, atol=1e-6)
