"""A real single-node SLURM cluster on localhost for the ``slurm`` test tier.

The cluster is private to one state directory: its own ``munged`` socket, its own ``slurm.conf`` (clients find it
through ``SLURM_CONF``), free TCP ports for ``slurmctld``/``slurmd`` and pid files that teardown stops by pid. It
never touches ``/etc/slurm`` or a system munge daemon, so it can run beside a real cluster's client tools.

Debian's ``slurm-wlm`` + ``munge`` are installed with apt-get when they are missing and we are root; when they cannot
be installed (not root, no apt, apt failed) :class:`SlurmUnavailable` says why and the tests skip with that reason.

Use from pytest through the ``slurm_cluster`` session fixture (tests/test_slurm.py), or by hand::

    python tests/slurm_cluster.py up --dir /tmp/lp-slurm     # prints `export SLURM_CONF=...`
    SLURM_CONF=/tmp/lp-slurm/slurm.conf sbatch slurm/train.sbatch experiment=stage1_tiny
    python tests/slurm_cluster.py down --dir /tmp/lp-slurm
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DAEMONS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "srun", "squeue", "scontrol", "sinfo")
APT_PACKAGES = ("slurm-wlm", "munge")

SLURM_CONF = """\
# Written by tests/slurm_cluster.py: a private one-node cluster on localhost.
ClusterName=lptest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/slurmd
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why (tests skip with it)."""


def _missing_tools() -> list[str]:
    return [t for t in DAEMONS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def ensure_installed(allow_apt: bool = True) -> None:
    """Make sure slurm-wlm and munge are installed, installing them with apt-get if possible.

    Raises:
        SlurmUnavailable: the tools are missing and cannot be installed (reason in the message).
    """
    missing = _missing_tools()
    if not missing:
        return
    if not allow_apt:
        raise SlurmUnavailable(f"SLURM tools missing ({', '.join(missing)}) and apt install disabled")
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM tools missing ({', '.join(missing)}); not root, cannot apt-get install")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM tools missing ({', '.join(missing)}) and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]
    log.info("installing %s with apt-get", " ".join(APT_PACKAGES))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:  # package lists may be stale on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0 or _missing_tools():
        tail = (res.stderr or res.stdout).strip()[-500:]
        raise SlurmUnavailable(f"apt-get install {' '.join(APT_PACKAGES)} failed (rc={res.returncode}): {tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class LocalSlurmCluster:
    """A one-node SLURM cluster (``localhost``, partition ``debug``) living in ``root``.

    Args:
        root: state directory (config, spool, logs, munge socket); created if missing.
        cpus: CPUs the node advertises (the jobs' whole budget).
        mem_mb: memory the node advertises (memory is not a consumable here).
    """

    root: Path
    cpus: int = 2
    mem_mb: int = 4000
    _started: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, ...) and for the jobs they submit."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        res = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc={res.returncode}): {res.stderr.strip() or res.stdout}")
        return res

    # ---- bring-up -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> LocalSlurmCluster:
        """Start munged, slurmctld and slurmd; return once ``sinfo`` shows the node idle."""
        ensure_installed()
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local SLURM cluster runs slurmd as root; run the slurm tests as root")
        for sub in ("ctld", "slurmd", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._start_munge()
        self.conf.write_text(
            SLURM_CONF.format(
                root=self.root,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                munge_socket=self.munge_dir / "munge.socket",
                cpus=self.cpus,
                mem_mb=self.mem_mb,
            )
        )
        self._daemon("slurmctld", [_sbin("slurmctld"), "-f", str(self.conf), "-c"], self.root / "slurmctld.pid")
        self._daemon("slurmd", [_sbin("slurmd"), "-f", str(self.conf), "-N", "localhost"], self.root / "slurmd.pid")
        self._wait_idle(timeout)
        return self

    def _start_munge(self) -> None:
        try:
            munge = pwd.getpwnam("munge")
        except KeyError as e:
            raise SlurmUnavailable("user 'munge' does not exist (munge package incomplete)") from e
        self.munge_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        self.munge_dir.chmod(0o755)  # clients (root here) must reach the socket
        key = self.munge_dir / "munge.key"
        if not key.exists():
            subprocess.run([_sbin("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
            os.chown(key, munge.pw_uid, munge.pw_gid)
            key.chmod(0o400)
        d = self.munge_dir
        cmd = [
            _sbin("munged"),
            f"--socket={d / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={d / 'munged.pid'}",
            f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ]
        res = subprocess.run(["runuser", "-u", "munge", "--", *cmd], capture_output=True, text=True)
        if res.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {res.stderr.strip()} (log: {d / 'munged.log'})")
        self._started.append("munged")

    def _daemon(self, name: str, cmd: list[str], pidfile: Path, timeout: float = 30) -> None:
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SlurmUnavailable(f"{name} did not start (rc={res.returncode}): {res.stderr.strip()}")
        self._started.append(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = _read_pid(pidfile)
            if pid and _pid_alive(pid):
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"{name} wrote no live pid to {pidfile}; log: {self._log_tail(name)}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            res = self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False)
            state = res.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"node never became idle (sinfo: {state!r}); slurmd log: {self._log_tail('slurmd')}")

    def _log_tail(self, name: str, n: int = 1500) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else f"(no {path})"

    # ---- teardown -------------------------------------------------------------------------------------------------
    def stop(self, remove: bool = False) -> None:
        """Cancel every job, stop the daemons this object started (by pid file) and optionally delete ``root``."""
        if self.conf.exists() and "slurmctld" in self._started:
            self.run("scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name, check=False)
            self._wait_queue_empty(30)
        pidfiles = {
            "slurmd": self.root / "slurmd.pid",
            "slurmctld": self.root / "slurmctld.pid",
            "munged": self.munge_dir / "munged.pid",
        }
        for name, pidfile in pidfiles.items():  # slurmd first, munged last
            if name in self._started or pidfile.exists():
                _terminate(_read_pid(pidfile))
        self._started.clear()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def _wait_queue_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.run("squeue", "-h", "-o", "%i", check=False)
            if res.returncode != 0 or not res.stdout.strip():
                return
            time.sleep(0.5)

    # ---- job helpers used by the tests -------------------------------------------------------------------------------
    def sbatch(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Submit with ``sbatch --parsable``; return the job id."""
        res = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout.strip().split(";")[0]

    def wait_requeued(self, job_id: str, restarts: int = 1, timeout: float = 180) -> dict[str, str]:
        """Wait until the job is back in the queue after its ``restarts``-th requeue (``Reason=BeginTime``).

        SLURM sets the requeue delay (the BeginTime) once the previous run has fully ended; before that the
        pending job shows ``Reason=None``.
        """
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state.get("JobState") == "PENDING" and state.get("Restarts") == str(restarts):
                if state.get("Reason") == "BeginTime":
                    return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not requeued (restart {restarts}) within {timeout:.0f}s: {state}")

    def release_requeued(self, job_id: str, timeout: float = 60) -> None:
        """Start a requeued job now instead of after SLURM's requeue delay (``Reason=BeginTime``).

        Waits for the node to be idle first and one more second: slurmd refuses to relaunch a job in the same
        second its previous run's credential was revoked ("Job credential revoked"), the race the delay avoids.
        """
        deadline = time.monotonic() + timeout
        while self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise TimeoutError(f"node not idle {timeout:.0f}s after job {job_id} was requeued")
            time.sleep(0.5)
        time.sleep(1.5)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def job_state(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (first record: for arrays, the first task); {} when unknown."""
        res = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return {}
        fields = {}
        for tok in res.stdout.splitlines()[0].split():
            key, _, value = tok.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait(self, job_id: str, timeout: float, states: tuple[str, ...] = ("COMPLETED",)) -> dict[str, str]:
        """Poll until every task of ``job_id`` is in a final state; fail unless all are in ``states``."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            res = self.run("scontrol", "show", "job", "-o", job_id, check=False)
            seen = [t.split("=", 1)[1] for t in res.stdout.split() if t.startswith("JobState=")]
            if seen and all(s in final for s in seen):
                if all(s in states for s in seen):
                    return self.job_state(job_id)
                raise RuntimeError(f"job {job_id} ended {seen}, wanted {states}:\n{res.stdout}")
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s (states {seen})")


def _terminate(pid: int | None, timeout: float = 20) -> None:
    if not pid or not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def start_cluster(root: Path | None = None, cpus: int = 2) -> LocalSlurmCluster:
    """Create and start a cluster in ``root`` (a fresh temporary directory by default)."""
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="lp-slurm-"))
    cluster = LocalSlurmCluster(root=root, cpus=cpus)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    """``python tests/slurm_cluster.py up|down --dir DIR``: run the local cluster by hand."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "lp-slurm")
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args(argv)
    if args.action == "up":
        cluster = start_cluster(args.dir, cpus=args.cpus)
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster = LocalSlurmCluster(root=args.dir)
        cluster._started = ["slurmctld", "slurmd", "munged"]
        cluster.stop(remove=True)
        print(f"stopped the cluster in {args.dir}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
