"""The CUDA path against the CPU path. Skipped where no CUDA GPU is present.

The CPU and GPU run different code in places (the relu moments' indexed tail
on the CPU, the blend on the GPU; chunked group steps on the CPU only), so
training on each must give the same models within float32 tolerance.
"""

import pytest
import torch

from poissonvae.checkpoint import load_weights, save_weights
from poissonvae.config import ModelConfig, TrainConfig
from poissonvae.functional import poisson_rsample, relu_moment_terms
from poissonvae.models import LinearVAE
from poissonvae.training import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

D = 64


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    # TF32 products would differ from the CPU's by ~1e-3 relative: compare true float32
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _patches(n=800):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(0))


def _train(family: str, device: str, estimator: str = "exact") -> tuple[LinearVAE, Trainer]:
    model = LinearVAE(ModelConfig(family=family, K=32, input_dim=D), seeds=[1, 2, 3])
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=200, device=device, estimator=estimator)
    trainer = Trainer(model, cfg, _patches(), betas=[0.1, 1.0, 4.0])
    trainer.fit(progress=False)
    return model, trainer


@pytest.mark.parametrize("family", ["poisson", "gaussian_relu", "gaussian"])
def test_a_group_trained_on_the_gpu_equals_the_cpu_result(family):
    cpu, _ = _train(family, "cpu")
    gpu, _ = _train(family, "cuda")
    for name, want in cpu.state_dict().items():
        got = gpu.state_dict()[name]
        assert got.is_cuda
        err = (got.cpu() - want).abs().max() / want.abs().max().clamp(min=1e-6)
        assert err < 1e-3, (name, float(err))


def test_mc_objective_and_gradient_on_the_gpu_average_to_the_exact_ones():
    """The GPU sampler inside the model: relaxed-sample averages of the
    reconstruction term and of its encoder gradient approach the closed form."""
    model = LinearVAE(ModelConfig(K=8, input_dim=16, init_std=0.3), seeds=[5]).cuda()
    with torch.no_grad():
        model.prior_log_rate.fill_(-0.5)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).cuda()
    model(x, "exact").recon.mean().backward()
    exact_value = model(x, "exact").recon.mean().item()
    exact_grad = model.encoder.grad.clone()
    model.zero_grad()
    # 16000 draws per patch in one batch: relaxed-gradient noise grows like
    # 1/temperature, so 0.1 keeps the check's own error near 1%
    many = x.repeat(16000, 1)
    out = model(many, "mc", temperature=0.1, generator=torch.Generator(device="cuda").manual_seed(1))
    out.recon.mean().backward()
    assert out.recon.mean().item() == pytest.approx(exact_value, rel=0.02)
    assert ((model.encoder.grad - exact_grad).norm() / exact_grad.norm()).item() < 0.05


def test_relu_moments_on_the_gpu_equal_the_cpu_path():
    zeta = torch.cat([torch.linspace(-40, 40, 20_001, dtype=torch.float64), torch.tensor([-1e4, -1e3, 1e3, 1e4],
                                                                                       dtype=torch.float64)])
    want = relu_moment_terms(zeta)
    got = relu_moment_terms(zeta.cuda())
    for w, g in zip(want, got):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-300)
    mean, var, _, _ = relu_moment_terms(zeta.float().cuda())
    assert torch.isfinite(mean).all() and torch.isfinite(var).all() and (var >= 0).all()


def test_exact_poisson_samples_on_the_gpu_have_the_poisson_moments():
    rate = torch.full((400_000,), 3.0, device="cuda")
    z = poisson_rsample(rate, 0.0, generator=torch.Generator(device="cuda").manual_seed(0))
    assert z.is_cuda and torch.equal(z, z.round())
    # standard errors: 3/sqrt(4e5) ~ 0.003 for the mean, ~0.01 for the variance
    assert abs(float(z.mean()) - 3.0) < 0.015
    assert abs(float(z.var()) - 3.0) < 0.05


