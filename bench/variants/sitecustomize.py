"""What-if variants of the daemon under benchmark — never used in production.

`python bench/run.py --variant NAME[,NAME]` puts this folder on the daemon subprocess's
PYTHONPATH and sets BENCH_VARIANTS; Python imports this file at start-up and patches the
package in memory (no file of the package is changed). Each variant removes one suspected cost,
so the difference to the plain run is what fixing that cost can gain at most:

- nofsync:   os.fsync is a no-op (state writes, atomic_write) — the bound for fewer/batched fsyncs
- jsonstate: state files serialised by json.dumps instead of tomli_w (same model_dump) — what
             a cheaper state serialisation gains
- noecho:    the audit log is not echoed to stderr (the journal under systemd)
- pidfd:     asyncio's PidfdChildWatcher instead of the default ThreadedChildWatcher of 3.11
             (one waitpid thread per child) — what Python 3.12+ does by itself
- quietpoll: the poll loop without its `worker.poll` audit event (what that event costs)
- sampler:   not a what-if: an in-process sampling profiler of the event loop thread (below)
- slotworker: max_workers counts worker processes (a slot around `launch`) instead of plan runs
             (Daemon._run_plan holds its slot through every save and check of the plan)
- nometrics: no metrics task (it wakes every 0.2 s and reads every new audit line in a
             thread): what it costs an idle daemon and each poll
- nonotify: no notification task (it too follows the audit log every 0.2 s, and lists its
             outbox): what it costs with no [notify] targets
- step50:    the inbox watcher's Rust loop checks every 50 ms instead of every 1 ms (step=1 in
             Daemon._watch_inbox): what its 1,000 wake-ups a second cost an idle daemon
             (meaningless once the daemon watches the inbox with inotify, h-idle's #21 branch)
- batchaccept: the inbox scan takes up to 16 files per thread call instead of one thread
             round trip per file (what the serial accept loop costs)
"""

import os

_variants = {v for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v}

if _variants:
    import sys

    print(f"bench variants active: {sorted(_variants)}", file=sys.stderr, flush=True)

if "nofsync" in _variants:
    os.fsync = lambda fd: None  # type: ignore[assignment]

if "jsonstate" in _variants:
    # state.toml written by json.dumps instead of tomli_w (same model_dump, same redaction):
    # the modules that serialise state (state.py's dump_state, daemon.py's redacted_state) get
    # a stand-in `tomli_w` whose dumps is json.dumps
    import json as _json
    import types as _types

    import orchestrd.state as _state

    _fast = _types.SimpleNamespace(dumps=lambda data, **kw: _json.dumps(data))
    _state.tomli_w = _fast  # type: ignore[attr-defined]
    try:
        import orchestrd.daemon as _daemon_mod

        if hasattr(_daemon_mod, "redacted_state"):
            _daemon_mod.tomli_w = _fast  # type: ignore[attr-defined]
    except ImportError:
        pass

if "noecho" in _variants:
    import orchestrd.audit as _audit

    _orig_init = _audit.AuditSink.__init__

    def _init_noecho(self, path, echo=None):  # type: ignore[no-untyped-def]
        _orig_init(self, path, None)

    _audit.AuditSink.__init__ = _init_noecho  # type: ignore[method-assign]

