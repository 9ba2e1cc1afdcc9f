"""AdamW, eager and compiled, against torch.optim.AdamW and a float64 hand implementation; cosine
schedule values."""
import math

import pytest
import torch

from tinylm.optim import AdamW, cosine_lr

COMPILED = pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
# The trainer's kind of schedule: warm-up, then cosine decay, so every step has a learning rate of its own.
SCHEDULE = [cosine_lr(t, 1e-2, 1e-3, 5, 20) for t in range(1, 21)]


def _problem(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=dtype)), torch.nn.Parameter(torch.randn(7, dtype=dtype))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(20)]
    return params, grads


def _run(optimizer_class, params, grads, lrs=None, **kwargs):
    """`optimizer_class` over the steps of `grads`, at the learning rates `lrs` (one per step) if given."""
    params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    optimizer = optimizer_class(params, **kwargs)
    _steps(optimizer, params, grads, lrs)
    return params, optimizer


def _steps(optimizer, params, grads, lrs=None):
    for step, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        if lrs is not None:
            optimizer.param_groups[0]["lr"] = lrs[step]
        optimizer.step()


def adamw_by_hand(params, grads, lr, betas, eps, weight_decay, moments=None):
    """Oracle in float64: Adam step with bias correction, then p -= lr * weight_decay * p (API.md).
    `lr` is one rate or one per step; `moments` collects the final (m, v) of each parameter."""
    beta1, beta2 = betas
    lrs = lr if isinstance(lr, list) else [lr] * len(grads)
    params = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, (lr, step_grads) in enumerate(zip(lrs, grads), start=1):
        for i, g in enumerate(step_grads):
            g = g.double()
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            params[i] = params[i] - lr * m_hat / (torch.sqrt(v_hat) + eps)
            params[i] = params[i] - lr * weight_decay * params[i]
    if moments is not None:
        moments.extend(zip(m, v))
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


@COMPILED
def test_adamw_with_weight_decay_and_a_schedule_matches_hand_oracle_and_torch(compiled):
    params, grads = _problem(seed=3)
    kwargs = dict(betas=(0.9, 0.95), eps=1e-3, weight_decay=0.1)  # an eps large enough to matter
    ours, _ = _run(AdamW, params, grads, SCHEDULE, compiled=compiled, lr=1.0, **kwargs)
    for a, b in zip(ours, adamw_by_hand(params, grads, lr=SCHEDULE, **kwargs)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    theirs, _ = _run(torch.optim.AdamW, params, grads, SCHEDULE, lr=1.0, **kwargs)
    bound = sum(lr ** 2 for lr in SCHEDULE) * kwargs["weight_decay"] * 1.5  # decay order, as above
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= bound


def test_compiled_and_eager_updates_agree():
    params, grads = _problem(seed=4)
    kwargs = dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    eager, eager_optimizer = _run(AdamW, params, grads, SCHEDULE, **kwargs)
    compiled, compiled_optimizer = _run(AdamW, params, grads, SCHEDULE, compiled=True, **kwargs)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(eager, compiled):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(eager_optimizer.state[a][key], compiled_optimizer.state[b][key],
                                       rtol=1e-5, atol=1e-7)
        assert eager_optimizer.state[a]["step"] == compiled_optimizer.state[b]["step"] == 20


def test_compiled_update_compiles_once_for_every_learning_rate_and_step():
    torch._dynamo.reset()  # a graph of an earlier test would make the count below 0
    params, grads = _problem(seed=5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    trained, optimizer = _run(AdamW, params, grads[:1], SCHEDULE[:1], compiled=True, lr=1.0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _steps(optimizer, trained, grads[1:], SCHEDULE[1:])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1
    for a, b in zip(trained, adamw_by_hand(params, grads, lr=SCHEDULE, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.01)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)  # the updates did happen


@COMPILED
def test_adamw_state_dict_round_trip_continues_identically(compiled):
    params, grads = _problem(seed=2)
    full, _ = _run(AdamW, params, grads, SCHEDULE, compiled=compiled, lr=1e-2)
    half, optimizer = _run(AdamW, params, grads[:10], SCHEDULE[:10], compiled=compiled, lr=1e-2)
    state = optimizer.state_dict()
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} and type(s["step"]) is int
               for s in state["state"].values())  # no denominator buffers in checkpoints
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in half]
    optimizer2 = AdamW(resumed, lr=1e-2, compiled=compiled)
    optimizer2.load_state_dict(state)
    _steps(optimizer2, resumed, grads[10:], SCHEDULE[10:])
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


@COMPILED
def test_adamw_continues_from_a_state_written_by_the_earlier_implementation(compiled):
    """Its state dict: a Python int step and the two moments per parameter, as checkpoints hold it."""
    params, grads = _problem(seed=6)
    kwargs = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    moments = []
    half = adamw_by_hand(params, grads[:10], lr=SCHEDULE[:10], moments=moments, **kwargs)
    old_state = {"state": {i: {"step": 10, "exp_avg": m.float(), "exp_avg_sq": v.float()}
                           for i, (m, v) in enumerate(moments)},
                 "param_groups": [{"lr": SCHEDULE[9], **kwargs, "params": list(range(len(params)))}]}
    resumed = [torch.nn.Parameter(p.float()) for p in half]
    optimizer = AdamW(resumed, compiled=compiled)
    optimizer.load_state_dict(old_state)
    _steps(optimizer, resumed, grads[10:], SCHEDULE[10:])
    assert all(optimizer.state[p]["step"] == 20 for p in resumed)
    for a, b in zip(resumed, adamw_by_hand(params, grads, lr=SCHEDULE, **kwargs)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


@COMPILED
def test_adamw_skips_parameters_without_gradients_and_follows_group_lr(compiled):
    frozen = torch.nn.Parameter(torch.ones(3))
    moving = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([frozen, moving], lr=0.1, weight_decay=0.0, compiled=compiled)
    moving.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3)) and frozen not in optimizer.state
    # first Adam step moves each coordinate by lr (m_hat / sqrt(v_hat) = sign(g))
    torch.testing.assert_close(moving.detach(), torch.full((3,), 0.9))
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    torch.testing.assert_close(moving.detach(), torch.full((3,), 0.9))
    frozen.grad, moving.grad = torch.ones(3), torch.ones(3)
    optimizer.param_groups[0]["lr"] = 0.1
    optimizer.step()  # the first step of one, the third of the other: each with its own bias corrections
    assert optimizer.state[frozen]["step"] == 1 and optimizer.state[moving]["step"] == 3
    torch.testing.assert_close(frozen.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(moving.detach(), torch.full((3,), 0.8))


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
