"""Linear, Embedding, RMSNorm, RoPE, feed-forward and attention against independent computations."""
import math

import pytest
import torch

from tinylm.nn import (
    Embedding,
    Linear,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
)


def rope_by_complex_numbers(x, positions, theta):
    """Oracle: pair (x[2k], x[2k+1]) as the complex number x[2k] + i x[2k+1], times e^(i pos w_k)."""
    d_k = x.shape[-1]
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double())
    w = theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)
    rotated = z * torch.polar(torch.ones_like(w), positions.double()[..., None] * w)
    return torch.stack((rotated.real, rotated.imag), dim=-1).flatten(-2)


def test_linear_and_embedding_compute_the_textbook_maps():
    linear = Linear(5, 3)
    assert linear.weight.shape == (3, 5)
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(linear(x), torch.einsum("bsi,oi->bso", x, linear.weight))
    embedding = Embedding(10, 6)
    ids = torch.tensor([[1, 9, 1], [0, 2, 3]])
    out = embedding(ids)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out[0, 0], embedding.weight[1])
    torch.testing.assert_close(out[1, 2], embedding.weight[3])


@pytest.mark.parametrize("make, std", [(lambda: Linear(300, 500), math.sqrt(2 / 800)),
                                        (lambda: Embedding(400, 300), 1.0)])
def test_initialisation_is_truncated_normal(make, std):
    torch.manual_seed(0)
    weight = make().weight.detach()
    assert weight.abs().max() <= 3 * std
    # std of a normal truncated at +-3 sigma is 0.9866 sigma
    assert weight.std().item() == pytest.approx(0.9866 * std, rel=0.02)
    assert weight.mean().item() == pytest.approx(0.0, abs=0.01 * std)


def test_rmsnorm_matches_torch_and_keeps_dtype():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    oracle = torch.nn.RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        oracle.weight.copy_(norm.weight)
    x = torch.randn(3, 4, 8) * 10
    torch.testing.assert_close(norm(x), oracle(x))
    x_bf16 = x.bfloat16()
    out = norm(x_bf16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, oracle(x_bf16.float()).bfloat16())  # computed in float32, rounded once


def test_rmsnorm_and_swiglu_gradcheck_float64():
    torch.manual_seed(4)
    norm = RMSNorm(6, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, dtype=torch.float64) + 0.5)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(norm, {"weight": w}, (x,)),
                                    (norm.weight.detach().clone().requires_grad_(),))
    assert torch.autograd.gradcheck(SwiGLU(6, 10, dtype=torch.float64), (x,))


def test_rope_matches_complex_rotation_and_broadcasts_positions():
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=8, max_seq_len=32)
    x = torch.randn(2, 3, 5, 8)  # (batch, heads, seq, d_k)
    positions = torch.tensor([0, 1, 7, 30, 31])
    expected = rope_by_complex_numbers(x, positions, 10000.0).float()
    torch.testing.assert_close(rope(x, positions), expected)
    # per-batch positions (batch, 1, seq) broadcast over heads
    batch_positions = torch.stack([positions, positions.flip(0)])[:, None, :]
    out = rope(x, batch_positions)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], rope_by_complex_numbers(x[1], positions.flip(0), 10000.0).float())
    # position 0 is the identity; rotations keep norms
    torch.testing.assert_close(rope(x, torch.zeros(5, dtype=torch.long)), x)
    torch.testing.assert_close(rope(x, positions).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rope_compiled_form_equals_the_eager_one_forward_and_backward(monkeypatch, dtype):
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=8, max_seq_len=16)
    x = torch.randn(2, 16, 3, 8).transpose(1, 2).to(dtype)  # (batch, heads, seq, d_k), as attention lays it out
    positions = torch.arange(16)
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda compiling=compiling: compiling)
        leaf = x.detach().requires_grad_()
        out = rope(leaf, positions)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(dtype))
        results.append((out, leaf.grad))
    assert results[0][0].dtype == dtype and results[0][1].dtype == dtype
    # In bf16 the two forms round the gradient at different points: one bf16 step (2^-8 relative) apart.
    tolerance = {"rtol": 1.6e-2, "atol": 8e-3} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(results[0], results[1], **tolerance)


def test_rope_rejects_odd_dimension():
    with pytest.raises(ValueError, match="even"):
        RotaryPositionalEmbedding(10000.0, 7, 16)


def test_feed_forwards_match_formulas():
    x = torch.randn(2, 3, 8)
    swiglu = SwiGLU(8, 12)
    assert (swiglu.w1.weight.shape, swiglu.w2.weight.shape, swiglu.w3.weight.shape) == ((12, 8), (8, 12), (12, 8))
    a, b = x @ swiglu.w1.weight.T, x @ swiglu.w3.weight.T
    torch.testing.assert_close(swiglu(x), (a * torch.sigmoid(a) * b) @ swiglu.w2.weight.T)
    mlp = SiLUFeedForward(8, 32)
    assert sorted(n for n, _ in mlp.named_parameters()) == ["w1.weight", "w2.weight"]
    h = x @ mlp.w1.weight.T
    torch.testing.assert_close(mlp(x), torch.nn.functional.silu(h) @ mlp.w2.weight.T)


def attention_per_head(x, attn, theta=None):
    """Oracle: loop over heads, explicit lower-triangular mask, torch.softmax, complex-number RoPE."""
    seq, d_model = x.shape[-2], x.shape[-1]
    d_head = d_model // attn.num_heads
    mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    positions = torch.arange(seq)
    heads = []
    for h in range(attn.num_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        q = x.double() @ attn.q_proj.weight[rows].double().T
        k = x.double() @ attn.k_proj.weight[rows].double().T
        v = x.double() @ attn.v_proj.weight[rows].double().T
        if theta is not None:
            q, k = rope_by_complex_numbers(q, positions, theta), rope_by_complex_numbers(k, positions, theta)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(~mask, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return (torch.cat(heads, dim=-1) @ attn.output_proj.weight.double().T).float()


@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_attention_matches_per_head_loop(use_rope, backend):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(500.0, 4, 16) if use_rope else None
    attn = MultiHeadSelfAttention(16, 4, rope=rope, attention=backend)
    x = torch.randn(2, 9, 16)
    expected = attention_per_head(x, attn, theta=500.0 if use_rope else None)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    attn = MultiHeadSelfAttention(16, 2, rope=RotaryPositionalEmbedding(10000.0, 8, 16))
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[0, 4:] = torch.randn(2, 16)
    torch.testing.assert_close(attn(x)[0, :4], attn(changed)[0, :4])


def test_attention_gradcheck_float64():
    torch.manual_seed(1)
    attn = MultiHeadSelfAttention(8, 2, rope=RotaryPositionalEmbedding(100.0, 4, 8, dtype=torch.float64),
                                  dtype=torch.float64)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,))


def test_attention_rejects_bad_shapes_and_backends():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="attention: 'flash'"):
        MultiHeadSelfAttention(8, 2, attention="flash")
