"""The fused closed-form objective of each family (eqs. 17, 20-21) equals its composition."""

from __future__ import annotations

import warnings

import pytest
import torch

from poissonvae.families import FAMILIES, get_family
from poissonvae.families.base import LatentFamily


def _inputs(fam, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    M, B, D, K = 2, 6, 5, 4
    x = torch.randn(B, D, generator=g, dtype=dtype)
    enc = (torch.randn(M, B, fam.n_params * K, generator=g, dtype=dtype) * 2).requires_grad_()
    prior = {k: (v.to(dtype) + 0.3 * torch.randn(v.shape, generator=g, dtype=dtype)).requires_grad_()
             for k, v in fam.init_prior(M, K, g).items()}
    phi = torch.randn(M, D, K, generator=g, dtype=dtype).requires_grad_()
    return x, enc, prior, phi


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_objective_equals_composition_values_and_gradients(family):
    fam = get_family(family)
    x, enc, prior, phi = _inputs(fam)
    if family == "poisson":  # reach both soft clamps of the fused path (residual 10, log-rate 5)
        with torch.no_grad():
            enc[0, 0, 0] = 12.0
            prior["log_rate"][1, 1] = 4.6
    names = sorted(prior)
    leaves = [enc, phi, *[prior[n] for n in names]]
    recon, kl = fam.exact_objective(x, enc, prior, phi)
    # reference: the generic composition of the base class (posterior -> moments -> eq. 17)
    r_ref, k_ref = LatentFamily.exact_objective(fam, x, enc, prior, phi)
    assert torch.allclose(recon, r_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(kl, k_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(2, recon.shape[0], recon.shape[1], generator=torch.Generator().manual_seed(3), dtype=recon.dtype)
    got = torch.autograd.grad((w[0] * recon + w[1] * kl).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((w[0] * r_ref + w[1] * k_ref).sum(), leaves, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_fused_poisson_objective_passes_gradcheck_and_is_accurate_in_float32():
    from poissonvae.families.poisson import _PoissonLinearFreeEnergy

    fam = get_family("poisson")
    x, enc, prior, phi = _inputs(fam)
    x.requires_grad_()
    assert torch.autograd.gradcheck(_PoissonLinearFreeEnergy.apply, (x, enc, prior["log_rate"], phi))
    # float32 with realistic scales: typical prior rates e^-5, residuals of a few units
    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(300, 64, generator=g)
    enc32 = torch.randn(1, 300, 128, generator=g) * 3
    lp32 = torch.rand(1, 128, generator=g) * 2 - 6
    phi32 = torch.randn(1, 64, 128, generator=g) * 0.1
    recon32, kl32 = fam.exact_objective(x32, enc32, {"log_rate": lp32}, phi32)
    recon64, kl64 = LatentFamily.exact_objective(fam, x32.double(), enc32.double(), {"log_rate": lp32.double()},
                                                 phi32.double())
    assert torch.allclose(recon32.double(), recon64, rtol=1e-5)
    assert torch.allclose(kl32.double(), kl64, rtol=1e-4, atol=1e-5)


def test_compiled_kernels_give_the_eager_values_and_gradients():
    """train.compile runs the same math through torch.compile'd kernels (opt-in)."""
    from poissonvae.families.poisson import _PoissonLinearFreeEnergy

    fam = get_family("poisson")
    x, enc, prior, phi = _inputs(fam, dtype=torch.float32, seed=4)
    lp = prior["log_rate"]
    leaves = [enc, lp, phi]
    eager = _PoissonLinearFreeEnergy.apply(x, enc, lp, phi, False)
    try:
        with warnings.catch_warnings():  # torch's compiler stack warns about its own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            compiled = _PoissonLinearFreeEnergy.apply(x, enc, lp, phi, True)
    except Exception as e:  # no C++ compiler / unsupported platform: the feature is opt-in
        pytest.skip(f"torch.compile is not usable here: {type(e).__name__}: {str(e)[:200]}")
    for a, b in zip(compiled, eager):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    w = torch.randn(2, *eager[0].shape, generator=torch.Generator().manual_seed(5))
    g_e = torch.autograd.grad((w[0] * eager[0] + w[1] * eager[1]).sum(), leaves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g_c = torch.autograd.grad((w[0] * compiled[0] + w[1] * compiled[1]).sum(), leaves)
    for a, b in zip(g_c, g_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_rectified_objective_passes_gradcheck_and_is_accurate_in_float32():
    from poissonvae.families.rectified import RectifiedLinearFreeEnergy

    fam = get_family("gaussian_relu")
    x, enc, prior, phi = _inputs(fam)
    x.requires_grad_()
    args = (x, enc, prior["mu"], prior["log_sigma"], phi)
    assert torch.autograd.gradcheck(RectifiedLinearFreeEnergy.apply, args)
    # float32 at realistic scales, including units far in both tails of the relu
    g = torch.Generator().manual_seed(2)
    x32 = torch.randn(300, 64, generator=g)
    enc32 = torch.randn(1, 300, 256, generator=g) * 3
    prior32 = {"mu": torch.randn(1, 128, generator=g), "log_sigma": torch.randn(1, 128, generator=g) * 0.5}
    phi32 = torch.randn(1, 64, 128, generator=g) * 0.1
    recon32, kl32 = fam.exact_objective(x32, enc32, prior32, phi32)
    recon64, kl64 = LatentFamily.exact_objective(fam, x32.double(), enc32.double(),
                                                 {k: v.double() for k, v in prior32.items()}, phi32.double())
    assert torch.allclose(recon32.double(), recon64, rtol=1e-5)
    assert torch.allclose(kl32.double(), kl64, rtol=1e-4, atol=1e-3)