def test_weights_trained_on_the_gpu_load_on_the_cpu(tmp_path):
    gpu, _ = _train("poisson", "cuda")
    save_weights(gpu, tmp_path / "w.safetensors")
    cpu = LinearVAE(ModelConfig(family="poisson", K=32, input_dim=D), seeds=[7, 8, 9])
    load_weights(cpu, tmp_path / "w.safetensors")
    for name, value in gpu.state_dict().items():
        assert torch.equal(cpu.state_dict()[name], value.cpu())


@pytest.mark.parametrize("family", ["poisson", "gaussian_relu"])
def test_captured_cuda_graph_steps_equal_the_eager_steps(family):
    def train(graph: bool) -> tuple[LinearVAE, Trainer]:
        model = LinearVAE(ModelConfig(family=family, K=32, input_dim=D), seeds=[1, 2, 3])
        cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=200, device="cuda", cuda_graph=graph)
        trainer = Trainer(model, cfg, _patches(), betas=[0.1, 1.0, 4.0])
        trainer.fit(progress=False)
        return model, trainer

    eager, eager_tr = train(False)
    graph, graph_tr = train(True)
    assert graph_tr._graph is not None  # the steps did replay a graph
    for name, want in eager.state_dict().items():
        err = (graph.state_dict()[name] - want).abs().max() / want.abs().max().clamp(min=1e-6)
        assert err < 1e-3, (name, float(err))
    for a, b in zip(eager_tr.history, graph_tr.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_a_cuda_graph_run_resumes_from_its_checkpoint_with_and_without_a_graph(tmp_path):
    def trainer(device: str, graph: bool) -> Trainer:
        model = LinearVAE(ModelConfig(K=32, input_dim=D), seeds=[4, 5])
        cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=200, device=device, cuda_graph=graph)
        return Trainer(model, cfg, _patches(), betas=[0.5, 2.0])

    full = trainer("cuda", True)
    full.fit(progress=False)
    first = trainer("cuda", True)
    first.train_epoch()
    first.train_epoch()
    first.save_state(tmp_path / "state.safetensors")
    for device, graph in (("cuda", True), ("cuda", False)):
        rest = trainer(device, graph)
        rest.load_state(tmp_path / "state.safetensors")
        rest.fit(progress=False)
        for name, want in full.model.state_dict().items():
            got = rest.model.state_dict()[name].to(want.device)
            err = (got - want).abs().max() / want.abs().max().clamp(min=1e-6)
            assert err < 1e-3, (device, name, float(err))


def test_a_gpu_run_resumes_on_the_cpu_and_back(tmp_path):
    # the exact estimator draws no random numbers, so a run that moves between
    # devices ends where the uninterrupted GPU run ends (within float32 tolerance)
    def trainer(device: str) -> Trainer:
        model = LinearVAE(ModelConfig(K=32, input_dim=D), seeds=[4, 5])
        cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=200, device=device)
        return Trainer(model, cfg, _patches(), betas=[0.5, 2.0])

    full = trainer("cuda")
    full.fit(progress=False)
    first = trainer("cuda")
    first.train_epoch()
    first.save_state(tmp_path / "gpu.safetensors")
    middle = trainer("cpu")
    with pytest.warns(UserWarning, match="from a cuda generator and this run is on cpu"):
        middle.load_state(tmp_path / "gpu.safetensors")
    middle.train_epoch()
    middle.save_state(tmp_path / "cpu.safetensors")
    last = trainer("cuda")
    with pytest.warns(UserWarning, match="from a cpu generator and this run is on cuda"):
        last.load_state(tmp_path / "cpu.safetensors")
    last.fit(progress=False)
    for name, want in full.model.state_dict().items():
        err = (last.model.state_dict()[name] - want).abs().max() / want.abs().max().clamp(min=1e-6)
        assert err < 1e-3, (name, float(err))