if "nometrics" in _variants:
    import anyio

    import orchestrd.daemon as _daemon

    async def _no_metrics(config, log, metrics, *_, task_status=anyio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        task_status.started()

    _daemon.run_metrics = _no_metrics

if "nonotify" in _variants:
    import anyio

    import orchestrd.daemon as _daemon

    async def _no_notify(config, log, *_, task_status=anyio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        task_status.started()

    _daemon.run_notifier = _no_notify

if "pidfd" in _variants:
    import asyncio

    asyncio.get_event_loop_policy().set_child_watcher(asyncio.PidfdChildWatcher())

if "quietpoll" in _variants:
    # the poll loop of orchestrd.policy.watch without its worker.poll audit event: what the
    # audit event costs per poll, against the timer/cancel-scope machinery around it
    import anyio

    import orchestrd.runner as _runner
    from orchestrd.policy import WatchOutcome

    async def _watch_quiet(worker, policy, log):  # type: ignore[no-untyped-def]
        for cycle in range(1, policy.max_polls + 1):
            with anyio.move_on_after(policy.poll_interval):
                return WatchOutcome(await worker.wait(), cycle - 1)
            worker.log_size()
        if worker.returncode is not None:
            return WatchOutcome(worker.returncode, policy.max_polls)
        return WatchOutcome(None, policy.max_polls)

    _runner.watch = _watch_quiet

if "batchaccept" in _variants:
    # Daemon._scan_inbox, but each thread call takes up to 16 inbox files (same Spool.take,
    # same events, same order) instead of one thread round trip per file. Error handling of
    # the real one (spool errors) is left out: the benchmark's inbox has none.
    import functools
    import inspect as _inspect

    import anyio
    import anyio.to_thread

    import orchestrd.daemon as _daemon

    _take_params = _inspect.signature(_daemon.Spool.take).parameters

    async def _scan_inbox_batched(self, tg, first=False):  # type: ignore[no-untyped-def]
        names = await anyio.to_thread.run_sync(self.spool.candidates)
        extra: list[object] = []
        if "after_start" in _take_params:
            extra.append(first)
        if "redact" in _take_params:
            extra.append(self.audit.redactor)
        make_record = getattr(self, "_record", None) or getattr(_daemon, "PlanRecord", None)
        if make_record is None:  # the record of a plan on disk is recovery's (store split)
            from orchestrd.recovery import plan_record

            make_record = functools.partial(plan_record, self.audit)
        for i in range(0, len(names), 16):
            chunk = names[i : i + 16]
            seqs = list(range(self.seq + 1, self.seq + 1 + len(chunk)))
            self.seq += len(chunk)
            config = self.config

            def take_all(chunk=chunk, seqs=seqs, config=config):  # type: ignore[no-untyped-def]
                pairs = zip(chunk, seqs, strict=True)
                return [(n, self.spool.take(n, config, s, *extra)) for n, s in pairs]

            for name, outcome in await anyio.to_thread.run_sync(take_all):
                if isinstance(outcome, _daemon.Rejected):
                    self.log.info(
                        "plan.rejected",
                        file=name,
                        reason=outcome.reason,
                        moved_to=str(outcome.moved_to),
                    )
                elif isinstance(outcome, _daemon.Accepted):
                    log = self.audit.bind(plan=outcome.plan.id)
                    log.info(
                        "plan.accepted",
                        file=name,
                        phases=len(outcome.plan.phases),
                        repo=str(outcome.plan.repo),
                    )
                    record = make_record(outcome.folder.state_file, outcome.state, log)
                    self._start(tg, _daemon.PlanEntry(outcome.plan, record, outcome.folder, log))
                    log.info("plan.queued", seq=outcome.state.seq, active=len(self.entries))

    _daemon.Daemon._scan_inbox = _scan_inbox_batched  # type: ignore[method-assign]

if "sampler" in _variants:
    # An in-process sampling profiler of the event loop (main) thread, for loads where py-spy
    # cannot keep up (1,000 threads of ThreadedChildWatcher): every 1 ms of the process's CPU
    # time (ITIMER_PROF: all threads, user + system) the main thread's Python stack is counted.
    # SIGUSR1 starts it, SIGUSR2 stops it and writes py-spy's raw format to $BENCH_SAMPLE_OUT.
    import collections
    import signal

    _counts: collections.Counter[str] = collections.Counter()
    _sample_out = os.environ.get("BENCH_SAMPLE_OUT", "/tmp/orchestrd-sample.raw")

    def _stack(frame):  # type: ignore[no-untyped-def]
        parts = []
        while frame is not None:
            code = frame.f_code
            parts.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
            frame = frame.f_back
        return ";".join(reversed(parts))

    def _tick(signum, frame):  # type: ignore[no-untyped-def]
        _counts[_stack(frame)] += 1

    def _start(signum, frame):  # type: ignore[no-untyped-def]
        _counts.clear()
        signal.signal(signal.SIGPROF, _tick)
        signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

    def _stop(signum, frame):  # type: ignore[no-untyped-def]
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        tmp = _sample_out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for stack, n in _counts.items():
                f.write(f"{stack} {n}\n")
        os.replace(tmp, _sample_out)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)

if "slotworker" in _variants:
    # max_workers counted around the worker process only (LocalLauncher.launch as the runner
    # uses it), not around the whole plan run (Daemon._run_plan holds a limiter slot from
    # plan.started to plan.succeeded, through every state save and check)
    import contextlib

    import anyio

    import orchestrd.daemon as _daemon
    import orchestrd.launchers.local as _local

    _orig_launch = _local.LocalLauncher.launch
    _slots: dict[str, object] = {}
    _orig_daemon_init = _daemon.Daemon.__init__

    def _daemon_init(self, config, *args, **kwargs):  # type: ignore[no-untyped-def]
        _orig_daemon_init(self, config, *args, **kwargs)
        _slots["n"] = config.max_workers
        self.limiter = anyio.CapacityLimiter(1_000_000)  # plans are limited by repo locks only

    @contextlib.asynccontextmanager
    async def _launch_in_slot(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        lim = _slots.get("lim")
        if lim is None:
            lim = _slots["lim"] = anyio.CapacityLimiter(int(_slots.get("n", 8)))  # type: ignore[call-overload]
        async with lim, _orig_launch(self, *args, **kwargs) as worker:  # type: ignore[attr-defined]
            yield worker

    _daemon.Daemon.__init__ = _daemon_init  # type: ignore[method-assign]
    _local.LocalLauncher.launch = _launch_in_slot  # type: ignore[method-assign]
