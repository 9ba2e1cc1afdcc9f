"""TransformerLM against a plain re-implementation, its variants, fast paths, KV cache and FLOPs."""
import contextlib
import math

import pytest
import torch

from tinylm.config import ModelConfig
from tinylm.nn import (
    TransformerBlock,
    TransformerLM,
    build_model,
    forward_flops_per_token,
    model_flops_utilization,
    parameter_count,
    training_flops_per_token,
)
from tinylm.nn.functional import cross_entropy
from tinylm.optim import AdamW
from tinylm.training.step import ModelLoss, compile_static

TINY = ModelConfig(vocab_size=61, context_length=12, d_model=16, num_layers=2, num_heads=4, d_ff=24,
                   rope_theta=100.0)


def plain_lm(weights, ids, cfg):
    """Second implementation, float64, straight from the state dict (no tinylm code)."""
    w = {k: v.double() for k, v in weights.items()}
    seq, d_head = ids.shape[-1], cfg.d_model // cfg.num_heads

    def rms(x, gain):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * gain

    def rotate(t):  # t: (batch, heads, seq, d_head); angle pos * theta^(-2k/d)
        k = torch.arange(d_head // 2, dtype=torch.float64)
        angle = torch.arange(seq, dtype=torch.float64)[:, None] * cfg.rope_theta ** (-2 * k / d_head)
        cos, sin = torch.cos(angle), torch.sin(angle)
        out = torch.empty_like(t)
        out[..., 0::2] = t[..., 0::2] * cos - t[..., 1::2] * sin
        out[..., 1::2] = t[..., 0::2] * sin + t[..., 1::2] * cos
        return out

    def attention(x, p):
        def heads(t):
            return t.reshape(*t.shape[:-1], cfg.num_heads, d_head).transpose(1, 2)
        q, k, v = (heads(x @ w[f"{p}.attn.{n}_proj.weight"].T) for n in "qkv")
        if cfg.position == "rope":
            q, k = rotate(q), rotate(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)
        scores = scores + torch.triu(torch.full((seq, seq), float("-inf"), dtype=torch.float64), diagonal=1)
        out = torch.softmax(scores, -1) @ v
        return out.transpose(1, 2).reshape(x.shape) @ w[f"{p}.attn.output_proj.weight"].T

    def ffn(x, p):
        a = x @ w[f"{p}.ffn.w1.weight"].T
        hidden = a * torch.sigmoid(a)
        if cfg.ffn == "swiglu":
            hidden = hidden * (x @ w[f"{p}.ffn.w3.weight"].T)
        return hidden @ w[f"{p}.ffn.w2.weight"].T

    x = w["token_embeddings.weight"][ids]
    for i in range(cfg.num_layers):
        p = f"layers.{i}"
        if cfg.norm == "pre":
            x = x + attention(rms(x, w[f"{p}.ln1.weight"]), p)
            x = x + ffn(rms(x, w[f"{p}.ln2.weight"]), p)
        elif cfg.norm == "post":
            x = rms(x + attention(x, p), w[f"{p}.ln1.weight"])
            x = rms(x + ffn(x, p), w[f"{p}.ln2.weight"])
        else:
            x = x + attention(x, p)
            x = x + ffn(x, p)
    if cfg.norm == "pre":
        x = rms(x, w["ln_final.weight"])
    return x @ w["lm_head.weight"].T


VARIANTS = [{}, {"norm": "post"}, {"norm": "none"}, {"position": "none"}, {"ffn": "silu", "d_ff": 64}]


def config(**changes):
    values = {**TINY.__dict__, **changes}
    return ModelConfig(**values)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "default")
def test_lm_matches_plain_implementation(variant):
    torch.manual_seed(0)
    cfg = config(**variant)
    model = build_model(cfg)
    with torch.no_grad():  # random gains too, so a norm that is skipped or misplaced shows up
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                p.copy_(torch.rand_like(p) + 0.5)
    ids = torch.randint(0, cfg.vocab_size, (3, cfg.context_length))
    expected = plain_lm(model.state_dict(), ids, cfg)
    torch.testing.assert_close(model(ids).double(), expected, rtol=1e-4, atol=1e-4)


