"""The lean Adamax step against torch.optim.Adamax."""

from __future__ import annotations

import pytest
import torch

from poissonvae.optim import Adamax


def _problem(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 5, generator=g), torch.randn(7, generator=g)], torch.Generator().manual_seed(seed + 1)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lean_adamax_follows_torch_adamax(weight_decay):
    init, _ = _problem(0)
    ours = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    opt_a = Adamax(ours, lr=0.05, weight_decay=weight_decay, foreach=True)
    opt_b = torch.optim.Adamax(theirs, lr=0.05, weight_decay=weight_decay, foreach=True)
    g = torch.Generator().manual_seed(9)
    for step in range(12):
        grads = [torch.randn(p.shape, generator=g) * (10 if step == 3 else 1) for p in init]
        for params, opt in ((ours, opt_a), (theirs, opt_b)):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
        if step == 5:  # a changed learning rate is read at each step
            for opt in (opt_a, opt_b):
                opt.param_groups[0]["lr"] = 0.01
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    for pa, pb in zip(ours, theirs):
        for key in ("exp_avg", "exp_inf", "step"):
            assert torch.allclose(opt_a.state[pa][key], opt_b.state[pb][key], rtol=1e-6, atol=1e-8), key


def test_lean_adamax_state_loads_into_torch_and_back_and_capturable_falls_back():
    init, _ = _problem(1)
    p = init[0].clone().requires_grad_()
    opt = Adamax([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    other = torch.optim.Adamax([init[0].clone().requires_grad_()], lr=0.1)
    other.load_state_dict(opt.state_dict())  # same layout as torch's
    assert float(other.state_dict()["state"][0]["step"]) == 1.0
    again = Adamax([init[0].clone().requires_grad_()], lr=0.1)
    again.load_state_dict(other.state_dict())
    assert torch.equal(again.state_dict()["state"][0]["exp_inf"], opt.state_dict()["state"][0]["exp_inf"])
    # a tensor learning rate (as in a CUDA-graph step) takes torch's own path
    q = init[1].clone().requires_grad_()
    r = init[1].clone().requires_grad_()
    lean = Adamax([q], lr=torch.tensor(0.1))
    ref = torch.optim.Adamax([r], lr=torch.tensor(0.1))
    for params, o in (([q], lean), ([r], ref)):
        params[0].grad = torch.full_like(params[0], 0.5)
        o.step()
    assert torch.allclose(q, r)
