"""The fused closed-form objective of each family (eqs. 17, 20-21) equals its composition."""

from __future__ import annotations

import warnings

import pytest
import torch

from poissonvae.families import FAMILIES, get_family
from poissonvae.families.base import LatentFamily
from poissonvae.families.gram import use_gram

# the fused objectives take the squared error in data space (D = 5 < 4 K) or in
# latent space (D = 16 = 4 K, families/gram.py); every check below runs both
FORMS = pytest.mark.parametrize("D", [5, 16], ids=["data-space", "latent-space"])


def test_the_two_input_sizes_reach_the_two_forms():
    assert not use_gram(5, 4) and use_gram(16, 4)
    assert use_gram(256, 64) and not use_gram(256, 128)


def _inputs(fam, dtype=torch.float64, seed=0, D=5):
    g = torch.Generator().manual_seed(seed)
    M, B, K = 2, 6, 4
    x = torch.randn(B, D, generator=g, dtype=dtype)
    enc = (torch.randn(M, B, fam.n_params * K, generator=g, dtype=dtype) * 2).requires_grad_()
    prior = {k: (v.to(dtype) + 0.3 * torch.randn(v.shape, generator=g, dtype=dtype)).requires_grad_()
             for k, v in fam.init_prior(M, K, g).items()}
    phi = torch.randn(M, D, K, generator=g, dtype=dtype).requires_grad_()
    return x, enc, prior, phi


@FORMS
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_objective_equals_composition_values_and_gradients(family, D):
    fam = get_family(family)
    x, enc, prior, phi = _inputs(fam, D=D)
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


