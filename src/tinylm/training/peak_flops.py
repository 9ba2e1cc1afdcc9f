"""Dense peak FLOP/s of GPUs, for model FLOPs utilisation (MFU) and the plan's GPU-time estimate.

Light on purpose (no torch): `tinylm plan` reads it.
"""
from __future__ import annotations

import re

# Dense (no structured sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, per GPU:
# (bf16, fp32). "fp32" is the TF32 tensor-core peak, the rate fp32 matmuls run at on NVIDIA GPUs
# under torch.set_float32_matmul_precision("high"), which the trainer sets on CUDA. Datasheets
# often print the sparse figure, twice these. Patterns are tried in order; the first match wins.
PEAK_FLOPS: list[tuple[str, str, float, float | None]] = [
    # (pattern on torch.cuda.get_device_name, GPU, bf16, fp32 as TF32)
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756e12, 378e12),
    (r"\bH100 NVL\b", "H100 NVL", 835e12, 417.5e12),
    (r"\bH100\b", "H100 SXM", 989.4e12, 494.7e12),
    (r"\bH200 NVL\b", "H200 NVL", 835e12, 417.5e12),
    (r"\bH200\b", "H200 SXM", 989.4e12, 494.7e12),
    (r"\bB200\b", "B200", 2250e12, 1125e12),
    (r"\bA100\b", "A100", 312e12, 156e12),
    (r"\bL40S\b", "L40S", 362.05e12, 183.2e12),
    (r"\bL4$", "L4", 121e12, 60e12),
    (r"\bA10$", "A10", 125e12, 62.5e12),
    (r"\bRTX 4090$", "GeForce RTX 4090", 165.2e12, 82.6e12),   # bf16 with fp32 accumulate
    (r"\bRTX 3090$", "GeForce RTX 3090", 71e12, 35.6e12),      # bf16 with fp32 accumulate
    # ROCm: whether fp32 matmuls use the TF32-like path depends on the build, so fp32 stays unknown.
    (r"\bMI300X\b", "Instinct MI300X", 1307.4e12, None),
]


def peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU called `name` (torch.cuda.get_device_name) at `precision`;
    None for a GPU not in the table (or a CPU): no MFU is better than a wrong one."""
    for pattern, _, bf16, fp32 in PEAK_FLOPS:
        if re.search(pattern, name.strip(), flags=re.IGNORECASE):
            return bf16 if precision == "bf16" else fp32
    return None
