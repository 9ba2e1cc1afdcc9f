"""`tinylm plan`: the runs a pipeline config would train, before any of them, with their cost and memory.

    tinylm plan --configfile config/reference.yaml [--config KEY=VALUE ...] [--device-memory-gb 80] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass

from tinylm.formatting import fmt_duration, fmt_si
from tinylm.pipeline.config import DEFAULT_CONFIGFILE, parse_overrides, resolve_config
from tinylm.pipeline.plan import Plan, PlannedRun, build_plan
from tinylm.training.peak_flops import peak_flops

# The GPU-time estimate's stated throughput: model FLOPs at this fraction of this peak (the
# PaLM-style MFU accounting of tinylm.nn.flops). Both are assumptions, printed with the table.
_H100_SXM_PEAK_FLOPS = peak_flops("NVIDIA H100 80GB HBM3", "bf16")
assert _H100_SXM_PEAK_FLOPS is not None  # PEAK_FLOPS lists it
ASSUMED_PEAK_FLOPS: float = _H100_SXM_PEAK_FLOPS
ASSUMED_MFU = 0.40


@dataclass(frozen=True)
class MemoryFit:
    """A run's predicted peak memory on its device, and whether it fits a given device memory."""

    device: str                  # the device type the prediction is for
    predicted_peak_bytes: int    # one process's training step (tinylm.training.memory_model)
    method: str                  # "fake" (traced) or "analytic"
    fits: bool | None = None     # with a device memory: whether the prediction fits it
    largest_batch: int | None = None  # with a device memory: the largest global batch that would


def run_device_type(run: PlannedRun) -> str:
    """The device type a run trains on; `auto` as it would resolve on this machine."""
    device = run.config.training.device
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def memory_fits(plan: Plan, device_memory_bytes: int | None = None) -> dict[str, MemoryFit]:
    """Every run's predicted peak memory; with `device_memory_bytes`, whether it fits and the
    largest global batch that would (a multiple of the run's devices)."""
    from tinylm.training.memory_model import largest_fitting_batch, predict_step_memory

    fits: dict[str, MemoryFit] = {}
    by_shape: dict[str, MemoryFit] = {}  # runs that differ in learning rate alone share their step
    for name, run in plan.runs.items():
        device, t = run_device_type(run), run.config.training
        shape = json.dumps([device, run.config.model.__dict__, t.batch_size, t.devices, t.precision, t.attention])
        if shape not in by_shape:
            prediction = predict_step_memory(run.config, device)
            fit, largest = None, None
            if device_memory_bytes is not None:
                fit = prediction.peak_bytes <= device_memory_bytes
                largest = largest_fitting_batch(run.config, device, device_memory_bytes) * t.devices
            by_shape[shape] = MemoryFit(device, prediction.peak_bytes, prediction.method, fit, largest)
        fits[name] = by_shape[shape]
    return fits


