"""A real two-node Slurm cluster on this machine, for the slurm launcher's tests.

Everything runs in a network namespace of its own with only loopback (127.0.0.1 and a second
address, 127.0.0.2: slurm wants a node address other than 127.0.0.1): munged (as the `munge`
user, its socket in the cluster's folder), slurmctld and two `slurmd -N NAME` on ports of their
own, started with `nsenter --net=` (`ip netns exec` would remount /sys and hide the cgroup
freezer that proctrack/cgroup needs). The client programs the launcher calls are small wrappers
in `Cluster.bin` that enter the same namespace: no traffic leaves it.

On one machine the "shared filesystem" the launcher requires is trivially there: the nodes see
the daemon's paths as they are. Needs root and the Debian packages slurmctld, slurmd,
slurm-client and munge; `Cluster.unavailable()` says why not when they cannot be had.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrd.config import SlurmSettings

NODES = ("n1", "n2")
PROGRAMS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
DAEMONS = ("munged", "slurmctld", "slurmd")

SLURM_CONF = """\
ClusterName=orchestrd
FirstJobId={first_job_id}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.sock
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool-%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobcomp.txt
ReturnToService=2
MpiDefault=none
KillWait=2
MinJobAge=300
SlurmdTimeout=30
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus} State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.2 Port={n2_port} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
# Job ids of a cluster of their own: proctrack/cgroup names a job's cgroup by node name and job id
# (/sys/fs/cgroup/freezer/slurm_n1/uid_0/job_5), which every cluster on this machine shares (a
# parallel run, another session's tests, bench/slurm.py): two clusters both counting from 1 would
# put their jobs in one cgroup, and the stop of one would kill the other's.
JOB_IDS_PER_CLUSTER = 1000
# cgroup v1 here (the freezer is what proctrack/cgroup needs); autodetect picks v2 where the
# host has only v2
CGROUP_CONF = "CgroupPlugin=autodetect\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\n"

WRAPPER = """#!/bin/sh
SLURM_CONF={conf} exec nsenter --net={netns} {program} "$@"
"""


def _run(*argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kwargs)  # type: ignore[call-overload, no-any-return]


