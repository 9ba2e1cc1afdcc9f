"""AdamW against torch.optim.AdamW and a float64 hand implementation; cosine schedule values."""
import math

import pytest
import torch

from tinylm.optim import AdamW, cosine_lr


def _problem(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=dtype)), torch.nn.Parameter(torch.randn(7, dtype=dtype))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(20)]
    return params, grads


def _run(optimizer_class, params, grads, **kwargs):
    params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer = optimizer_class(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


def adamw_by_hand(params, grads, lr, betas, eps, weight_decay):
    """Oracle in float64: Adam step with bias correction, then p -= lr * weight_decay * p (API.md)."""
    beta1, beta2 = betas
    params = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g.double()
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            params[i] = params[i] - lr * m_hat / (torch.sqrt(v_hat) + eps)
            params[i] = params[i] - lr * weight_decay * params[i]
    return params


def test_adamw_equals_torch_without_weight_decay():
    params, grads = _problem()
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    ours, _ = _run(AdamW, params, grads, **kwargs)
    theirs, _ = _run(torch.optim.AdamW, params, grads, **kwargs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adamw_with_weight_decay_matches_hand_oracle_and_torch():
    params, grads = _problem(seed=1)
    kwargs = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    ours, _ = _run(AdamW, params, grads, **kwargs)
    for a, b in zip(ours, adamw_by_hand(params, grads, **kwargs)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    # torch decays before the Adam step instead of after: the results differ by at most
    # lr^2 * weight_decay * |update| (|update| <~ 1 per step) per step, 20 steps here.
    theirs, _ = _run(torch.optim.AdamW, params, grads, **kwargs)
    bound = 20 * kwargs["lr"] ** 2 * kwargs["weight_decay"] * 1.5
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= bound


def test_adamw_state_dict_round_trip_continues_identically():
    params, grads = _problem(seed=2)
    full, _ = _run(AdamW, params, grads, lr=1e-2)
    half, optimizer = _run(AdamW, params, grads[:10], lr=1e-2)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in half]
    optimizer2 = AdamW(resumed, lr=1e-2)
    optimizer2.load_state_dict(optimizer.state_dict())
    for step_grads in grads[10:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g.clone()
        optimizer2.step()
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


def test_adamw_skips_parameters_without_gradients_and_follows_group_lr():
    frozen = torch.nn.Parameter(torch.ones(3))
    moving = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([frozen, moving], lr=0.1, weight_decay=0.0)
    moving.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3)) and frozen not in optimizer.state
    # first Adam step moves each coordinate by lr (m_hat / sqrt(v_hat) = sign(g))
    torch.testing.assert_close(moving.detach(), torch.full((3,), 0.9))
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    torch.testing.assert_close(moving.detach(), torch.full((3,), 0.9))


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(eps=0.0), dict(weight_decay=-0.1)])
def test_adamw_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="AdamW"):
        AdamW([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_cosine_schedule_values():
    lr = lambda it: cosine_lr(it, max_learning_rate=1.0, min_learning_rate=0.1, warmup_iters=7,  # noqa: E731
                              cosine_cycle_iters=21)
    assert lr(0) == 0.0
    assert lr(3) == pytest.approx(3 / 7)
    assert lr(7) == pytest.approx(1.0)
    assert lr(14) == pytest.approx(0.55)                      # half-way: (max + min) / 2
    assert lr(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 14)))
    assert lr(21) == pytest.approx(0.1)
    assert lr(22) == lr(1000) == 0.1
    values = [lr(it) for it in range(7, 22)]
    assert all(a >= b for a, b in zip(values, values[1:]))   # monotone decay after warm-up


def test_cosine_schedule_without_warmup_starts_at_max():
    assert cosine_lr(0, 2.0, 0.0, 0, 10) == 2.0
    assert cosine_lr(10, 2.0, 0.0, 0, 10) == pytest.approx(0.0)