def plan_table(plan: Plan, peak_flops: float = ASSUMED_PEAK_FLOPS, mfu: float = ASSUMED_MFU,
               memory: dict[str, MemoryFit] | None = None, device_memory_bytes: int | None = None) -> str:
    """The plan as a text table: one row per run (first section that uses it), totals at the bottom;
    with `memory`, each run's predicted peak memory (and with a device memory, whether it fits)."""
    uses = plan.sections_using()
    header = ["run", "sections", "changes against the baseline", "steps", "tokens", "train FLOPs", "GPU time"]
    if memory is not None:
        header.append("peak memory")
        if device_memory_bytes is not None:
            header += [f"fits {device_memory_bytes / 1e9:g} GB", "largest batch"]
    rows = []
    seconds_per_flop = 1 / (peak_flops * mfu)
    for run in plan.runs.values():
        changes = run.changes or "(the baseline)"
        if run.data_note:
            changes += f"; {run.data_note}"
        row = [run.name, ", ".join(uses.get(run.name, [run.section])), changes, f"{run.steps:,}",
               fmt_si(run.tokens), fmt_si(run.train_flops), fmt_duration(run.train_flops * seconds_per_flop)]
        if memory is not None:
            fit = memory[run.name]
            row.append(f"{fmt_si(fit.predicted_peak_bytes, 'B')} ({fit.device})")
            if device_memory_bytes is not None:
                row += ["yes" if fit.fits else "no", f"{fit.largest_batch:,}"]
        rows.append(row)
    total_flops = sum(run.train_flops for run in plan.runs.values())
    total = ["total", f"{len(plan.runs)} runs", "", f"{sum(r.steps for r in plan.runs.values()):,}",
             fmt_si(sum(r.tokens for r in plan.runs.values())), fmt_si(total_flops),
             fmt_duration(total_flops * seconds_per_flop)]
    rows.append(total + [""] * (len(header) - len(total)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2}

    def line(row: list[str]) -> str:
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])]
    notes = [f"GPU time: training FLOPs at {mfu:.0%} MFU of {fmt_si(peak_flops, 'FLOP/s')} "
             "(an assumption, not a measurement: --peak-flops and --mfu change it); evaluation, "
             "probes and generation not included."]
    if memory is not None:
        methods = sorted({fit.method for fit in memory.values()})
        notes.append(f"Peak memory: the tensors of one process's eager training step on its device, predicted "
                     f"({' and '.join(methods)}; tinylm.training.memory_model), in GB of 10^9 bytes; a compiled step "
                     "usually needs less, and a GPU also holds the CUDA context and the allocator's cache.")
    if len(plan.seeds) > 1:
        further = ", ".join(map(str, plan.seeds[1:]))
        notes.append(f"Seeds: the runs named without -seed= are at seed {plan.seeds[0]}; each is replicated at "
                     f"seed{'s' * (len(plan.seeds) > 2)} {further} (<run>-seed=<seed>), and so is every run the "
                     "probe or refinement adds.")
    for section in plan.sections.values():
        if section.pending_probe:
            assert plan.probe is not None  # the section that needs the probe sets it
            notes.append(f"{section.name}: the max-batch probe adds the largest batch that fits "
                         f"(up to {plan.probe['max_batch']}) and drops the sizes above it.")
        pending = [plan.rate_sweeps[key] for key in section.rate_sweeps if not plan.rate_sweeps[key].complete]
        if pending:
            sweeps = "its sweep" if len(section.rate_sweeps) == 1 else f"each of its {len(section.rate_sweeps)} sweeps"
            notes.append(f"{section.name}: refinements follow: up to {max(s.max_refinements for s in pending)} more "
                         f"rates in {sweeps}, between the largest rate that trains and the smallest that fails, "
                         f"until their ratio is at most {min(s.refine_to for s in pending):g}.")
    return "\n".join(out + [""] + notes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", default=[DEFAULT_CONFIGFILE], metavar="YAML",
                        help=f"pipeline config file(s), merged in order (default {DEFAULT_CONFIGFILE})")
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, as Snakemake's --config: e.g. 'baseline={training: {max_steps: 10}}'")
    parser.add_argument("--peak-flops", type=float, default=ASSUMED_PEAK_FLOPS,
                        help="accelerator peak FLOP/s for the GPU-time estimate (default: H100 SXM bf16 dense)")
    parser.add_argument("--mfu", type=float, default=ASSUMED_MFU,
                        help="model FLOPs utilisation assumed for the GPU-time estimate (default 0.4)")
    parser.add_argument("--device-memory-gb", type=float, default=None, metavar="N",
                        help="a device's memory in GB (10^9 bytes): say which runs' predicted peak fits it, and "
                             "the largest batch that would")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="leave out the memory predictions (they trace each run's step: seconds per run on a CPU)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")


def plan_json(plan: Plan, memory: dict[str, MemoryFit] | None = None) -> dict:
    uses = plan.sections_using()
    runs = {}
    for name, r in plan.runs.items():
        runs[name] = {"section": r.section, "sections": uses.get(name, []), "changes": r.changes,
                      "tokenizer": r.tokenizer, "corpus": r.corpus, "data_note": r.data_note, "steps": r.steps,
                      "tokens": r.tokens, "train_flops": r.train_flops, "resources": r.resources,
                      "seed": r.seed, "replica_of": r.replica_of, "config": r.config.to_dict()}
        if memory is not None:
            runs[name].update(dataclasses.asdict(memory[name]))
    return {
        "seeds": list(plan.seeds),
        "runs": runs,
        "sections": {name: {"title": s.title, "kind": s.kind, "runs": s.runs, "baseline": s.baseline,
                            "replicas": {run: list(names) for run, names in s.replicas.items()},
                            "pending_probe": s.pending_probe, "rate_sweeps": list(s.rate_sweeps)}
                     for name, s in plan.sections.items()},
        "rate_sweeps": {key: {"section": sweep.section, "grid": list(sweep.grid), "refined": list(sweep.refined),
                              "complete": sweep.complete, "refine_to": sweep.refine_to,
                              "max_refinements": sweep.max_refinements, "runs": list(sweep.runs.values())}
                        for key, sweep in plan.rate_sweeps.items()},
    }


def run(args: argparse.Namespace) -> int:
    if not (args.peak_flops > 0 and math.isfinite(args.peak_flops)):
        raise ValueError(f"--peak-flops: must be a positive number, got {args.peak_flops}")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu: must be in (0, 1], got {args.mfu}")
    memory_gb = args.device_memory_gb
    if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
        raise ValueError(f"--device-memory-gb: must be a positive number, got {memory_gb:g}")
    if memory_gb is not None and not args.memory:
        raise ValueError("--device-memory-gb: needs the memory predictions that --no-memory leaves out")
    plan = build_plan(resolve_config(args.configfile, parse_overrides(args.config)))
    memory_bytes = None if memory_gb is None else int(memory_gb * 1e9)
    memory = memory_fits(plan, memory_bytes) if args.memory else None
    if args.json:
        print(json.dumps(plan_json(plan, memory), indent=2))
    else:
        print(plan_table(plan, args.peak_flops, args.mfu, memory, memory_bytes))
    return 0
