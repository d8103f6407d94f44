"""The slurm launcher: a worker as a batch job on a Slurm cluster whose nodes share the daemon's
filesystem (same paths), through the Slurm client programs run as subprocesses (no binding, no
version lockstep with the cluster).

Each attempt has a folder next to its log, `<log>.slurm/`: the daemon writes `spec.json` (argv,
environment, cwd, cap) and `job.sh`, and submits it as `orchestrd-<plan>-<phase>-<attempt>-
<nonce>`; on the node `slurm_shim.py` runs the worker and writes `status.json` (exit code,
signal, CPU, processes, output bytes, what it left running). The exit code that counts is the
shim's: Slurm's job state is only a liveness signal (a controller SIGKILLed mid-job may report
the job FAILED, or run it again — the shim then exits at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..config import SlurmSettings
from ..fsutil import FileRefused, open_for_writing
from ..worker import tail_file
from . import Handle, Leftover, OutputObserver, Reaped, Worker, WorkerSpec, WorkerStartError
from .local import _check_executable as check_executable

KIND = "slurm"
SHIM = Path(__file__).with_name("slurm_shim.py")
LIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")
KILL_WAIT = 5.0
"""After the grace of a stop, how long the shim has to report before the job is SIGKILLed."""
JOB_SCRIPT = "#!/bin/sh\n# orchestrd worker {name}\nexec {python} {shim} {folder}\n"
"""The environment is the shim's to set (from spec.json), not sbatch --export's: that would
make slurmd load a login environment (≈ 1 s a job)."""


class SlurmError(WorkerStartError):
    """A Slurm client program failed (the cluster refused the job, the controller is down)."""


def job_name(spec: WorkerSpec) -> str:
    """`orchestrd-<plan>-<phase>-<attempt>-<nonce>`: unique, and found again by name."""
    attempt = (spec.name or "worker").replace(":", "-")
    return f"orchestrd-{attempt}-{secrets.token_hex(4)}"


def read_status(folder: Path) -> dict[str, Any]:
    """The shim's status.json ({} before it started); blocking: a thread."""
    try:
        return dict(json.loads((folder / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


class SlurmWorker:
    """A worker in a batch job; what it does is known from the shim's status file."""

    def __init__(
        self,
        launcher: SlurmLauncher,
        spec: WorkerSpec,
        max_log_bytes: int,
        job: tuple[int, str],
        folder: Path,
    ) -> None:
        self.launcher = launcher
        self.max_log_bytes = max_log_bytes
        self.argv = spec.argv
        self.log_path = spec.log_path
        self.job_id, self.name = job
        self.running = False
        """Slurm said RUNNING (a job cancelled before that is only cancelled, not stopped)."""
        self.pumped = anyio.Event()
        self.folder = folder
        self.node = ""
        self.pending = 0.0
        """Seconds the job waited in the queue before Slurm said RUNNING."""
        self.started = time.monotonic()
        self.shim_file: dict[str, Any] = {}
        self.left_running: tuple[Leftover, ...] = ()
        self.lost = ""
        """Why the exit code is not the shim's (the job ended without its word), or ''."""

    @property
    def handle(self) -> Handle:
        return Handle(
            KIND,
            {"job_id": self.job_id, "name": self.name, "log": str(self.log_path)},
        )

    @property
    def pid(self) -> int:
        return self.job_id

    @property
    def placement(self) -> dict[str, str | int | float]:
        return {"node": self.node, "job_id": self.job_id, "pending_s": round(self.pending, 3)}

    @property
    def returncode(self) -> int | None:
        rc = self.shim_file.get("returncode")
        return int(rc) if rc is not None else None

    @property
    def output_bytes(self) -> int:
        return int(self.shim_file.get("output_bytes", 0))

    @property
    def dropped_bytes(self) -> int:
        return max(0, self.output_bytes - self.max_log_bytes)

    @property
    def oom_killed(self) -> bool:
        return False  # the job's memory limit is the site's (sbatch_args): not seen from here

    def cpu_sample(self) -> object:
        status = read_status(self.folder)
        return (status.get("cpu"), tuple(status.get("procs", ())), status.get("output_bytes"))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log_size(self) -> int:
        if self.shim_file.get("done"):
            return self.output_bytes
        try:
            size = self.log_path.stat().st_size
        except OSError:
            size = 0
        return max(size, self.output_bytes)

    def tail(self, lines: int = 40, max_bytes: int = 16384) -> str:
        return tail_file(self.log_path, lines, max_bytes)

    async def refresh(self) -> dict[str, Any]:
        self.shim_file = await anyio.to_thread.run_sync(read_status, self.folder) or self.shim_file
        return self.shim_file

    async def until_running(self) -> None:
        """Until Slurm says RUNNING, the job is over already, or the shim says it runs (when
        the controller cannot be asked): the queue is no stall."""
        submitted = time.monotonic()
        while True:
            state, node = await self.launcher.job_state(self.job_id)
            if state is not None and state not in ("PENDING", "CONFIGURING", "REQUEUED"):
                self.running = True
                break
            # the shim's word says it runs (and where) when Slurm cannot be asked right now
            if await self.refresh():
                self.running = True
                break
            await anyio.sleep(self.launcher.tick)
        if not node:  # over before squeue saw it run (it no longer lists it): the shim's word
            await self.refresh()
        self.node = node or str(self.shim_file.get("node", ""))
        self.pending = time.monotonic() - submitted
        self.started = time.monotonic()

    async def wait(self) -> int:
        """The shim's exit code, read from its status file; Slurm's state only says whether
        the job still lives, asked beside it (a controller that is down makes squeue hang for
        seconds: the file is read all the while)."""
        ended: list[int] = []
        async with anyio.create_task_group() as tg:

            async def first(rc: int) -> None:
                ended.append(rc)
                tg.cancel_scope.cancel()

            async def by_file() -> None:
                # a file another machine writes: no event tells, it is read each tick
                while (rc := (await self.refresh()).get("returncode")) is None:  # noqa: ASYNC110
                    await anyio.sleep(self.launcher.tick)
                await first(int(rc))

            async def by_slurm() -> None:
                while True:
                    await anyio.sleep(self.launcher.settings.poll_interval)
                    state, _ = await self.launcher.job_state(self.job_id)
                    if state is not None and state not in LIVE:
                        await first(await self._ended_without_word(state))
                        return

            tg.start_soon(by_file)
            tg.start_soon(by_slurm)
        return ended[0]

    async def _ended_without_word(self, state: str) -> int:
        """The job ended and the shim wrote no exit code: it never ran (cancelled while
        pending, a node failure) or was killed before it could write."""
        await anyio.sleep(self.launcher.tick)  # a last write on its way through the NFS
        if (rc := (await self.refresh()).get("returncode")) is not None:
            return int(rc)
        self.lost = f"job {self.job_id} ended {state} without the shim's exit code"
        self.shim_file = {**self.shim_file, "returncode": -signal.SIGKILL, "done": True}
        return -signal.SIGKILL

    async def stop(self, grace: float) -> signal.Signals | None:
        with anyio.CancelScope(shield=True):
            status = await self.refresh()
            if status.get("done") or self.lost:
                return None
            last = await self.launcher.stop_job(self.job_id, self.folder, grace)
            status = await self.refresh()
        self.left_running += tuple(Leftover(int(p), str(c)) for p, c in status.get("left", []))
        if not status.get("done"):  # the shim never answered: the job was SIGKILLed
            self.shim_file = {**status, "returncode": status.get("returncode", -9), "done": True}
        return last

    async def pump(self, on_output: OutputObserver) -> None:
        """Feed the observer what the shim writes to the log (the log's head and tail: a cut
        middle is never seen here), until cancelled."""
        offset = 0
        while True:
            done = self.shim_file.get("done") or self.lost
            chunk = await anyio.to_thread.run_sync(_read_from, self.log_path, offset)
            if chunk:
                offset += len(chunk)
                on_output(chunk)
            elif done:
                self.pumped.set()
                return
            else:
                await anyio.sleep(self.launcher.tick)


def _write_job(folder: Path, spec: WorkerSpec, job: str, script: str) -> None:
    """spec.json (the worker's environment: its owner's alone) and job.sh; with a worker user,
    the folder and the log become that user's, for the shim it runs as to write them."""
    (folder / "spec.json").unlink(missing_ok=True)
    fd = os.open(folder / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(job)
    (folder / "job.sh").write_text(script)
    if spec.identity is not None:
        uid, gid = spec.identity.uid, spec.identity.gid
        for path in (folder, folder / "spec.json", folder / "job.sh", spec.log_path):
            os.chown(path, uid, gid)
    folder.chmod(0o700)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except OSError:
        return b""


class SlurmLauncher:
    kind = KIND

    def __init__(self, settings: SlurmSettings) -> None:
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_jobs)
        self.tick = min(settings.poll_interval, 0.25)
        """How often the shim's status file is read: it is what tells an exit."""

    def program(self, name: str) -> str:
        return str(self.settings.bin / name) if self.settings.bin is not None else name

    async def run(self, name: str, *args: str) -> str:
        try:
            result = await anyio.run_process([self.program(name), *args], check=False)
        except OSError as exc:
            raise SlurmError(
                f"cannot run {self.program(name)}: {exc.strerror or exc}; install the Slurm "
                "client programs or set [launchers.slurm] bin"
            ) from None
        if result.returncode != 0:
            why = result.stderr.decode(errors="replace").strip()
            raise SlurmError(f"{name} {' '.join(args)} failed: {why}")
        return result.stdout.decode(errors="replace")

    async def job_state(self, job_id: int) -> tuple[str | None, str]:
        """(state, node) of a job; (None, '') if the controller cannot be asked right now;
        ('GONE', '') once it no longer knows the job."""
        try:
            out = await self.run("squeue", "-h", "-j", str(job_id), "-o", "%T %N")
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return "GONE", ""
            return None, ""
        state, _, node = out.strip().partition(" ")
        return (state or "GONE"), node

    async def stop_job(self, job_id: int, folder: Path, grace: float) -> signal.Signals | None:
        """Tell the shim the grace, SIGTERM it (`scancel --signal=TERM --batch`: the shim
        alone, which names and stops every descendant; `--full` would TERM them all at once
        too, and what died of Slurm's signal before the shim looked would be missing from its
        list), wait for the shim's report; then KILL and cancel what is left of the job."""
        await anyio.Path(folder / "stop").write_text(f"{grace}")
        with anyio.move_on_after(grace + KILL_WAIT):
            # the shim's first status.json says its SIGTERM handler is set: a SIGTERM before
            # that (a stop just after Slurm said RUNNING) would end it before it could stop
            # the worker and say so; a shim that starts after `stop` was written does not
            # start the worker
            while not await anyio.Path(folder / "status.json").exists():
                if not await self._live(job_id):
                    break
                await anyio.sleep(self.tick)
            with contextlib.suppress(SlurmError):
                await self.run("scancel", "--signal=TERM", "--batch", str(job_id))
            while not (await anyio.to_thread.run_sync(read_status, folder)).get("done"):
                if not await self._live(job_id):
                    break
                await anyio.sleep(self.tick)
        status = await anyio.to_thread.run_sync(read_status, folder)
        if not status.get("done"):
            with contextlib.suppress(SlurmError):
                await self.run("scancel", "--signal=KILL", "--full", str(job_id))
        with contextlib.suppress(SlurmError):
            await self.run("scancel", str(job_id))  # the job itself, however it ended
        if not status.get("done"):
            return signal.SIGKILL
        return signal.Signals[status["signal"]] if status.get("signal") else None

    async def _live(self, job_id: int) -> bool:
        """Whether the job may still run (so when the controller cannot be asked)."""
        state, _ = await self.job_state(job_id)
        return state is None or state in LIVE

    def sbatch_args(self, name: str, spec: WorkerSpec, folder: Path) -> list[str]:
        s = self.settings
        args = ["--parsable", f"--job-name={name}", f"--chdir={spec.cwd}"]
        args += [f"--output={folder}/slurm.out", "--ntasks=1", "--no-requeue"]
        args += [f"--partition={s.partition}"] if s.partition else []
        args += [f"--constraint={s.constraint}"] if s.constraint else []
        args += [f"--time={s.time_limit}"] if s.time_limit else []
        return [*args, *s.sbatch_args, str(folder / "job.sh")]

    @contextlib.asynccontextmanager
    async def launch(
        self,
        spec: WorkerSpec,
        max_log_bytes: int,
        grace: float,
        on_output: OutputObserver | None = None,
    ) -> AsyncIterator[SlurmWorker]:
        async with self.limiter:
            worker = await self._submit(spec, max_log_bytes, grace)
            try:
                await worker.until_running()
                async with anyio.create_task_group() as tg:
                    if on_output is not None:
                        tg.start_soon(worker.pump, on_output)
                    try:
                        yield worker
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._finish(worker, grace)
                            if on_output is not None:
                                with anyio.move_on_after(grace):
                                    await worker.pumped.wait()
                            tg.cancel_scope.cancel()
            finally:
                if not worker.running:  # cancelled (or failed) while it was pending
                    with anyio.CancelScope(shield=True), contextlib.suppress(SlurmError):
                        await self.run("scancel", str(worker.job_id))

    async def _finish(self, worker: SlurmWorker, grace: float) -> None:
        """At the end of the launch: the shim's last word (after a short wait: it drains the
        output and reaps), else a stop of what the worker left running."""
        with anyio.move_on_after(min(grace, 4 * self.tick)):
            # the shim's file, read as wait() reads it
            while not (await worker.refresh()).get("done") and not worker.lost:  # noqa: ASYNC110
                await anyio.sleep(self.tick / 4)
        await worker.stop(grace)

    async def _submit(self, spec: WorkerSpec, max_log_bytes: int, grace: float) -> SlurmWorker:
        folder = Path(f"{spec.log_path}.slurm")
        name = job_name(spec)
        try:
            await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
            os.close(await anyio.to_thread.run_sync(open_for_writing, spec.log_path, True))
        except FileRefused as exc:
            raise WorkerStartError(f"cannot open worker log {spec.log_path}: it {exc}") from None
        except OSError as exc:
            raise WorkerStartError(
                f"cannot open worker log {spec.log_path}: {exc.strerror}"
            ) from None
        if not spec.cwd.is_dir():
            raise WorkerStartError(f"the repo {spec.cwd} does not exist (any more)")
        check_executable(spec)
        job = {
            "argv": list(spec.argv),
            "env": dict(spec.env),
            "cwd": str(spec.cwd),
            "log": str(spec.log_path),
            "max_log_bytes": max_log_bytes,
            "grace": grace,
            "tick": self.tick,
        }
        script = JOB_SCRIPT.format(name=name, python=self.settings.python, shim=SHIM, folder=folder)
        await anyio.to_thread.run_sync(_write_job, folder, spec, json.dumps(job), script)
        args = self.sbatch_args(name, spec, folder)
        if spec.identity is not None:  # the job is the worker user's (sbatch --uid: as root)
            args[:0] = [f"--uid={spec.identity.uid}", f"--gid={spec.identity.gid}"]
        out = await self.run("sbatch", *args)
        job_id = int(out.strip().split(";")[0])
        return SlurmWorker(self, spec, max_log_bytes, (job_id, name), folder)

    def close(self) -> None:
        """Nothing set up here: the cluster is the site's."""

    def describe(self) -> dict[str, str]:
        where = self.settings.partition or "the default partition"
        return {"slurm": f"batch jobs in {where} through {self.program('sbatch')}"}

    def warnings(self, limits: Mapping[str, object]) -> list[str]:
        if not limits:
            return []
        return [
            f"{', '.join(sorted(limits))}: not set on Slurm jobs; use [launchers.slurm] "
            "sbatch_args (e.g. --mem=2G)"
        ]

    async def reap(self, handles: Sequence[Handle], grace: float) -> list[Reaped]:
        """Cancel the recorded jobs still running under their recorded names (a job id alone
        may have been reused by the cluster); what the shim stopped is what is listed."""
        reaped = []
        for handle in handles:
            job_id, name = handle.fields.get("job_id"), str(handle.fields.get("name") or "")
            folder = Path(f"{handle.fields.get('log')}.slurm")
            live = await self._live_jobs()
            if job_id is None or live.get(int(job_id), ("", ""))[0] != name:
                reaped.append(Reaped(handle, None))
                continue
            if (await anyio.to_thread.run_sync(read_status, folder)).get("done"):
                # the shim ended (nothing of the worker runs): Slurm's bookkeeping is left
                with contextlib.suppress(SlurmError):
                    await self.run("scancel", str(job_id))
                reaped.append(Reaped(handle, None))
                continue
            last = await self.stop_job(int(job_id), folder, grace)
            status = await anyio.to_thread.run_sync(read_status, folder)
            stopped = tuple(Leftover(int(p), str(c)) for p, c in status.get("stopped", []))
            reaped.append(Reaped(handle, last, stopped))
        return reaped

    async def _live_jobs(self) -> dict[int, tuple[str, str]]:
        """{job id: (name, batch script)} of the jobs not over yet (the daemon's and its
        worker users': whose they are, their name and script tell)."""
        out = await self.run("squeue", "-h", "-a", "-o", "%i|%j|%o")
        jobs = {}
        for line in out.splitlines():
            job_id, name, command = line.split("|", 2)
            jobs[int(job_id)] = (name, command)
        return jobs

    async def respawned(self, worker: Worker, grace: float) -> list[Leftover]:
        return []  # the shim, a subreaper, stopped every descendant before the job ended

    async def sweep(self, folders: Sequence[Path], grace: float) -> list[Reaped]:
        """The jobs named orchestrd-* whose batch script is in one of `folders` (a worker
        submitted just before a crash, its handle not saved yet)."""
        if not folders:
            return []
        prefixes = tuple(f"{folder}{os.sep}" for folder in folders)
        found = []
        for job_id, (name, command) in sorted((await self._live_jobs()).items()):
            if not name.startswith("orchestrd-") or not command.startswith(prefixes):
                continue
            log = command.removesuffix("/job.sh").removesuffix(".slurm")
            handle = Handle(KIND, {"job_id": job_id, "name": name, "log": log})
            (reaped,) = await self.reap([handle], grace)
            if reaped.signal is not None or reaped.stopped:
                found.append(Reaped(handle, reaped.signal, reaped.stopped, found="by its job name"))
        return found
