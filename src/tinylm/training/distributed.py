"""Several training processes: the torchrun relaunch, and the collectives the trainer needs.

With `training.devices: N > 1`, `tinylm train` reruns itself under torchrun with N processes
(DistributedDataParallel, gloo on CPU, NCCL on GPU). Every process trains on its slice of the same
global batch a single process would draw; rank 0 alone writes files. All decisions (stop, skip an
update, save) come from numbers every process holds identically, so the processes never part ways.

A run has one writer, whatever kills what: torchrun inherits the launcher's run lock (an open file
description: the lock holds while any process holding it lives), and on Linux torchrun dies with
the launcher and each worker with torchrun (the parent-death signal), so a SIGKILL of the launcher
leaves no worker training unlocked.
"""
from __future__ import annotations

import ctypes
import os
import runpy
import signal
import subprocess
import sys

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143: checkpoint saved after SIGTERM, requeue to continue


def launch_distributed(config_path: str, out_dir: str, checkpoint_dir: str, processes: int, lock_fd: int) -> int:
    """Rerun `tinylm train` under torchrun with `processes` workers; forward SIGTERM/SIGINT to it.
    torchrun runs through this module (`python -m tinylm.training.distributed`), which makes it die
    with this process, and holds the run lock `lock_fd` too."""
    command = [sys.executable, "-m", "tinylm.training.distributed", "--standalone",
               f"--nproc-per-node={processes}", "-m", "tinylm", "train", "--config", config_path,
               "--out-dir", out_dir, "--checkpoint-dir", checkpoint_dir]
    launcher = subprocess.Popen(command, pass_fds=(lock_fd,))
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        launcher.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = launcher.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # torchrun reports any failed worker as 1; after a SIGTERM the workers saved and stopped.
    if signal.SIGTERM in received and status != 0:
        return EXIT_PREEMPTED
    return status


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; elsewhere nothing), and
    exit at once if the parent is already gone."""
    parent = os.getppid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl: not Linux
        return
    pr_set_pdeathsig = 1  # from <sys/prctl.h>
    prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(128 + signal.SIGKILL)


def is_worker() -> bool:
    """True inside a process started by torchrun."""
    return "LOCAL_RANK" in os.environ


class Distributed:
    """Rank, world size and the collectives the trainer needs (no-ops for one process)."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0
        self._host_group: dist.ProcessGroup | None = None
        self.device = torch.device("cpu")

    def start(self, device: torch.device) -> None:
        self.device = device
        if self.world_size > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            # Host-side flags travel over gloo, so agreeing on them never waits for the GPU.
            self._host_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel over `module` when there are several processes; else `module`.

        Buffers are not broadcast: the only ones, RoPE's tables, follow from the config and are
        the same in every process, so broadcasting them at every forward pass would be wasted."""
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over all processes (waits for the device: for evaluation results)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean_on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes, left on the device (queued; the host does not wait)."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any (e.g. one of them got SIGTERM)."""
        if self.world_size == 1:
            return flag
        tensor = torch.tensor([float(flag)])
        dist.all_reduce(tensor, group=self._host_group)
        return tensor.item() > 0

    def stop(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # torchrun, dying with the `tinylm train` that launched it
    die_with_parent()
    sys.argv[0] = "torch.distributed.run"
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