class Cluster:
    """Started by `start()`, torn down by `stop()` (every process it started, the namespace)."""

    def __init__(self) -> None:
        self.name = f"orchestrd-slurm-{os.getpid()}"
        self.netns = Path("/run/netns") / self.name
        # munged (as munge) must reach its socket: not under pytest's root-only tmp folder
        self.dir = Path(tempfile.mkdtemp(prefix="orchestrd-slurm-"))
        self.bin = self.dir / "bin"
        self.conf = self.dir / "slurm.conf"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @staticmethod
    def unavailable() -> str:
        """Why no cluster can be started here ('' if one can)."""
        if os.geteuid() != 0:
            return "the cluster needs root (network namespace, munge as its user, slurmd)"
        missing = [p for p in (*PROGRAMS, *DAEMONS, "nsenter", "ip") if not _which(p)]
        if missing:
            return (
                f"missing {', '.join(missing)}: apt-get install slurmctld slurmd slurm-client "
                "munge (.ci/run does when it runs as root in CI)"
            )
        return ""

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        os.chmod(self.dir, 0o755)
        _run("ip", "netns", "add", self.name)
        self._in_netns("ip", "link", "set", "lo", "up")
        self._in_netns("ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
        ports = dict(ctld_port=16817, n1_port=16818, n2_port=16819)
        # below MaxJobId (67,043,328) for any pid
        first_job_id = 1 + (os.getpid() % 60_000) * JOB_IDS_PER_CLUSTER
        self.conf.write_text(
            SLURM_CONF.format(
                dir=self.dir, cpus=os.cpu_count() or 1, first_job_id=first_job_id, **ports
            )
        )
        (self.dir / "cgroup.conf").write_text(CGROUP_CONF)
        for folder in ("ctld", *(f"spool-{node}" for node in NODES)):
            (self.dir / folder).mkdir()
        self._start_munge()
        self.bin.mkdir()
        for program in PROGRAMS:
            wrapper = self.bin / program
            wrapper.write_text(
                WRAPPER.format(conf=self.conf, netns=self.netns, program=_which(program))
            )
            wrapper.chmod(0o755)
        self.start_controller()
        for node in NODES:
            self._daemon(f"slurmd-{node}", "slurmd", "-D", "-N", node)
        self.wait_idle()

    def _start_munge(self) -> None:
        munge = self.dir / "munge"
        munge.mkdir()
        key = munge / "munge.key"
        shutil.copy("/etc/munge/munge.key", key)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
        with open(munge / "munged.stderr", "ab") as stderr:
            self.processes["munged"] = subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    "munge",
                    "--",
                    _which("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={munge}/munge.sock",
                    f"--key-file={key}",
                    f"--pid-file={munge}/munged.pid",
                    f"--seed-file={munge}/munged.seed",
                    f"--log-file={munge}/munged.log",
                ],  # fmt: skip
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        _until(lambda: (munge / "munge.sock").exists(), 5, f"munged did not start: {munge}")

    def start_controller(self) -> None:
        self._daemon("slurmctld", "slurmctld", "-D", "-i")

    def save_state(self, job_id: int, timeout: float = 10) -> None:
        """Until slurmctld has saved its job table as it is now (StateSaveLocation/job_state).

        It saves at most once every 5 s, so a controller SIGKILLed sooner comes back with a
        table up to 5 s old: a job ended since is RUNNING again (a ghost: no node runs it, and
        the controller drops it only after BatchStartTimeout + MessageTimeout at a node's next
        registration), a job submitted since is unknown to it. A change to a job (its comment)
        asks for a save; the file's time says when it is done."""
        table = self.dir / "ctld" / "job_state"
        since = time.time()
        _run(str(self.bin / "scontrol"), "update", f"JobId={job_id}", "Comment=saved")

        def saved() -> bool:
            try:
                return table.stat().st_mtime > since
            except OSError:
                return False

        _until(saved, timeout, f"slurmctld did not save its state: see {self.dir}/slurmctld.log")

    def kill_controller(self) -> None:
        """SIGKILL slurmctld (a crash mid-job)."""
        process = self.processes.pop("slurmctld")
        process.send_signal(signal.SIGKILL)
        process.wait()

    def rejoin(self) -> None:
        """After a controller restart: every slurmd registers again at once (`scontrol
        reconfigure`; else a node stays UNKNOWN until the controller's next ping, ≈ 4 s), and
        the nodes are idle."""

        def answered() -> bool:
            return _run(str(self.bin / "scontrol"), "reconfigure", check=False).returncode == 0

        _until(answered, 10, f"slurmctld did not answer: see {self.dir}/slurmctld.log")
        self.wait_idle()

    def _daemon(self, key: str, program: str, *args: str) -> None:
        with open(self.dir / f"{key}.stderr", "ab") as stderr:
            self.processes[key] = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", _which(program), *args],
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def wait_idle(self, timeout: float = 20) -> None:
        def idle() -> bool:
            out = _run(
                str(self.bin / "sinfo"), "-h", "-N", "-o", "%N %t", check=False
            ).stdout.split()
            return out.count("idle") + out.count("mix") + out.count("alloc") == len(NODES)

        _until(idle, timeout, f"the nodes did not become idle: see {self.dir}/*.log")

    def jobs(self) -> list[str]:
        """Every job the controller knows that is not over."""
        out = _run(str(self.bin / "squeue"), "-h", "-o", "%i %j %T %N").stdout
        return out.splitlines()

    def drained(self, timeout: float = 5) -> list[str]:
        """The jobs still there after `timeout` (a job whose shim has ended is COMPLETING a
        moment: slurmd tidies up after it)."""
        deadline = time.monotonic() + timeout
        while (jobs := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return jobs

    def stop(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run(str(self.bin / "scancel"), "--signal=KILL", "--full", check=False)
            self.drained()
        for key in sorted(self.processes, key=lambda k: k == "munged"):  # munged last
            process = self.processes[key]
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        # a slurmstepd that could not tell a (killed) controller its job ended waits on: all
        # that is left in the namespace is ours
        for pid in self.in_netns():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _run("ip", "netns", "delete", self.name, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def in_netns(self) -> list[int]:
        """The processes in the cluster's network namespace."""
        return _in_netns(self.netns)

    def _in_netns(self, *argv: str) -> None:
        _run("nsenter", f"--net={self.netns}", *argv)


def _in_netns(netns: Path) -> list[int]:
    try:
        ours = f"net:[{netns.stat().st_ino}]"
    except OSError:
        return []
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(f"/proc/{entry.name}/ns/net") == ours:
                found.append(int(entry.name))
    return found


def reap_stale() -> None:
    """The clusters of test sessions that were killed before they could stop them (their
    namespace is named after the session's pid, which is gone): their daemons, namespace and
    folder."""
    for netns in Path("/run/netns").glob("orchestrd-slurm-*"):
        session = netns.name.rpartition("-")[2]
        if not session.isdigit() or Path(f"/proc/{session}").exists():
            continue
        folders = set()
        for pid in _in_netns(netns):
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                folders |= {
                    Path(v[11:].decode()).parent for v in environ if v.startswith(b"SLURM_CONF=")
                }
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _run("ip", "netns", "delete", netns.name, check=False)
        for folder in folders:
            if folder.name.startswith("orchestrd-slurm-"):
                _kill_munged(folder)
                shutil.rmtree(folder, ignore_errors=True)


def _kill_munged(folder: Path) -> None:
    """munged (and the runuser above it) of a cluster's folder: it runs outside the namespace."""
    socket = f"--socket={folder}/munge/munge.sock".encode()
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ProcessLookupError):
            if entry.name.isdigit() and socket in Path(f"{entry.path}/cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def _which(program: str) -> str:
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(path := f"{folder}/{program}", os.X_OK):
            return path
    return shutil.which(program) or ""


def _until(ready: object, timeout: float, why: str) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(why)
        time.sleep(0.05)


_shared: Cluster | None = None


def shared_cluster(request: pytest.FixtureRequest) -> Cluster:
    """The session's cluster, started by the first test that asks for it (from a session-scoped
    fixture: torn down at the session's end), or a skip saying why none can be had here."""
    global _shared
    if _shared is None:
        why = Cluster.unavailable()
        if why:
            print(f"SKIP slurm cluster: {why}")
            pytest.skip(f"no Slurm cluster here: {why}")
        reap_stale()
        cluster = Cluster()
        request.addfinalizer(cluster.stop)
        cluster.start()
        _shared = cluster
    return _shared


def settings(cluster: Cluster, **overrides: object) -> SlurmSettings:
    """[launchers.slurm] for the cluster: its client wrappers, this python, fast polls."""
    fields: dict[str, object] = dict(bin=cluster.bin, python=sys.executable, poll_interval=0.1)
    return SlurmSettings.model_validate(fields | overrides)
