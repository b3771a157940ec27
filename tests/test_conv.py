"""Conv architectures (conv|lin, conv|conv): shapes, stacking, closed form, training, checkpoints."""

import json

import numpy as np
import pytest
import torch

from poissonvae import training
from poissonvae.checkpoint import CheckpointError, load_weights, save_weights
from poissonvae.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from poissonvae.conv import ConvVAE
from poissonvae.data import DataConfig, PatchSet
from poissonvae.evaluation import evaluate
from poissonvae.models import LinearVAE, build_model
from poissonvae.runs import train_run
from poissonvae.training import clip_grad_norm_per_model


def _cfg(arch="conv|lin", D=256, K=6, family="poisson", C=4, **kw):
    return ModelConfig(family=family, K=K, input_dim=D, arch=arch, conv_channels=C, **kw)


def _x(n, D, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed + 100))


@pytest.mark.parametrize("D", [256, 784])
@pytest.mark.parametrize("arch", ["conv|lin", "conv|conv"])
@pytest.mark.parametrize("family", ["poisson", "gaussian_relu"])
def test_output_shapes_for_16x16_and_28x28(D, arch, family):
    model = build_model(_cfg(arch, D, K=5, family=family, C=16), seeds=[0, 1])
    assert isinstance(model, ConvVAE) and model.n_models == 2
    x = _x(3, D)
    assert model.encoder_output(x).shape == (2, 3, model.family.n_params * 5)
    h = model.family.sample(model.encode(x))
    assert model.decode(h).shape == (2, 3, D)
    out = model(x, "mc", temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert out.recon.shape == out.kl.shape == (2, 3)
    assert model.decoder_atoms().shape == (2, D, 5)
    assert (model.dictionary is not None) == (arch == "conv|lin") == model.linear_decoder
    for name, p in model.named_parameters():  # the model axis first: per-model clipping and select()
        assert p.shape[0] == 2, name
    assert all(v.shape[0] == 1 for v in model.select(1).values())


def test_build_model_picks_the_architecture_and_lin_lin_is_unchanged():
    lin = build_model(ModelConfig(K=4, input_dim=16), seeds=[3])
    assert type(lin) is LinearVAE
    assert set(lin.state_dict()) == {"encoder", "dictionary", "prior_log_rate"}
    ref = LinearVAE(ModelConfig(K=4, input_dim=16), seeds=[3])
    for k, v in ref.state_dict().items():
        assert torch.equal(lin.state_dict()[k], v)
    with pytest.raises(ValueError, match="build_model"):
        LinearVAE(_cfg())


@pytest.mark.parametrize("arch", ["conv|lin", "conv|conv"])
def test_model_in_a_group_equals_model_alone_forward_and_gradients(arch):
    """Grouped convolutions keep models apart: outputs and gradients of model i in
    a group of 3 equal those of the same seed alone (also after per-model clipping)."""
    seeds = [11, 12, 13]
    cfg = _cfg(arch, 256, family="gaussian_relu")
    group = build_model(cfg, seeds=seeds)
    x = _x(8, 256)

    def loss_terms(model):
        post = model.encode(x)
        mean, _ = model.family.moments(post)  # deterministic: no sampling noise to align
        recon = ((x - model.decode(mean)) ** 2).sum(-1)
        return recon, model.family.kl(post).sum(-1)

    recon, kl = loss_terms(group)
    (recon + kl).sum().backward()
    norms = clip_grad_norm_per_model(list(group.parameters()), 1.0)
    for i, seed in enumerate(seeds):
        alone = build_model(cfg, seeds=[seed])
        for k, v in alone.state_dict().items():
            assert torch.equal(group.state_dict()[k][i], v[0]), k  # same init, whatever the group
        r1, k1 = loss_terms(alone)
        assert torch.allclose(recon[i], r1[0], rtol=1e-5, atol=1e-4)
        assert torch.allclose(kl[i], k1[0], rtol=1e-5, atol=1e-5)
        (r1 + k1).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(list(alone.parameters()), 1.0)
        assert norms[i].item() == pytest.approx(norm.item(), rel=1e-4)
        for (name, p), q in zip(group.named_parameters(), alone.parameters()):
            assert torch.allclose(p.grad[i], q.grad[0], rtol=1e-4, atol=1e-6), name


def test_exact_objective_of_conv_lin_equals_monte_carlo_average():
    """Closed-form L_recon (eqs. 17, 21) of conv|lin vs the average of ||x - Phi h||^2
    over many exact Poisson samples h: an independent check through the conv encoder."""
    model = build_model(_cfg("conv|lin", 256, K=8, init_std=0.3), seeds=[5]).double()
    with torch.no_grad():
        model.prior_log_rate.fill_(0.0)  # rates ~ 1: a non-trivial Poisson
    x = _x(4, 256).double()
    out = model(x, "exact")
    post = model.encode(x)
    assert torch.allclose(out.kl, model.family.kl(post).sum(-1))
    g = torch.Generator().manual_seed(0)
    S, total = 10_000, torch.zeros_like(out.recon)
    for _ in range(4):
        h = model.family.sample({k: v.expand(S, *v.shape[1:]) for k, v in post.items()}, g)  # (S, 4, K)
        total += ((x - h @ model.dictionary[0].T) ** 2).sum(-1).mean(0, keepdim=True)
    assert torch.allclose(out.recon, total / 4, rtol=0.02)


def test_conv_conv_rejects_the_exact_estimator():
    model = build_model(_cfg("conv|conv"), seeds=[0])
    assert torch.all(model.prior_log_rate == -2.0)  # ref. code: prior log-rate -2 for a nonlinear decoder
    with pytest.raises(ValueError, match="nonlinear decoder"):
        model(_x(2, 256), "exact")
    cfg = RunConfig(data=DataConfig(patch_size=16), model=_cfg("conv|conv"), train=TrainConfig(estimator="exact"))
    with pytest.raises(ConfigError, match="nonlinear decoder"):
        cfg.validate()
    cfg.train.estimator = "mc"
    cfg.validate()


def test_bad_conv_configs_and_inputs_are_rejected():
    with pytest.raises(ConfigError, match="model.arch"):
        ModelConfig(arch="conv|mlp").validate()
    with pytest.raises(ConfigError, match="square"):
        ModelConfig(arch="conv|lin", input_dim=250).validate()
    with pytest.raises(ConfigError, match="conv_channels"):
        ModelConfig(arch="conv|lin", conv_channels=0).validate()
    model = build_model(_cfg(), seeds=[0])
    with pytest.raises(ValueError, match=r"\(B, 256\)"):
        model(torch.randn(2, 255), "exact")
    with pytest.raises(ValueError, match="codes"):
        model.decode(torch.randn(2, 3, 6))


def test_old_config_without_arch_loads_as_lin_lin(tmp_path):
    d = RunConfig().to_dict()
    del d["model"]["arch"], d["model"]["conv_channels"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = RunConfig.load(tmp_path / "config.json")
    assert cfg.model.arch == "lin|lin"
    assert type(build_model(cfg.model)) is LinearVAE


def _run_cfg(arch, estimator, **train):
    base = dict(epochs=2, warmup_epochs=1, batch_size=32, checkpoint_every=1, estimator=estimator,
                eval_batch_size=16)
    base.update(train)
    return RunConfig(data=DataConfig(patch_size=16, n_train=64, n_val=32), model=_cfg(arch, 256, K=8),
                     train=TrainConfig(**base))


def _patches():
    rng = np.random.default_rng(0)
    return PatchSet(rng.standard_normal((64, 256), dtype=np.float32), rng.standard_normal((32, 256), dtype=np.float32),
                    ["a"], ["b"], 0.0, 1.0, 16)


def test_conv_lin_pvae_trains_through_train_run_and_resumes(tmp_path, monkeypatch):
    cfg = _run_cfg("conv|lin", "exact")
    full = train_run(cfg, tmp_path / "full", progress=False, patches=_patches())
    for name in ("config.json", "log.jsonl", "weights.safetensors", "metrics.json", "dictionary.png"):
        assert (tmp_path / "full" / name).is_file(), name
    assert np.isfinite(full["neg_elbo"]) and full["neg_elbo"] == pytest.approx(full["recon"] + full["kl"])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]

    real_epoch = training.Trainer.train_epoch

    def interrupt_in_epoch_three(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self)

    out = tmp_path / "killed"
    monkeypatch.setattr(training.Trainer, "train_epoch", interrupt_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, out, progress=False, patches=_patches())
    assert (out / "checkpoint.safetensors").is_file() and not (out / "metrics.json").exists()
    monkeypatch.setattr(training.Trainer, "train_epoch", real_epoch)
    resumed = train_run(cfg, out, progress=False, patches=_patches())
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert resumed["neg_elbo"] == pytest.approx(full["neg_elbo"], rel=1e-5)
    a, b = build_model(cfg.model, [0]), build_model(cfg.model, [0])
    load_weights(a, tmp_path / "full" / "weights.safetensors")
    load_weights(b, out / "weights.safetensors")
    for k, v in a.state_dict().items():
        assert torch.allclose(b.state_dict()[k], v, rtol=1e-5, atol=1e-6), k


def test_conv_conv_trains_and_evaluates_with_monte_carlo_reconstruction(tmp_path):
    cfg = _run_cfg("conv|conv", "mc", epochs=1)
    metrics = train_run(cfg, tmp_path / "run", progress=False, patches=_patches())
    assert (tmp_path / "run" / "dictionary.png").is_file()  # decoder response to each unit
    # no closed form: recon is the one-sample estimate from the exact samples, i.e. the MSE
    assert metrics["recon"] == pytest.approx(metrics["mse"], rel=1e-6)
    model = build_model(cfg.model, [0])
    load_weights(model, tmp_path / "run" / "weights.safetensors")
    again = evaluate(model, torch.from_numpy(_patches().val), batch_size=16, seed=cfg.train.seed)
    assert again["recon"][0] == pytest.approx(metrics["recon"], rel=1e-5)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    save_weights(LinearVAE(ModelConfig(K=6, input_dim=256), seeds=[0]), tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match="arch='lin\\|lin'.*arch='conv\\|lin'"):
        load_weights(build_model(_cfg("conv|lin"), seeds=[0]), tmp_path / "lin.safetensors")
    save_weights(build_model(_cfg("conv|lin"), seeds=[0]), tmp_path / "conv.safetensors")
    with pytest.raises(CheckpointError, match="arch"):
        load_weights(build_model(_cfg("conv|conv"), seeds=[0]), tmp_path / "conv.safetensors")
    model = build_model(_cfg("conv|lin"), seeds=[1])
    load_weights(model, tmp_path / "conv.safetensors")
    assert torch.equal(model.dictionary, build_model(_cfg("conv|lin"), seeds=[0]).dictionary)
