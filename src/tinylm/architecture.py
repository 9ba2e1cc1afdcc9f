"""The architecture choices a model is built from: the run config validates a model against them and
`tinylm.nn` builds them, so both always offer the same ones.

Light on purpose (no torch), so that reading a config costs no torch import.
"""
NORMS = ("pre", "post", "none")        # RMSNorm before each sublayer, after each residual addition, or none
POSITIONS = ("rope", "none")           # rotary position embeddings, or none at all (NoPE)
FFNS = ("swiglu", "silu")              # the gated SwiGLU feed-forward, or the plain two-matrix SiLU MLP
ATTENTIONS = ("reference", "fused")    # tinylm.nn.functional's formula, or torch's fused kernels


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """ValueError naming the setting when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")