def test_state_dict_keys_and_shapes():
    model = build_model(TINY)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    d, f, v = TINY.d_model, TINY.d_ff, TINY.vocab_size
    expected = {"token_embeddings.weight": (v, d), "ln_final.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(TINY.num_layers):
        expected |= {f"layers.{i}.ln1.weight": (d,), f"layers.{i}.ln2.weight": (d,),
                     f"layers.{i}.ffn.w1.weight": (f, d), f"layers.{i}.ffn.w2.weight": (d, f),
                     f"layers.{i}.ffn.w3.weight": (f, d)}
        expected |= {f"layers.{i}.attn.{n}.weight": (d, d) for n in ("q_proj", "k_proj", "v_proj", "output_proj")}
    assert shapes == expected


@pytest.mark.parametrize("variant, absent_suffixes", [
    ({"norm": "post"}, ("ln_final.weight",)),
    ({"norm": "none"}, ("ln_final.weight", "ln1.weight", "ln2.weight")),
    ({"ffn": "silu"}, ("ffn.w3.weight",)),
    ({"position": "none"}, ()),
])
def test_variants_have_exactly_their_parameters(variant, absent_suffixes):
    cfg = config(**variant)
    keys = set(build_model(cfg).state_dict())
    default_keys = set(build_model(TINY).state_dict())
    assert keys == {k for k in default_keys if not k.endswith(absent_suffixes)}
    assert sum(p.numel() for p in build_model(cfg).parameters()) == parameter_count(cfg)


def test_nope_has_no_positional_information():
    # One layer without positions: the last position attends to the set of earlier tokens, so
    # permuting them leaves its output unchanged; with RoPE the order matters.
    torch.manual_seed(1)
    model = build_model(config(position="none", num_layers=1))
    ids = torch.tensor([[5, 9, 11, 2, 7]])
    swapped = torch.tensor([[9, 5, 2, 11, 7]])
    torch.testing.assert_close(model(ids)[0, -1], model(swapped)[0, -1], rtol=1e-5, atol=1e-5)
    rope_model = build_model(config(num_layers=1))
    assert not torch.allclose(rope_model(ids)[0, -1], rope_model(swapped)[0, -1], atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "layer"}, "norm: 'layer'"),
    ({"position": "alibi"}, "position: 'alibi'"),
    ({"ffn": "gelu"}, "ffn: 'gelu'"),
    ({"attention": "flash"}, "attention: 'flash'"),
    ({"num_heads": 3}, "not divisible by num_heads=3"),
])
def test_bad_arguments_raise_clear_value_errors(kwargs, message):
    args = dict(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=4, d_ff=8, rope_theta=1e4)
    with pytest.raises(ValueError, match=message):
        TransformerLM(**{**args, **kwargs})


def test_too_long_input_raises():
    with pytest.raises(ValueError, match="exceeds context_length=12"):
        build_model(TINY)(torch.zeros(1, 13, dtype=torch.long))