@FORMS
@pytest.mark.parametrize("fixed_prior", [False, True], ids=["learned-prior", "one-fixed-prior-tensor"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_gradients_equal_autograd_of_the_composition(family, D, fixed_prior):
    """The trainer's explicit gradients (one weight per model, no autograd graph in the
    fused families) against autograd through the generic composition."""
    fam = get_family(family)
    x, enc, prior, phi = _inputs(fam, D=D, seed=7)
    if family == "poisson":
        with torch.no_grad():
            enc[1, 2, 3] = 12.0  # the residual's soft clamp
    if fixed_prior:  # a prior tensor that is a buffer, not a parameter: no gradient asked for
        first = sorted(prior)[0]
        prior[first] = prior[first].detach()
    recon_weight, kl_weight = 0.25, torch.tensor([0.5, 3.0], dtype=torch.float64)
    got = fam.exact_gradients(x, enc.detach(), prior, phi, recon_weight, kl_weight)
    r_ref, k_ref = LatentFamily.exact_objective(fam, x, enc, prior, phi)
    assert torch.allclose(got.recon, r_ref.sum(-1), rtol=1e-10, atol=1e-10)
    assert torch.allclose(got.kl, k_ref.sum(-1), rtol=1e-10, atol=1e-10)
    total = (recon_weight * r_ref.sum(-1) + kl_weight * k_ref.sum(-1)).sum()
    learned = sorted(n for n, t in prior.items() if t.requires_grad)
    want = torch.autograd.grad(total, [enc, phi, *(prior[n] for n in learned)], allow_unused=True)
    assert sorted(got.prior) == learned
    for a, b in zip([got.enc, got.dictionary, *(got.prior[n] for n in learned)], want):
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    # a buffer for the encoder's gradient is filled, not replaced, by the fused families
    out = torch.full_like(enc, float("nan"))
    again = fam.exact_gradients(x, enc.detach(), prior, phi, recon_weight, kl_weight, enc_grad_out=out)
    assert torch.allclose(again.enc, got.enc, rtol=1e-12, atol=0)
    if family in ("poisson", "gaussian_relu"):
        assert again.enc.data_ptr() == out.data_ptr()


@FORMS
def test_fused_poisson_objective_passes_gradcheck_and_is_accurate_in_float32(D):
    from poissonvae.families.poisson_fused import PoissonLinearFreeEnergy

    fam = get_family("poisson")
    x, enc, prior, phi = _inputs(fam, D=D)
    x.requires_grad_()
    assert torch.autograd.gradcheck(PoissonLinearFreeEnergy.apply, (x, enc, prior["log_rate"], phi))
    # float32 with realistic scales: typical prior rates e^-5, residuals of a few units;
    # K = 128 (data space) or 16 (latent space) for 64 inputs
    K = 128 if D == 5 else 16
    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(300, 64, generator=g)
    enc32 = torch.randn(1, 300, K, generator=g) * 3
    lp32 = torch.rand(1, K, generator=g) * 2 - 6
    phi32 = torch.randn(1, 64, K, generator=g) * 0.1
    recon32, kl32 = fam.exact_objective(x32, enc32, {"log_rate": lp32}, phi32)
    recon64, kl64 = LatentFamily.exact_objective(fam, x32.double(), enc32.double(), {"log_rate": lp32.double()},
                                                 phi32.double())
    assert torch.allclose(recon32.double(), recon64, rtol=1e-5)
    assert torch.allclose(kl32.double(), kl64, rtol=1e-4, atol=1e-5)


def test_compiled_kernels_give_the_eager_values_and_gradients():
    """train.compile runs the same math through torch.compile'd kernels (opt-in)."""
    from poissonvae.families.poisson_fused import PoissonLinearFreeEnergy

    fam = get_family("poisson")
    x, enc, prior, phi = _inputs(fam, dtype=torch.float32, seed=4)
    lp = prior["log_rate"]
    leaves = [enc, lp, phi]
    eager = PoissonLinearFreeEnergy.apply(x, enc, lp, phi, False)
    try:
        with warnings.catch_warnings():  # torch's compiler stack warns about its own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            compiled = PoissonLinearFreeEnergy.apply(x, enc, lp, phi, True)
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
    # the trainer's explicit step (one weight per model) through the same kernels
    kl_weight = torch.tensor([0.5, 2.0])
    want = fam.exact_gradients(x, enc.detach(), prior, phi, 0.1, kl_weight)
    fam.compile_kernels(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = fam.exact_gradients(x, enc.detach(), prior, phi, 0.1, kl_weight)
    for a, b in zip([got.recon, got.kl, got.enc, got.dictionary, got.prior["log_rate"]],
                    [want.recon, want.kl, want.enc, want.dictionary, want.prior["log_rate"]]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@FORMS
def test_fused_rectified_objective_passes_gradcheck_and_is_accurate_in_float32(D):
    from poissonvae.families.rectified import RectifiedLinearFreeEnergy

    fam = get_family("gaussian_relu")
    x, enc, prior, phi = _inputs(fam, D=D)
    x.requires_grad_()
    args = (x, enc, prior["mu"], prior["log_sigma"], phi)
    assert torch.autograd.gradcheck(RectifiedLinearFreeEnergy.apply, args)
    # float32 at realistic scales, including units far in both tails of the relu;
    # K = 128 (data space) or 16 (latent space) for 64 inputs
    K = 128 if D == 5 else 16
    g = torch.Generator().manual_seed(2)
    x32 = torch.randn(300, 64, generator=g)
    enc32 = torch.randn(1, 300, 2 * K, generator=g) * 3
    prior32 = {"mu": torch.randn(1, K, generator=g), "log_sigma": torch.randn(1, K, generator=g) * 0.5}
    phi32 = torch.randn(1, 64, K, generator=g) * 0.1
    recon32, kl32 = fam.exact_objective(x32, enc32, prior32, phi32)
    recon64, kl64 = LatentFamily.exact_objective(fam, x32.double(), enc32.double(),
                                                 {k: v.double() for k, v in prior32.items()}, phi32.double())
    assert torch.allclose(recon32.double(), recon64, rtol=1e-5)
    assert torch.allclose(kl32.double(), kl64, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("family", ["poisson", "gaussian_relu"])
def test_latent_space_error_stays_accurate_when_the_decoder_explains_the_input(family):
    """|x|^2 + m . (u - x Phi) subtracts nearly equal numbers when the reconstruction
    is good: its float32 error is a few float32 epsilons of |x|^2, not of recon
    (measured 4e-7 |x|^2 here, where recon is 0.6-9% of |x|^2)."""
    fam = get_family(family)
    g = torch.Generator().manual_seed(7)
    B, D, K = 200, 64, 16
    phi = torch.randn(1, D, K, generator=g)
    enc = torch.randn(1, B, fam.n_params * K, generator=g) * 0.3
    # large means and small variances, so that the squared error dominates recon
    if family == "poisson":
        prior = {"log_rate": torch.full((1, K), 3.0)}  # rates near 20: variance / mean^2 ~ 1/20
    else:
        prior = {"mu": torch.full((1, K), 3.0), "log_sigma": torch.full((1, K), -2.0)}
    mean = fam.exact_terms(enc, prior)[0]
    x = (mean[0] @ phi[0].T) + 0.05 * torch.randn(B, D, generator=g)  # |r|^2 about 1% of |x|^2
    assert use_gram(D, K)
    recon32, _ = fam.exact_objective(x, enc, prior, phi)
    recon64, _ = LatentFamily.exact_objective(fam, x.double(), enc.double(), {k: v.double() for k, v in prior.items()},
                                              phi.double())
    sq_x = (x.double() ** 2).sum(-1)
    assert float((recon64 / sq_x).max()) < 0.1  # the regime the test is about: recon well below |x|^2
    assert ((recon32.double() - recon64).abs() <= 2e-6 * sq_x).all()  # ~17 float32 epsilons of |x|^2
    assert torch.allclose(recon32.double(), recon64, rtol=3e-4)  # 2.5 digits lost at recon = 0.6% of |x|^2
