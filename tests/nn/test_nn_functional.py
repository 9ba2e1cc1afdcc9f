"""tinylm.nn.functional against hand formulas, torch's own kernels (as oracles) and gradcheck."""
import math

import pytest
import torch

from tinylm.nn.functional import cross_entropy, gradient_clipping, scaled_dot_product_attention, silu, softmax


def test_softmax_matches_formula_and_is_stable():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    for dim in (0, 1, 2, -1):
        expected = torch.exp(x) / torch.exp(x).sum(dim=dim, keepdim=True)
        torch.testing.assert_close(softmax(x, dim), expected)
    # exp(1000) overflows; shifting by the maximum keeps the result finite and exact.
    big = torch.tensor([[1000.0, 1000.0, 1000.0 - math.log(2)]])
    torch.testing.assert_close(softmax(big, -1), torch.tensor([[0.4, 0.4, 0.2]]))


def test_silu_matches_formula():
    x = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(silu(x), x / (1 + torch.exp(-x)))


def test_attention_matches_torch_kernel_with_and_without_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 4)
    oracle = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), oracle(q, k, v))
    mask = torch.rand(5, 6) > 0.4
    mask[:, 0] = True  # every query sees at least one key
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), oracle(q, k, v, attn_mask=mask))


def test_attention_mask_removes_masked_keys_exactly():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 3)
    mask = torch.tensor([True, False, True, True, False, False]).expand(4, 6)
    kept = mask[0]
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask),
                               scaled_dot_product_attention(q, k[:, kept], v[:, kept]))


def test_cross_entropy_matches_log_softmax_and_is_stable():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 11, dtype=torch.float64) * 4
    targets = torch.randint(0, 11, (2, 3))
    probs = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    expected = -torch.log(probs.gather(-1, targets.unsqueeze(-1))).mean()
    torch.testing.assert_close(cross_entropy(logits, targets), expected)
    # Large logits: softmax in float32 would overflow; log-sum-exp does not.
    shifted = cross_entropy((logits + 1e4).float(), targets)
    torch.testing.assert_close(shifted, expected.float(), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(cross_entropy(torch.tensor([[1e30, 0.0]]), torch.tensor([1])))


def test_cross_entropy_upcasts_bf16_logits():
    logits = torch.randn(4, 9).bfloat16()
    targets = torch.randint(0, 9, (4,))
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.float(), targets))


def test_cross_entropy_gradient_is_the_formulas_in_the_logits_dtype_and_survives_a_second_backward():
    torch.manual_seed(5)
    logits = (torch.randn(3, 4, 13) * 3).bfloat16().requires_grad_()
    targets = torch.randint(0, 13, (3, 4))
    upcast = logits.detach().float().requires_grad_()
    textbook = (torch.logsumexp(upcast, -1) - upcast.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).mean()
    textbook.backward()
    loss = cross_entropy(logits, targets)
    loss.backward(retain_graph=True)
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad, upcast.grad.bfloat16())
    first = logits.grad.clone()
    logits.grad = None
    (2 * loss).backward()
    torch.testing.assert_close(logits.grad, (2 * first.float()).bfloat16())


def test_gradchecks_in_float64():
    torch.manual_seed(3)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softmax(t, -1), (x,))
    assert torch.autograd.gradcheck(silu, (x,))
    targets = torch.randint(0, 6, (3,))
    assert torch.autograd.gradcheck(lambda t: cross_entropy(t, targets), (x,))
    q, k, v = (torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask), (q, k, v))


def _parameters_with_grads(*grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return params


def test_gradient_clipping_scales_to_the_global_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    params = _parameters_with_grads(*grads)
    params.append(torch.nn.Parameter(torch.ones(3)))  # no grad: ignored
    norm = gradient_clipping(params, max_l2_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(params[0].grad, torch.tensor([3.0 * scale, 0.0]))
    torch.testing.assert_close(params[1].grad, torch.tensor([[0.0], [4.0 * scale]]))
    assert params[2].grad is None


def test_gradient_clipping_leaves_small_gradients_alone():
    params = _parameters_with_grads(torch.tensor([0.3, 0.4]))
    norm = gradient_clipping(params, max_l2_norm=1.0)
    assert norm.item() == pytest.approx(0.5)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.3, 0.4]))
