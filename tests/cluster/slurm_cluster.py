"""A throwaway single-node Slurm cluster on localhost, for tests.

`SlurmCluster(workdir)` writes a munge key and a `slurm.conf` into `workdir`, starts `munged`,
`slurmctld` and `slurmd` in the foreground as child processes (so their process ids are known) and
stops exactly those processes again. Configuration, state and logs stay in `workdir` (but for one
link, below): Slurm clients find the cluster through the SLURM_CONF variable of `cluster.env`, the
daemons talk to munge through a socket inside `workdir` and to each other on ports picked free.

The setting suits a container: no cgroups (proctrack/linuxproc, task/none), no accounting database
(accounting_storage/none). Without accounting, `sacct` knows nothing, so finished jobs are kept in
the controller for MinJobAge seconds, long enough for `squeue --states=all` to report how they ended.

The one path outside `workdir`: `/run/slurm/conf`, where Slurm clients look for the
configuration of a "configless" node, becomes a link to `workdir` while the cluster runs.
snakemake-executor-plugin-slurm-jobstep removes SLURM_CONF from the environment of the `srun` it
starts inside each job, so job steps need the configuration at a default location, as on a real
cluster. The cluster refuses to start when that path already exists.

Run as a script (as root) it installs the Debian packages when missing, submits one
`sbatch --wrap` job, checks its output and tears the cluster down:

    python tests/cluster/slurm_cluster.py
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APT_PACKAGES = ("slurm-wlm", "munge")
DAEMON_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
MIN_JOB_AGE_S = 600
CLIENT_CONFIG_LINK = Path("/run/slurm/conf")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster (not root, no packages, daemons fail)."""


def _binary(name: str) -> str | None:
    """Full path of a Slurm or munge program; the daemons live in sbin, which may not be on PATH."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _missing_binaries() -> list[str]:
    return [name for name in DAEMON_BINARIES if _binary(name) is None]


def ensure_installed(log_path: Path) -> None:
    """Install slurm-wlm and munge from the system's apt sources unless already present.

    Raises ClusterUnavailable with the reason when that is impossible (not root, no apt, no network).
    """
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"Slurm is not installed and installing {' '.join(APT_PACKAGES)} needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(log_path, "ab") as log:
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]):
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                raise ClusterUnavailable(f"`{' '.join(command)}` failed; see {log_path}")
    if missing := _missing_binaries():
        raise ClusterUnavailable(f"after installing {' '.join(APT_PACKAGES)}, still missing: {', '.join(missing)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_hardware() -> str:
    """This machine's `CPUs=... RealMemory=...` as slurmd itself detects it (`slurmd -C`)."""
    line = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return " ".join(field for field in line.split() if not field.startswith(("NodeName=", "UpTime=")))


def _controller_alive(workdir: Path) -> bool:
    """Whether the slurmctld that wrote `workdir/slurmctld.pid` still runs."""
    try:
        os.kill(int((workdir / "slurmctld.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


class SlurmCluster:
    """munged + slurmctld + slurmd on localhost, configured and logged under `workdir`."""

    def __init__(self, workdir: Path, partition: str = "debug") -> None:
        self.workdir = Path(workdir)
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.workdir / "slurm.conf"
        self.munge_socket = self.workdir / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}
        self.linked_client_config = False
        self.created_link_parent = False

    @property
    def env(self) -> dict[str, str]:
        """The environment in which Slurm clients (sbatch, squeue, ...) talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def log_path(self, daemon: str) -> Path:
        return self.workdir / f"{daemon}.log"

    # -- configuration ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool"):
            (self.workdir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.workdir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        w = self.workdir
        self.conf.write_text(f"""\
ClusterName=tinylm-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=socket={self.munge_socket},cred_expire=20
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={self.log_path("slurmctld")}
SlurmdLogFile={self.log_path("slurmd")}
# containers have no usable cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no accounting database: finished jobs stay visible to squeue for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE_S}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
NodeName={self.host} NodeAddr=127.0.0.1 {_node_hardware()} State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    # -- life cycle ------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.workdir / f"{name}.stdout", "wb")  # noqa: SIM115 (the daemon's, for as long as it runs)
        self.processes[name] = subprocess.Popen([_binary(command[0]), *command[1:]], stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                                start_new_session=True)
        log.close()

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {process.returncode} while waiting for "
                                             f"{what}:\n{self.logs_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs_tail()}")

    def client(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command (`squeue`, `sbatch`, ...) against this cluster."""
        return subprocess.run(list(args), capture_output=True, text=True, env=self.env, check=check, timeout=timeout)

    def node_state(self) -> str:
        result = self.client("sinfo", "--noheader", "--format=%T", check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def _link_client_config(self) -> None:
        if CLIENT_CONFIG_LINK.is_symlink() and not _controller_alive(CLIENT_CONFIG_LINK.resolve()):
            CLIENT_CONFIG_LINK.unlink()  # left behind by a test cluster that was killed
        if CLIENT_CONFIG_LINK.exists() or CLIENT_CONFIG_LINK.is_symlink():
            raise ClusterUnavailable(f"{CLIENT_CONFIG_LINK} already exists: another Slurm node runs here")
        self.created_link_parent = not CLIENT_CONFIG_LINK.parent.exists()
        CLIENT_CONFIG_LINK.parent.mkdir(parents=True, exist_ok=True)
        CLIENT_CONFIG_LINK.symlink_to(self.workdir, target_is_directory=True)
        self.linked_client_config = True

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start the three daemons and wait until the node is idle."""
        self._write_config()
        munge = self.workdir / "munge"
        try:
            self._link_client_config()
            self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                                   f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                                   f"--seed-file={munge / 'munged.seed'}", f"--log-file={self.log_path('munged')}"])
            self._wait("the munge socket", self.munge_socket.exists, timeout)
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self.client("scontrol", "ping", check=False).returncode == 0, timeout)
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
            self._wait("the node to become idle", lambda: self.node_state() == "idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def cancel_all_jobs(self, timeout: float = 30) -> None:
        """Cancel every job of this cluster and wait until none is running."""
        if "slurmctld" not in self.processes or self.processes["slurmctld"].poll() is not None:
            return
        self.client("scancel", "--full", f"--partition={self.partition}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.client("squeue", "--noheader", "--format=%i", check=False)
            if active.returncode != 0 or not active.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self, timeout: float = 15) -> None:
        """Cancel jobs, then stop the daemons this object started, newest first, by process id."""
        try:
            self.cancel_all_jobs()
        finally:
            if self.linked_client_config:
                CLIENT_CONFIG_LINK.unlink()
                if self.created_link_parent:
                    CLIENT_CONFIG_LINK.parent.rmdir()
                self.linked_client_config = self.created_link_parent = False
            for name in reversed(list(self.processes)):
                process = self.processes.pop(name)
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()

    def logs_tail(self, lines: int = 15) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            for path in (self.log_path(name), self.workdir / f"{name}.stdout"):
                if path.is_file() and path.stat().st_size:
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _smoke_test() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tinylm-slurm-"))
    ensure_installed(workdir / "apt.log")
    with SlurmCluster(workdir) as cluster:
        out = workdir / "job.out"
        job_id = cluster.client("sbatch", "--parsable", f"--output={out}", "--wrap", "echo hello from $SLURM_JOB_ID"
                                ).stdout.strip()
        while cluster.client("squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"
                             ).stdout.strip() != "COMPLETED":
            time.sleep(0.5)
        print(f"job {job_id}: {out.read_text().strip()}")
        print(cluster.client("squeue", "--states=all").stdout)
    print(f"daemons stopped; logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(_smoke_test())
