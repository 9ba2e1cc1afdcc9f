"""Training: the trainer and the parts it orchestrates, one module each.

- `trainer`: `Trainer` and `tinylm train`: setup or resume, the step loop, evaluations, outputs.
- `step`: one optimizer step (forward and loss, backward, clipping, the guarded AdamW update).
- `divergence`: the divergence rule, decided on the device.
- `stopping`: budget, target loss, checkpoint cadence, SIGTERM.
- `hardware`: device, precision, compilation, host memory, peak FLOP/s.
- `memory`, `memory_model`, `max_batch`: memory measured, predicted, and probed (`tinylm max-batch`).
- `checkpointing` lives in `tinylm.checkpoint` (shared with inference); `progress`, `metrics`,
  `summary`, `runlock`, `distributed`, `prefetch`: the run's record, logs, results, lock, processes
  and batches.

Nothing is imported here, so that a light module (say `summary`) loads without torch.
"""