def test_block_gradcheck_float64():
    torch.manual_seed(2)
    block = TransformerBlock(8, 2, 12, 6, 100.0, dtype=torch.float64)
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def _pair(attention="fused"):
    torch.manual_seed(3)
    reference = build_model(TINY)
    fast = build_model(TINY, attention=attention)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def test_fused_attention_equals_reference_forward_and_backward():
    reference, fused = _pair()
    ids = torch.randint(0, TINY.vocab_size, (4, TINY.context_length))
    losses = []
    for model in (reference, fused):
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(reference.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_stays_close_to_fp32():
    # Tolerance: bf16 keeps 8 significant bits (relative error 2^-8 ~ 0.4%) per matmul; logits of
    # this model are O(1), so 5e-2 absolute / 2% of the loss bounds a few stacked roundings.
    reference, fused = _pair()
    ids = torch.randint(0, TINY.vocab_size, (4, TINY.context_length))
    with torch.no_grad():
        expected = reference(ids)
        for model in (reference, fused):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(ids)
            assert logits.dtype == torch.bfloat16
            torch.testing.assert_close(logits.float(), expected, rtol=0, atol=5e-2)
            loss = cross_entropy(logits, ids)
            assert loss.item() == pytest.approx(cross_entropy(expected, ids).item(), rel=2e-2)


def test_cpu_bf16_autocast_runs_fused_attention_as_torchs_softmax_between_bf16_matmuls(monkeypatch):
    # The CPU flash kernel is the slow choice there in either precision (see MultiHeadSelfAttention._attend).
    softmax_inputs = []
    softmax = torch.softmax

    def recording_softmax(x, dim):
        softmax_inputs.append((x.dtype, x.shape))
        return softmax(x, dim)

    def no_flash_kernel(*args, **kwargs):
        raise AssertionError("the CPU flash kernel ran under bf16 autocast")

    monkeypatch.setattr(torch, "softmax", recording_softmax)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_flash_kernel)
    _, fused = _pair()
    ids = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fused(ids)
    logits.float().sum().backward()
    assert logits.dtype == torch.bfloat16
    scores = (2, TINY.num_heads, TINY.context_length, TINY.context_length)
    assert softmax_inputs == [(torch.bfloat16, scores)] * TINY.num_layers
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fused.parameters())


@pytest.mark.slow
def test_torch_compile_equals_reference():
    reference, fused = _pair()
    # Model and loss in one graph, as the trainer has them.
    compiled = compile_static(ModelLoss(fused, contextlib.nullcontext))
    ids = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    loss = compiled(ids[:, :-1], ids[:, 1:])
    loss.backward()
    expected = cross_entropy(reference(ids[:, :-1]), ids[:, 1:])
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.lm_head.weight.grad, reference.lm_head.weight.grad, rtol=1e-4, atol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not stall when the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_overfits_one_batch(one_thread):
    torch.manual_seed(4)
    model = build_model(TINY)
    ids = torch.randint(0, TINY.vocab_size, (4, TINY.context_length + 1))
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first == pytest.approx(math.log(TINY.vocab_size), rel=0.25)  # starts near uniform
    assert loss.item() < 0.05


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_kv_cache_gives_the_uncached_logits(backend):
    torch.manual_seed(5)
    model = build_model(TINY, attention=backend)
    ids = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    full = model(ids)
    cache = model.new_kv_cache()
    pieces = [model(ids[:, :5], kv_cache=cache)]                 # prefill 5 positions
    pieces += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(5, 8)]  # one at a time
    pieces.append(model(ids[:, 8:], kv_cache=cache))              # a chunk after the cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(ids[:, :1], kv_cache=cache)


def test_parameter_count_and_flops_match_hand_counts():
    cfg = ModelConfig()  # reference size: vocab 10000, ctx 256, d 512, d_ff 1344, 4 layers
    model = build_model(cfg, device="meta")  # shapes only, no memory or initialisation work
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    assert parameter_count(cfg, include_embedding=False) == parameter_count(cfg) - 10000 * 512
    d, f, v, t, n = 512, 1344, 10000, 256, 4
    per_layer = 2 * (4 * d * d + 3 * d * f) + 2 * 2 * t * d
    assert forward_flops_per_token(cfg) == n * per_layer + 2 * d * v
    assert training_flops_per_token(cfg) == 3 * forward_flops_per_token(cfg)
    assert forward_flops_per_token(cfg, seq_len=1) == n * (per_layer - 2 * 2 * (t - 1) * d) + 2 * d * v
    # 546,133 tokens/s (327.68M tokens in 10 minutes) on a GPU of 989 TFLOP/s:
    assert model_flops_utilization(327_680_000 / 600, cfg, 989e12) == pytest.approx(
        327_680_000 / 600 * training_flops_per_token(cfg) / 989e12)
    # The 6N rule of thumb (N without the embedding lookup, which costs no FLOPs) is within 10 %.
    assert training_flops_per_token(cfg) == pytest.approx(6 * parameter_count(cfg, include_embedding=False), rel=0.1)
