"""The weight helpers of the fused backward passes against explicit loops over samples."""

import pytest
import torch

from poissonvae.families.weights import add_weighted_, batch_sum, per_model, weight_total

M, B, K = 3, 5, 4


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"number": 0.3, "per model": torch.rand(M, 1, 1, generator=g, dtype=torch.float64),
            "per sample": torch.rand(M, B, 1, generator=g, dtype=torch.float64)}


def _full(w):
    """The weight as an explicit (M, B) table."""
    return torch.as_tensor(w, dtype=torch.float64).expand(M, B, 1).squeeze(-1)


@pytest.mark.parametrize("kind", ["number", "per model", "per sample"])
def test_weight_helpers_equal_loops_over_samples(kind):
    w = _weights()[kind]
    t = torch.randn(M, B, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = _full(w)
    want_sum = torch.stack([sum(table[m, b] * t[m, b] for b in range(B)) for m in range(M)])
    assert torch.allclose(batch_sum(w, t), want_sum)
    if per_model(w):  # a precomputed sum over the batch is used, not recomputed
        assert torch.allclose(batch_sum(w, t, t.sum(-2)), want_sum)
    total = weight_total(w, B)
    want_total = table.sum(-1)
    assert torch.allclose(torch.as_tensor(total, dtype=torch.float64).expand(M, 1).squeeze(-1), want_total)
    out = torch.ones(M, B, K, dtype=torch.float64)
    add_weighted_(out, t, w, value=2.0)
    assert torch.allclose(out, 1.0 + 2.0 * table.unsqueeze(-1) * t)
    assert per_model(w) == (kind != "per sample")
