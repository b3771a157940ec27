"""Trainer: schedules, per-model clipping, determinism, grouped == alone, resume, bad input."""

import math

import pytest
import torch

from poissonvae.checkpoint import CheckpointError
from poissonvae.config import ConfigError, ModelConfig, TrainConfig
from poissonvae.data import DataError
from poissonvae.models import LinearVAE
from poissonvae.schedules import beta_at, lr_factor, temperature_at
from poissonvae.training import Trainer, clip_grad_norm_per_model

D = 16  # 4x4 patches keep these tests fast


def _patches(n=400, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    base = dict(epochs=3, warmup_epochs=1, batch_size=100, checkpoint_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_schedules_follow_their_definitions():
    # warm-up: linear to the base lr; then cosine from 1 to eta_min_ratio
    assert lr_factor(0, 10, 110, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110, 0.01) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(110, 10, 110, 0.01) == pytest.approx(0.01)
    # KL annealing: 1e-4 -> beta over the first half, then flat
    assert beta_at(0, 100, 1e-4, 2.0, 0.5) == pytest.approx(1e-4)
    assert beta_at(25, 100, 1e-4, 2.0, 0.5) == pytest.approx(1e-4 + (2.0 - 1e-4) / 2)
    assert beta_at(80, 100, 1e-4, 2.0, 0.5) == 2.0
    assert temperature_at(50, 100, 1.0, 0.05, 0.5) == pytest.approx(0.05)
    assert temperature_at(25, 100, 1.0, 0.05, 0.5, "exponential") == pytest.approx(math.sqrt(0.05))


def test_per_model_clipping_equals_torch_clipping_of_each_model_alone():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 4, 5)), torch.nn.Parameter(torch.zeros(3, 7))]
    grads = [torch.randn(3, 4, 5, generator=g) * s for s in (1.0,)] + [torch.randn(3, 7, generator=g) * 10]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    clip_grad_norm_per_model(params, 5.0)
    for m in range(3):
        alone = [torch.nn.Parameter(torch.zeros_like(gr[m])) for gr in grads]
        for p, gr in zip(alone, grads):
            p.grad = gr[m].clone()
        torch.nn.utils.clip_grad_norm_(alone, 5.0)
        for p, q in zip(params, alone):
            assert torch.allclose(p.grad[m], q.grad, atol=1e-6)


