"""Training loop for a stack of ``M`` VAEs (any architecture) sharing one pass over the data.

Adamax with linear warm-up and cosine annealing, per-model gradient-norm
clipping, KL annealing and temperature annealing (metabolic-cost appendix and
ref. code defaults). Each model has its own target beta. Because Adamax is
elementwise and every model's loss depends only on its own parameters, the
summed loss gives each model exactly the update it would get alone.

The trainer only trains: it does not load data, plot, or write run directories
(see :mod:`poissonvae.runs`), but it can save and restore its own state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import load_state, save_state
from .config import ConfigError, TrainConfig
from .data.patches import validate_patches
from .families import LatentFamily
from .functional import poisson_n_exp
from .memory import retain_freed_memory
from .models import StackedVAE
from .optim import Adamax
from .schedules import beta_at, lr_factor, temperature_at


# Largest (m x B x n K) block a stacked step works on at once (see Trainer.chunks).
# Pieces of models, 8 models at batch 1000 on the 2-core development CPU (best of
# 3 steps, median of 6 rounds, ms; the piece count this rule picks in brackets):
#   G_relu K=512: 1 piece 162.9, 2 155.9, [4] 152.5, 8 153.2
#   G_relu K=256: 1 77.1, [2] 76.1, 4 75.5, 8 77.2;  K=128: [1] 40.6, 2 40.5, 4 41.5
#   P-VAE K=512: 1 82.7, [2] 83.0, 4 82.7, 8 84.8;  K=256: [1] 43.0, 2 42.6, 8 45.7
CHUNK_ELEMENTS = 1 << 21


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def clip_grad_norm_per_model(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """Scale each model's gradients so that their joint norm is at most ``max_norm``.

    Every parameter has the model axis first; the norm of model ``m`` is over
    all its parameters, as ``torch.nn.utils.clip_grad_norm_`` would compute for
    that model alone. Returns the per-model norms before clipping, ``(M,)``.
    """
    grads = [p.grad for p in params if p.grad is not None]
    # one fused reduction per parameter: the norm of each model's slice
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    # On a CPU, reading the flag costs nothing, and a scale of exactly 1 (the
    # usual case) needs no pass over the gradients; on a GPU the multiply is
    # cheaper than a host sync.
    if norms.device.type != "cpu" or bool((scale < 1.0).any()):
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms


class Trainer:
    """Trains ``model`` (``M`` models) on ``train`` patches ``(N, D)``.

    Args:
        model: the stacked model.
        cfg: optimisation settings; ``cfg.beta`` is ignored when ``betas`` is given.
        train: training patches, a float32 tensor kept in memory.
        betas: target KL weight per model (``M`` values), default ``[cfg.beta] * M``.
    """

    def __init__(self, model: StackedVAE, cfg: TrainConfig, train: Tensor, betas: Sequence[float] | None = None) -> None:
        cfg.validate()
        validate_patches(train, int(round(math.sqrt(model.cfg.input_dim))))
        if train.shape[1] != model.cfg.input_dim:
            raise ValueError(f"patches have {train.shape[1]} values, the model expects {model.cfg.input_dim}")
        betas = [cfg.beta] * model.n_models if betas is None else list(betas)
        if len(betas) != model.n_models:
            raise ValueError(f"got {len(betas)} betas for {model.n_models} models")
        if any(not (b >= 0 and math.isfinite(b)) for b in betas):
            raise ValueError(f"every beta must be a finite number >= 0, got {betas}")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.cuda_graph and self.device.type != "cuda":  # "auto" on a machine without a GPU
            raise ConfigError(f"train.cuda_graph needs a CUDA device; training runs on {self.device}")
        if self.device.type == "cpu":
            retain_freed_memory()  # reuse warm pages step after step (see memory.py)
        self.model = model.to(self.device)
        self.train = train.to(self.device, torch.float32)
        self.betas = torch.tensor(betas, dtype=torch.float32, device=self.device)
        self.batch_size = min(cfg.batch_size, self.train.shape[0])
        self.steps_per_epoch = self.train.shape[0] // self.batch_size
        self.total_epochs = cfg.warmup_epochs + cfg.epochs
        self.total_steps = self.total_epochs * self.steps_per_epoch
        if cfg.compile:
            model.family.compile_kernels(True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # foreach: one call per update for all parameters (fewer passes and dispatches than a loop)
        self.optimizer = Adamax(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.epoch = 0
        self.step = 0
        self.seconds = 0.0  # wall time spent training, across resumes
        self.history: list[dict] = []
        # families whose sampler is sized by the largest rate (Poisson) get n_exp once per epoch
        self._adaptive_n_exp = (cfg.estimator != "exact" and model.cfg.n_exp is None
                                and type(model.family).max_rate is not LatentFamily.max_rate)
        self._max_rate = 0.0
        self._epoch_max = torch.zeros((), device=self.device)
        self._graph: CapturedStep | None = None

    # ----------------------------------------------------------------- schedules
    def beta(self, step: int) -> Tensor:
        p = beta_at(step, self.total_steps, 0.0, 1.0, self.cfg.kl_anneal_fraction)
        start = torch.minimum(self.betas, torch.full_like(self.betas, self.cfg.beta_start))
        return start + (self.betas - start) * p

    def temperature(self, step: int) -> float:
        c = self.cfg
        return temperature_at(step, self.total_steps, c.temperature_start, c.temperature_end,
                              c.temperature_anneal_fraction, c.temperature_schedule)

    def lr(self, step: int) -> float:
        c = self.cfg
        return c.lr * lr_factor(step, c.warmup_epochs * self.steps_per_epoch, self.total_steps, c.eta_min / c.lr)

    # ------------------------------------------------------------------ training
    def _set_n_exp(self) -> None:
        if not self._adaptive_n_exp:
            return
        if self._max_rate == 0.0:  # first epoch: look at the first batch
            with torch.no_grad():
                post = self.model.encode(self.train[: self.batch_size])
                self._max_rate = float(self.model.family.max_rate(post))
        self.model.family.n_exp = poisson_n_exp(self._max_rate)

    def chunks(self, batch_size: int) -> int:
        """Number of pieces a step is split into so that one piece's ``(m, b, n K)``
        tensors hold at most about ``CHUNK_ELEMENTS`` values (at most ``M`` pieces).

        A stacked step's elementwise work is memory-bound: at M = 8, K = 512 its
        saved tensors (~100 MB) fall out of the CPU's cache while a piece's stay
        closer to it. The exact objective of a linear VAE is split along the model
        axis (each piece: some models on the whole batch, shaped like a model
        trained alone; :meth:`_exact_gradients`); other steps along the batch, whose
        pieces' gradients add up to the full batch's. Either way a loop over pieces, never one per model
        unless the models are that large.
        """
        if self.device.type != "cpu":
            return 1
        n = self.model.n_models * batch_size * self.model.cfg.K * self.model.family.n_params
        return max(1, min(self.model.n_models, -(-n // CHUNK_ELEMENTS)))

    def train_step(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One optimiser step on batch ``x``; returns per-model (F, recon, KL) batch means."""
        if self.cfg.cuda_graph:
            if self._graph is None or self._graph.x.shape != x.shape:
                self._graph = CapturedStep(self, x)
            out = self._graph.replay(x, self.beta(self.step), self.lr(self.step))
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(self.step)
            out = self._step(x, self.temperature(self.step), self.beta(self.step))
        self.step += 1
        return out

    def _step(self, x: Tensor, temperature: float, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gradient of the batch mean, clipping and the optimiser update, at the
        learning rate already in the optimiser (no host-side state changes)."""
        for p in self.params:  # what optimizer.zero_grad(set_to_none=True) does, without its hooks
            p.grad = None
        B = x.shape[0]
        n_pieces = self.chunks(B)
        if self.cfg.estimator == "exact" and getattr(self.model, "single_product_encoder", False):
            totals = self._exact_gradients(x, beta, n_pieces)
        else:
            totals = self._backward_by_rows(x, temperature, beta, n_pieces)
        clip_grad_norm_per_model(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        means = totals / B
        return means[0], means[1], means[2]

    def _backward_by_rows(self, x: Tensor, temperature: float, beta: Tensor, n_pieces: int) -> Tensor:
        """Gradients of the batch mean into ``.grad``, the batch in ``n_pieces`` pieces
        of rows; returns the summed (F, recon, KL) per model, ``(3, M)``."""
        B = x.shape[0]
        totals = torch.zeros(3, self.model.n_models, device=self.device)
        for piece in x.tensor_split(n_pieces):
            out = self.model(piece, self.cfg.estimator, temperature, self.generator)
            free_energy = out.free_energy(beta).sum(-1)  # (M,), summed over the piece
            (free_energy.sum() / B).backward()  # accumulates the gradient of the batch mean
            totals += torch.stack([free_energy.detach(), out.recon.detach().sum(-1), out.kl.detach().sum(-1)])
            if self._adaptive_n_exp:
                self._epoch_max = torch.maximum(self._epoch_max, self.model.family.max_rate(out.post))
        return totals

    def _exact_gradients(self, x: Tensor, beta: Tensor, n_pieces: int) -> Tensor:
        """The exact objective's gradients of the batch mean into ``.grad`` with no
        autograd graph, the stack in ``n_pieces`` pieces of models, each on the whole
        batch (see :meth:`chunks`); returns the summed (F, recon, KL) per model, ``(3, M)``.

        The encoder runs as one product for all models, and its weight gradient as
        one more (``model.encoder_grads``); in between, each piece gets the terms and
        gradients of its own models from the family (``LatentFamily.exact_gradients``,
        written out for the fused families), the encoder's into a slice of one buffer.
        Against autograd through the fused functions this saved ~0.9 ms of a P-VAE step
        at K = 512, batch 1000 (11.2 -> 10.2 ms on the 2-core development CPU): the
        engine's bookkeeping, and passes that per-model weights fold into products.
        """
        model, B = self.model, x.shape[0]
        with torch.no_grad():
            enc = model.encoder_output(x)  # (M, B, n K)
        params = dict(model.named_parameters())
        if n_pieces == 1:  # the whole stack: its tensors are the parameters, whose gradients these are
            out = model.exact_gradients(x, enc, None, 1.0 / B, beta / B)
            g_enc, grads, totals = out.enc, self._found(out), self._totals(out, beta)
        else:
            g_enc, grads, totals = self._exact_gradients_by_pieces(x, enc, beta, n_pieces, params)
        grads.update(model.encoder_grads(x, g_enc))
        for name, grad in grads.items():
            params[name].grad = grad
        return totals

    @staticmethod
    def _totals(out, beta: Tensor) -> Tensor:
        """(F, recon, KL) summed over the batch, ``(3, m)``, from a family's ``ExactGradients``."""
        return torch.stack([out.recon + beta * out.kl, out.recon, out.kl])

    @staticmethod
    def _found(out) -> dict[str, Tensor]:
        """The decoder's and priors' gradients of a family's ``ExactGradients``, by parameter name."""
        found = {f"prior_{name}": g for name, g in out.prior.items()}
        if out.dictionary is not None:
            found["dictionary"] = out.dictionary
        return found

    def _exact_gradients_by_pieces(self, x: Tensor, enc: Tensor, beta: Tensor, n_pieces: int,
                                   params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """:meth:`_exact_gradients` one piece of models at a time: the decoder and priors
        of each as detached slices (``model.piece_tensors``), their gradients written
        straight into full-size buffers, the encoder's into a slice of one buffer."""
        model, B, M = self.model, x.shape[0], self.model.n_models
        g_enc = torch.empty_like(enc)
        grads: dict[str, Tensor] = {}
        totals = torch.empty(3, M, device=self.device)
        start = 0
        for i in range(n_pieces):  # as tensor_split: the first M % n_pieces pieces hold one model more
            models = slice(start, start + M // n_pieces + (i < M % n_pieces))
            start = models.stop
            piece_beta = beta[models]
            out = model.exact_gradients(x, enc[models], model.piece_tensors(models), 1.0 / B, piece_beta / B,
                                        enc_grad_out=g_enc[models])
            if out.enc.data_ptr() != g_enc[models].data_ptr():
                g_enc[models] = out.enc  # a family that did not write into the buffer
            for name, grad in self._found(out).items():  # only the parameters' (learned) gradients
                if name not in grads:
                    grads[name] = torch.empty_like(params[name])
                grads[name][models] = grad
            totals[:, models] = self._totals(out, piece_beta)
        return g_enc, grads, totals

    def train_epoch(self) -> dict:
        """One pass over the training data in an order fixed by ``shuffle_seed`` and the epoch."""
        self.model.train()
        self._set_n_exp()
        self._epoch_max = torch.zeros((), device=self.device)
        order_gen = torch.Generator().manual_seed(self.cfg.shuffle_seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.train.shape[0], generator=order_gen).to(self.device)
        sums = torch.zeros(3, self.model.n_models, device=self.device)
        for i in range(self.steps_per_epoch):
            x = self.train.index_select(0, order[i * self.batch_size : (i + 1) * self.batch_size])
            sums += torch.stack(self.train_step(x))
        means = (sums / self.steps_per_epoch).cpu()
        if not torch.isfinite(means).all():
            raise FloatingPointError(f"training diverged at epoch {self.epoch}: loss {means[0].tolist()}")
        if self._adaptive_n_exp:
            self._max_rate = float(self._epoch_max)
        self.epoch += 1
        record = {"epoch": self.epoch, "step": self.step, "lr": self.lr(self.step - 1),
                  "temperature": self.temperature(self.step - 1),
                  "beta": self.beta(self.step - 1).tolist(), "loss": means[0].tolist(),
                  "recon": means[1].tolist(), "kl": means[2].tolist()}
        self.history.append(record)
        return record

    def fit(self, on_epoch=None, progress: bool = True) -> list[dict]:
        """Train until ``warmup_epochs + epochs`` epochs are done (resuming where it stands).

        ``on_epoch(trainer, record)`` runs after every epoch (checkpoints, logs).
        """
        bar = tqdm(total=self.total_epochs, initial=self.epoch, disable=not progress, desc="train", unit="epoch")
        with bar:
            while self.epoch < self.total_epochs:
                t0 = time.perf_counter()
                record = self.train_epoch()
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{sum(record['loss']) / len(record['loss']):.2f}")
                if on_epoch is not None:
                    on_epoch(self, record)
        return self.history

    # ---------------------------------------------------------------- resuming
    def save_state(self, path: str | Path) -> None:
        progress = {"epoch": self.epoch, "step": self.step, "max_rate": self._max_rate, "seconds": self.seconds}
        save_state(self.model, self.optimizer, self.generator, progress, path)

    def load_state(self, path: str | Path) -> None:
        progress = load_state(self.model, self.optimizer, self.generator, path)
        self._graph = None  # the loaded state lives in new tensors: capture again
        for group in self.optimizer.param_groups:
            group["capturable"] = False  # as saved by a graph run, it would refuse CPU steps
        self.epoch, self.step = int(progress["epoch"]), int(progress["step"])
        self._max_rate = float(progress.get("max_rate", 0.0))
        self.seconds = float(progress.get("seconds", 0.0))


class CapturedStep:
    """One exact training step of ``trainer`` captured as a CUDA graph.

    On a GPU a step is bound by launching its ~150 kernels from Python (2-4 ms
    against 0.1-0.15 ms for its matrix products on an H100); a replay launches
    them all at once. The graph reads the batch, the per-model beta and the
    learning rate from fixed tensors that :meth:`replay` fills, and Adamax runs
    in its capturable form (its step counters on the GPU). Capturing needs two
    warm-up steps; every parameter and optimiser moment is restored afterwards,
    so the trainer's results are those of the eager steps up to float rounding.
    """

    def __init__(self, trainer: Trainer, x: Tensor) -> None:
        opt, params, device = trainer.optimizer, trainer.params, trainer.device
        for group in opt.param_groups:
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        self.lr = [group["lr"] for group in opt.param_groups]
        for p in params:  # a loaded state keeps its step counters on the CPU
            if "step" in opt.state.get(p, {}):
                opt.state[p]["step"] = opt.state[p]["step"].to(device, torch.float32)
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in params if opt.state.get(p)}
        self.x = x.detach().clone()
        self.beta = trainer.beta(trainer.step).detach().clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: lazy state, cuBLAS workspaces, autograd's buffers
            for _ in range(2):
                trainer._step(self.x, 0.0, self.beta)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.out = trainer._step(self.x, 0.0, self.beta)
        with torch.no_grad():  # undo the warm-up steps, in place: the graph holds these tensors
            for p, p0 in zip(params, saved_params):
                p.copy_(p0)
            for p in params:  # moments created by the warm-up start from zero, as Adamax creates them
                for key, value in opt.state[p].items():
                    value.copy_(saved_state[p][key]) if p in saved_state else value.zero_()

    def replay(self, x: Tensor, beta: Tensor, lr: float) -> tuple[Tensor, Tensor, Tensor]:
        self.x.copy_(x)
        self.beta.copy_(beta)
        for t in self.lr:
            t.fill_(lr)
        self.graph.replay()
        return tuple(t.clone() for t in self.out)

