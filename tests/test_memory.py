"""Freed memory stays mapped between training steps (poissonvae.memory), measured in page faults."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

from poissonvae.memory import retain_freed_memory

_SCRIPT = """
import json, resource, torch
from poissonvae.config import ModelConfig, TrainConfig
from poissonvae.memory import retain_freed_memory
from poissonvae.models import LinearVAE
from poissonvae.training import Trainer
torch.set_num_threads(1)
x = torch.randn(1200, 256, generator=torch.Generator().manual_seed(0))
trainer = Trainer(LinearVAE(ModelConfig(family="gaussian_relu", K=512), seeds=[0, 1]),
                  TrainConfig(epochs=1, warmup_epochs=0, batch_size=600), x, betas=[0.5, 1.0])
batch = trainer.train[:600]
for _ in range(5):  # the heap reaches its peak within three steps (first ones fault ~10k, 3k, 1k pages)
    trainer.train_step(batch)
faults = []
for _ in range(12):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.train_step(batch)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": retain_freed_memory(), "faults": faults}))
"""


def _faults(flag: str) -> dict:
    env = dict(os.environ, POISSONVAE_RETAIN_MEMORY=flag, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_training_steps_stop_refaulting_their_memory():
    default, retained = _faults("0"), _faults("1")
    assert not default["applied"] and retained["applied"]
    # the default allocator hands the step's tensors back to the OS and faults them in again
    # (erratically: 0 to 8k pages a step); retained memory is reused, so a typical step faults
    # ~0 pages (the odd step still grows the heap once fragmentation moves its peak)
    mean_default = statistics.mean(default["faults"])
    assert mean_default > 300, default
    assert statistics.median(retained["faults"]) < 0.05 * mean_default, (default, retained)
    assert statistics.mean(retained["faults"]) < 0.5 * mean_default, (default, retained)


def test_retain_freed_memory_is_idempotent():
    first = retain_freed_memory()
    assert retain_freed_memory() is first