def test_same_seed_same_result_and_loss_decreases():
    results = []
    for _ in range(2):
        model = LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[4])
        tr = Trainer(model, _cfg(estimator="mc"), _patches())
        hist = tr.fit(progress=False)
        results.append((model.state_dict(), hist))
    for k in results[0][0]:
        assert torch.equal(results[0][0][k], results[1][0][k])
    losses = [h["loss"][0] for h in results[0][1]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("family", ["poisson", "gaussian_relu"])
def test_model_trained_in_a_group_equals_model_trained_alone(family):
    cfg = ModelConfig(family=family, K=8, input_dim=D)
    betas, seeds = [0.1, 1.0, 4.0], [1, 2, 3]
    group = LinearVAE(cfg, seeds=seeds)
    Trainer(group, _cfg(), _patches(), betas=betas).fit(progress=False)
    for i, (beta, seed) in enumerate(zip(betas, seeds)):
        alone = LinearVAE(cfg, seeds=[seed])
        Trainer(alone, _cfg(beta=beta), _patches()).fit(progress=False)
        for k, v in alone.state_dict().items():
            assert torch.allclose(group.state_dict()[k][i], v[0], rtol=1e-4, atol=1e-5), k


def test_resume_from_state_gives_the_uninterrupted_result(tmp_path):
    cfg = _cfg(estimator="mc", epochs=4)
    full = LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[7])
    Trainer(full, cfg, _patches()).fit(progress=False)

    first = LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[7])
    tr = Trainer(first, cfg, _patches())
    tr.train_epoch()
    tr.train_epoch()
    tr.save_state(tmp_path / "state.safetensors")

    fresh = LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[99])  # different init: overwritten on load
    tr2 = Trainer(fresh, cfg, _patches())
    tr2.load_state(tmp_path / "state.safetensors")
    assert tr2.epoch == 2
    tr2.fit(progress=False)
    for k, v in full.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_bad_training_input_is_rejected_before_any_step():
    model = LinearVAE(ModelConfig(K=8, input_dim=D))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = _patches()
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        Trainer(model, _cfg(), bad)
    with pytest.raises(DataError, match="empty|0 "):
        Trainer(model, _cfg(), torch.empty(0, D))
    with pytest.raises((DataError, ValueError), match="expected|values"):
        Trainer(model, _cfg(), torch.randn(100, 25))
    with pytest.raises(ConfigError, match="train.beta"):
        Trainer(model, _cfg(beta=-1.0), _patches())
    with pytest.raises(ValueError, match="beta"):
        Trainer(model, _cfg(), _patches(), betas=[-0.5])
    with pytest.raises(ConfigError, match="train.estimator"):
        Trainer(model, _cfg(estimator="reinforce"), _patches())
    with pytest.raises(ConfigError, match="cuda_graph needs a CUDA device"):
        Trainer(model, _cfg(cuda_graph=True), _patches())
    with pytest.raises(ConfigError, match="cuda_graph needs train.estimator 'exact'"):
        Trainer(model, _cfg(cuda_graph=True, estimator="mc", device="cuda"), _patches())
    if not torch.cuda.is_available():  # auto resolves to the CPU here
        with pytest.raises(ConfigError, match="cuda_graph needs a CUDA device; training runs on cpu"):
            Trainer(model, _cfg(cuda_graph=True, device="auto"), _patches())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_tensor_learning_rate_is_saved_as_a_number_and_resumes(tmp_path):
    """A captured CUDA step keeps its learning rate in a tensor and Adamax capturable:
    its checkpoints must still load into an ordinary (CPU) trainer."""
    cfg = _cfg(estimator="exact", epochs=2)
    tr = Trainer(LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[3]), cfg, _patches())
    tr.train_epoch()
    for group in tr.optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]))
        group["capturable"] = True
    tr.save_state(tmp_path / "state.safetensors")
    again = Trainer(LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[3]), cfg, _patches())
    again.load_state(tmp_path / "state.safetensors")
    group = again.optimizer.param_groups[0]
    assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(float(tr.optimizer.param_groups[0]["lr"]))
    assert group["capturable"] is False
    again.fit(progress=False)  # the CPU steps run
    assert again.epoch == again.total_epochs


def test_corrupt_foreign_and_mismatched_checkpoints_are_rejected(tmp_path):
    from safetensors.torch import save_file

    from poissonvae.checkpoint import load_weights, save_weights

    model = LinearVAE(ModelConfig(K=8, input_dim=D))
    good = tmp_path / "w.safetensors"
    save_weights(model, good)
    other = LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[5])
    load_weights(other, good)
    assert torch.equal(other.encoder, model.encoder)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(other, corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(other, garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a poissonvae checkpoint"):
        load_weights(other, foreign)
    pickled = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors"):
        load_weights(other, pickled)
    with pytest.raises(CheckpointError, match="K="):
        load_weights(LinearVAE(ModelConfig(K=9, input_dim=D)), good)
    with pytest.raises(CheckpointError, match="family="):
        load_weights(LinearVAE(ModelConfig(family="gaussian_relu", K=8, input_dim=D)), good)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(other, tmp_path / "missing.safetensors")


# poisson and gaussian_relu write the encoder gradient into the trainer's buffer;
# gaussian (the generic composition, fixed prior buffers) leaves it to the trainer's copy
@pytest.mark.parametrize("family", ["poisson", "gaussian_relu", "gaussian"])
@pytest.mark.parametrize("n_models, pieces", [(3, 3), (4, 2), (5, 2)])
def test_chunked_group_step_equals_the_full_batch_step(monkeypatch, family, n_models, pieces):
    import poissonvae.training as training

    results = []
    betas = [0.1, 1.0, 3.0, 0.5, 2.0][:n_models]
    n_params = 1 if family == "poisson" else 2
    limit = n_models * 100 * 8 * n_params // pieces  # values of one piece's (m, b, n K) tensors
    for chunk in (1 << 30, limit):  # no chunking; then pieces of 1 or 2 models
        monkeypatch.setattr(training, "CHUNK_ELEMENTS", chunk)
        model = LinearVAE(ModelConfig(family=family, K=8, input_dim=D), seeds=list(range(1, n_models + 1)))
        tr = Trainer(model, _cfg(), _patches(), betas=betas)
        assert tr.chunks(100) == (1 if chunk > 1 << 20 else pieces)
        stats = tr.train_step(_patches()[:100])
        results.append((stats, {k: v.clone() for k, v in model.state_dict().items()}))
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.allclose(a, b, rtol=1e-5)
    for k in results[0][1]:
        assert torch.allclose(results[0][1][k], results[1][1][k], rtol=1e-5, atol=1e-7), k


def _rewrite_state(path, new_path, rng, rng_device):
    """A copy of a state file with another RNG state and device, as another device's run would write."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["rng.generator"] = rng
    if rng_device is None:
        meta.pop("rng_device", None)  # a file written before the device was recorded
    else:
        meta["rng_device"] = rng_device
    save_file(tensors, str(new_path), metadata=meta)


@pytest.mark.parametrize("rng_device", ["cuda", None])
def test_a_gpu_runs_state_resumes_on_the_cpu_with_a_derived_seed(tmp_path, rng_device):
    # a CUDA generator's state is 16 bytes (Philox seed and offset); a CPU generator cannot take it
    cfg = _cfg(estimator="mc", epochs=3)
    tr = Trainer(LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[7]), cfg, _patches())
    tr.train_epoch()
    tr.save_state(tmp_path / "cpu.safetensors")
    gpu_rng = torch.arange(16, dtype=torch.uint8)
    _rewrite_state(tmp_path / "cpu.safetensors", tmp_path / "gpu.safetensors", gpu_rng, rng_device)
    states = []
    for _ in range(2):
        resumed = Trainer(LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[99]), cfg, _patches())
        with pytest.warns(UserWarning, match="from a cuda generator and this run is on cpu"):
            resumed.load_state(tmp_path / "gpu.safetensors")
        assert resumed.epoch == 1
        for k, v in tr.model.state_dict().items():  # the weights are the saved run's
            assert torch.equal(resumed.model.state_dict()[k], v), k
        states.append(resumed.generator.get_state())
        resumed.fit(progress=False)
        assert resumed.epoch == cfg.warmup_epochs + cfg.epochs
    assert torch.equal(states[0], states[1])  # the same checkpoint seeds the same stream
    # a CPU state that is not one (wrong size, same device) is still refused
    _rewrite_state(tmp_path / "cpu.safetensors", tmp_path / "bad.safetensors", gpu_rng, "cpu")
    with pytest.raises(CheckpointError, match="incomplete training state"):
        Trainer(LinearVAE(ModelConfig(K=8, input_dim=D), seeds=[1]), cfg, _patches()).load_state(
            tmp_path / "bad.safetensors")


@pytest.mark.parametrize("family", ["poisson", "gaussian_relu", "gaussian", "laplace"])
@pytest.mark.parametrize("K", [4, 8], ids=["latent-space", "data-space"])
@pytest.mark.parametrize("pieces", [1, 2])
def test_explicit_exact_step_equals_autograd_through_the_composition(family, K, pieces):
    """The trainer's exact step builds no autograd graph for the fused families
    (LatentFamily.exact_gradients); its gradients of the batch mean must be autograd's
    through the generic composition (posterior -> moments -> eq. 17)."""
    from poissonvae.families.base import LatentFamily

    model = LinearVAE(ModelConfig(family=family, K=K, input_dim=D), seeds=[1, 2, 3])
    tr = Trainer(model, _cfg(), _patches(), betas=[0.3, 2.0, 1.0])
    x, beta = _patches(seed=5)[:50], torch.tensor([0.3, 2.0, 1.0])
    totals = tr._exact_gradients(x, beta, pieces)
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    recon, kl = LatentFamily.exact_objective(model.family, x, model.encoder_output(x), model.prior(),
                                             model.dictionary)
    free_energy = (recon + beta.unsqueeze(-1) * kl).sum(-1)
    (free_energy.sum() / 50).backward()
    assert sorted(got) == sorted(name for name, p in model.named_parameters() if p.grad is not None)
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.grad, rtol=1e-4, atol=1e-6), name
    want = torch.stack([free_energy, recon.sum(-1), kl.sum(-1)]).detach()
    assert torch.allclose(totals, want, rtol=1e-5)
