"""The `orchestrd` command: subcommands, error printing, and exit codes (only here).

Exit codes: 0 success, 1 the plan failed (or was interrupted), 2 bad input or config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OrchestrdError

if TYPE_CHECKING:  # the modules a command needs are imported in it: start-up stays light
    from . import usage
    from .audit import Logger, Redactor
    from .config import Config
    from .plan import Plan
    from .states import PlanStatus
    from .store import PlanFolder

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def plan_toml(plan: Plan) -> bytes:
    """The plan as the daemon keeps it (absolute repo, nothing left implicit but defaults)."""
    import tomli_w

    return tomli_w.dumps(plan.model_dump(mode="json", exclude_none=True)).encode()


def _load_plan(path: Path, config: Config) -> Plan:
    """A plan file given on the command line (its repo may be relative to it), checked like
    the daemon checks inbox files."""
    from .errors import PlanError
    from .plan import plan_from_bytes

    try:
        with open(path, "rb") as f:
            raw = f.read(config.spool.max_plan_bytes + 1)
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror}") from None
    return plan_from_bytes(raw, path, config, base_dir=path.resolve().parent)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config

    config, _ = load_config(args.config)
    for path in args.plans:
        plan = _load_plan(Path(path), config)
        print(f"{path}: ok — plan {plan.id}, {len(plan.phases)} phases, repo {plan.repo}")
    return EXIT_OK


async def run_foreground(plan: Plan, config: Config, echo: bool, live: bool = False) -> PlanStatus:
    """Run one plan in this process under `state_dir/plans/<id>/`; SIGINT/SIGTERM interrupt it.
    `live`: a progress view on the terminal instead of event lines.

    The plan fails (with the reason, no traceback) if the runner cannot go on, e.g. a full disk.
    """
    import functools
    import signal

    import anyio

    from . import lifecycle, progress, status
    from .audit import AuditLog, Redactor
    from .launchers import open_launcher
    from .metering import Spending
    from .privsep import separation
    from .runner import PlanRunner
    from .spool import Spool, hold_run_lock
    from .state import PlanRecord, PlanState
    from .worker import use_pidfd_child_watcher

    use_pidfd_child_watcher()
    spool = Spool(config.state_dir)
    folder = spool.folder(plan.id)
    audit = AuditLog(
        config.audit_path,
        echo=sys.stderr if echo else None,
        redactor=Redactor.from_config(config),
    )
    log = audit.bind(plan=plan.id)
    if echo:
        on, why = separation(config)
        print(f"orchestrd: privilege_separation = {str(on).lower()} ({why})", file=sys.stderr)
    try:
        if folder.state_file.exists():
            await _end_earlier_run(folder, log, audit.redactor)
        if folder.root.exists():
            spool.archive(folder)
        folder.create()
        lock_fd = hold_run_lock(folder.root)
    except BaseException:
        audit.close()
        raise
    record = PlanRecord(folder.state_file, PlanState.first(plan), log, audit.redactor)
    spending = Spending()  # the daily budget counts every plan's spending today
    spending.seed(r for _, r in status.ledger(spool))
    # a tree of its own: a daemon on the same state_dir reaps its own tree at start
    launcher = open_launcher(config.launcher, config, f"run-{os.getpid()}")
    runner = PlanRunner(plan, record, folder, lambda: config, log, launcher, spending)
    entry = lifecycle.PlanEntry(plan, record, folder, log)
    try:
        folder.plan_file.write_bytes(plan_toml(plan))
        await record.save()
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for sig in signals:
                        log.info("daemon.stopping", signal=signal.Signals(sig).name)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_signal)
            if live:
                await tg.start(progress.show, config.audit_path, plan)
            await lifecycle.run(
                entry,
                functools.partial(lifecycle.carry_out, record, plan, runner),
                "interrupted by a signal",
            )
            tg.cancel_scope.cancel()
        return record.state.status
    finally:
        launcher.close()
        os.close(lock_fd)
        audit.close()


async def _end_earlier_run(folder: PlanFolder, log: Logger, redact: Redactor) -> None:
    """An earlier plan of this id must have ended: finished, interrupted, or left `running` by
    an `orchestrd run` that was killed (no process holds its run.lock), which it records as
    interrupted now. One a daemon owns is refused."""
    from . import lifecycle
    from .spool import lock_held
    from .state import PlanRecord, load_state
    from .states import PLAN_TERMINAL, PlanStatus

    old = load_state(folder.state_file)
    if old.status in PLAN_TERMINAL or old.status is PlanStatus.INTERRUPTED:
        return
    if old.status is PlanStatus.RUNNING and lock_held(folder.run_lock) is False:
        record = PlanRecord(folder.state_file, old, log, redact)
        await lifecycle.interrupt(record, "its `orchestrd run` ended without saving (killed)")
        return
    raise OrchestrdError(
        f"plan {old.plan} is {old.status} in {folder.root} (owned by a daemon or a running "
        "`orchestrd run`); cancel it first or give this run another id"
    )


def _cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from . import report
    from .config import check_state_dir, load_config
    from .spool import Spool
    from .states import PlanStatus

    config, path = load_config(args.config)
    plan = _load_plan(Path(args.plan), config)
    check_state_dir(config, path)
    live = not (args.quiet or args.plain) and sys.stdout.isatty()
    status = anyio.run(run_foreground, plan, config, not (args.quiet or live), live)
    folder = Spool(config.state_dir).folder(plan.id).root
    report.write_after_run(config, folder)
    print(f"plan {plan.id}: {status} — audit log {config.audit_path}, files {folder}")
    return EXIT_OK if status is PlanStatus.SUCCEEDED else EXIT_FAILED


def _cmd_daemon(args: argparse.Namespace) -> int:
    import faulthandler

    from .config import check_state_dir, load_config

    config, path = load_config(args.config)
    check_state_dir(config, path)
    from .daemon import run_daemon

    # a watchdog SIGABRT (or a fatal error) then shows in the journal where the loop was stuck
    faulthandler.enable()
    run_daemon(config, path)
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace) -> int:
    import tomllib

    from .config import load_config
    from .errors import PlanError
    from .spool import Spool

    config, _ = load_config(args.config)
    spool = Spool(config.state_dir)
    for name in args.plans:
        path = Path(name)
        plan = _load_plan(path, config)
        if (where := spool.known(plan.id)) is not None:
            raise PlanError(
                f"{path}: id: plan id {plan.id!r} is already known ({where}); give it a new id "
                f"or `orchestrd retry {plan.id}`"
            )
        raw = path.read_bytes()
        if not Path(str(tomllib.loads(raw.decode())["repo"])).expanduser().is_absolute():
            raw = plan_toml(plan)  # the inbox needs an absolute repo
        if not spool.inbox.is_dir():
            raise OrchestrdError(
                f"{spool.inbox} does not exist: is state_dir right in the config, and has the "
                "daemon (which creates it) been started?"
            )
        dest = spool.inbox / f"{plan.id}.toml"
        if dest.exists():
            raise PlanError(f"{path}: {dest} is already waiting in the inbox")
        drop_atomically(dest, raw)
        print(f"{path}: submitted as {dest} — follow it with: orchestrd status {plan.id}")
    return EXIT_OK


def drop_atomically(dest: Path, data: bytes) -> None:
    """Write under a name the daemon ignores, then rename into place."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            # the daemon reads it as a group member, whatever the submitter's umask
            os.fchmod(f.fileno(), 0o640)
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OrchestrdError(f"{dest.parent}: cannot write: {exc.strerror}") from None


def _cmd_status(args: argparse.Namespace) -> int:
    from . import status
    from .config import load_config
    from .parking import HOLDS_FILE, describe_holds, read_holds
    from .plan import check_plan_id
    from .spool import Spool
    from .text import Redactor, printable

    config, _ = load_config(args.config)
    if args.plan is not None:
        check_plan_id(args.plan, "PLAN_ID")
    # state files are written redacted; this also hides `redact` matches in older ones
    redactor = Redactor.from_config(config)
    rows = [redactor.deep(r) for r in status.collect(Spool(config.state_dir), args.plan)]
    if args.plan and not rows:
        raise OrchestrdError(f"plan {args.plan}: not found under {config.state_dir}")
    if args.json:
        print(json.dumps(rows if not args.plan else rows[0], indent=2))
    elif args.plan:
        print(status.detail(rows[0]))
    else:
        print(status.table(rows) if rows else f"no plans under {config.state_dir}")
        holds = read_holds(config.state_dir / HOLDS_FILE)
        for line in describe_holds(holds) if holds else []:
            print(redactor(printable(line, newlines=False)))
    return EXIT_OK


def _cmd_unblock(args: argparse.Namespace) -> int:
    """Lift a profile's block: through the daemon when it runs, else in holds.toml."""
    from .config import load_config
    from .parking import HOLDS_FILE, HoldKind, read_holds
    from .plan import check_plan_id
    from .spool import Spool
    from .state import atomic_write

    config, path = load_config(args.config)
    if args.profile not in config.workers:
        known = ", ".join(sorted(config.workers)) or "none"
        raise OrchestrdError(f"{path}: no worker profile {args.profile!r}; profiles: {known}")
    spool = Spool(config.state_dir)
    holds_file = config.state_dir / HOLDS_FILE
    if spool.daemon_running():
        check_plan_id(args.profile, "PROFILE")  # it becomes a file name in control/
        spool.control.mkdir(parents=True, exist_ok=True)
        drop_atomically(spool.control / f"{args.profile}.unblock", b"")
        print(f"unblock of profile {args.profile} requested from the daemon; see: orchestrd status")
        return EXIT_OK
    holds = read_holds(holds_file)
    hold = holds.get(args.profile) if holds else None
    if holds is None or hold is None or hold.kind is not HoldKind.BLOCKED:
        print(f"profile {args.profile} is not blocked")
        return EXIT_OK
    holds.release(args.profile)
    atomic_write(holds_file, holds.dumps())
    print(f"profile {args.profile}: unblocked (no daemon running; applied to {holds_file})")
    return EXIT_OK


def _control(args: argparse.Namespace, kind: str) -> int:
    import anyio

    from . import budgets, status
    from .config import check_state_dir, load_config
    from .control import apply_offline
    from .errors import PlanError
    from .plan import check_plan_id, load_plan
    from .spool import Spool, submitter_allowed
    from .state import load_state
    from .states import PLAN_RETRYABLE, PLAN_TERMINAL, PlanStatus
    from .store import PlanFolder

    check_plan_id(args.plan, "PLAN_ID")  # it becomes a path: plans/<id>, control/<id>.retry
    config, path = load_config(args.config)
    spool = Spool(config.state_dir)
    state_file = status.state_path(spool, args.plan)
    if state_file is None:
        raise OrchestrdError(f"plan {args.plan}: not found under {config.state_dir}")
    current = load_state(state_file).status
    verb = kind.lstrip(".")
    if kind == ".cancel" and current in PLAN_TERMINAL:
        print(f"plan {args.plan} is already {current}; nothing to cancel")
        return EXIT_FAILED
    try:
        text = "".join(
            f"{name}={value!r}\n"
            for name, value in (budgets.parse_raise(b) for b in getattr(args, "budget", None) or [])
        )
    except ValueError as exc:
        raise OrchestrdError(str(exc)) from None
    if kind == ".resume" and current is not PlanStatus.PAUSED:
        print(
            f"plan {args.plan} is {current}; only a paused plan can be resumed"
            + (" (retry runs a failed or cancelled one again)" if current in PLAN_TERMINAL else "")
        )
        return EXIT_FAILED
    if kind == ".retry" and current not in PLAN_RETRYABLE:
        active = "" if current in PLAN_TERMINAL else " and still active — cancel it first"
        print(
            f"plan {args.plan} is {current}{active}; only failed or cancelled plans can be retried"
        )
        return EXIT_FAILED
    if kind == ".merge" and current is not PlanStatus.MERGING:
        print(f"plan {args.plan} is {current}; only a plan in the merge queue can be merged")
        return EXIT_FAILED
    if kind == ".merge" and not spool.daemon_running():
        print(f"plan {args.plan}: no daemon running; its merge goes on when the daemon starts")
        return EXIT_FAILED
    if kind == ".retry":
        try:
            load_plan(PlanFolder(state_file.parent).plan_file, config)
        except PlanError as exc:
            raise OrchestrdError(
                f"plan {args.plan} is {current}, but it cannot be loaded, so it cannot be "
                f"retried: {exc}"
            ) from None
    if spool.daemon_running():
        allowed = config.allowed_submitters
        if allowed and not submitter_allowed(os.geteuid(), allowed):
            raise OrchestrdError(
                f"{path}: allowed_submitters: uid {os.geteuid()} is not in allowed_submitters "
                f"({', '.join(allowed)}), so the daemon would refuse the request; ask as one "
                "of them or ask the operator to add you"
            )
        spool.control.mkdir(parents=True, exist_ok=True)
        drop_atomically(spool.control / f"{args.plan}{kind}", text.encode())
        print(f"{verb} of plan {args.plan} requested from the daemon; see: orchestrd status")
    else:
        check_state_dir(config, path)
        after = anyio.run(apply_offline, config, args.plan, kind, text)
        print(f"plan {args.plan}: {after} (no daemon running; applied to the state files)")
    return EXIT_OK


def _cmd_usage(args: argparse.Namespace) -> int:
    import datetime as dt

    from . import status, usage
    from .config import load_config
    from .spool import Spool

    config, _ = load_config(args.config)
    since = None
    if args.since is not None:
        try:
            since = dt.date.fromisoformat(args.since).isoformat()
        except ValueError:
            raise OrchestrdError(
                f"--since {args.since!r}: write a UTC day as YYYY-MM-DD, e.g. 2026-12-01"
            ) from None
    summed = usage.report(status.ledger(Spool(config.state_dir)), since)
    if args.json:
        print(json.dumps(summed.as_dict(), indent=2))
        return EXIT_OK
    if not summed.total.attempts:
        print(f"no usage recorded under {config.state_dir}" + (f" since {since}" if since else ""))
        return EXIT_OK
    for title, rows in (
        ("PLAN", summed.plans),
        ("DAY (UTC)", summed.days),
        ("PROFILE", summed.profiles),
        ("MODEL", summed.models),
    ):
        print(usage_table(title, rows))
        print()
    t = summed.total
    print(
        f"total: {status.fmt_tokens(t.tokens)} tokens, "
        f"{status.fmt_cost(t.cost_usd, t.unpriced)} in {t.attempts} attempts"
        + (f" ({t.unpriced} without a known cost)" if t.unpriced else "")
    )
    return EXIT_OK


def usage_table(title: str, rows: dict[str, usage.Totals]) -> str:
    from . import status
    from .text import printable

    lines = [(title, "ATTEMPTS", "INPUT", "CACHED", "OUTPUT", "TOKENS", "COST")]
    for key, t in sorted(rows.items()):
        lines.append(
            (
                printable(key, newlines=False),
                str(t.attempts),
                status.fmt_tokens(t.input_tokens),
                status.fmt_tokens(t.cached_input_tokens),
                status.fmt_tokens(t.output_tokens),
                status.fmt_tokens(t.tokens),
                status.fmt_cost(t.cost_usd, t.unpriced),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


MODULE_COMMANDS = {
    "import": ("importer", "turn a folder of markdown phase files into a plan file"),
    "tail": ("tail", "the audit log, filtered (daemon not needed)"),
    "logs": ("logs", "a worker's log or a verify command's output (no path to know)"),
    "report": ("report", "a plan's morning report (markdown), or every plan since a time"),
    "init": ("install", "write a commented config and the spool folders; print next steps"),
    "doctor": ("doctor", "check config, agents, state_dir, unit and daemon; exit 1 if any fail"),
}
"""Commands whose arguments their own module declares (`add_subcommand`): its module and the
help line `orchestrd --help` shows. Only the module of the command run is imported."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that command's module is imported (the others
    are listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="orchestrd",
        description="Supervise coding-agent workers through phase-by-phase plans.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $ORCHESTRD_CONFIG, /etc/orchestrd/orchestrd.toml, "
        "then the bundled local default)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", parents=[common], help="check plan files; exit 2 if invalid")
    p.add_argument("plans", nargs="+", metavar="PLAN")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", parents=[common], help="run one plan in the foreground")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("-q", "--quiet", action="store_true", help="no event lines on stderr")
    p.add_argument(
        "--plain",
        action="store_true",
        help="event lines on stderr, not the live view a terminal gets",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("daemon", parents=[common], help="serve the inbox (what systemd runs)")
    p.set_defaults(func=_cmd_daemon)

    p = sub.add_parser("submit", parents=[common], help="validate plans and drop them in the inbox")
    p.add_argument("plans", nargs="+", metavar="PLAN")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", parents=[common], help="plans and their state (daemon not needed)")
    p.add_argument("plan", nargs="?", metavar="PLAN_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", parents=[common], help="stop a plan's worker; plan → cancelled")
    p.add_argument("plan", metavar="PLAN_ID")
    p.set_defaults(func=lambda a: _control(a, ".cancel"))

    p = sub.add_parser("retry", parents=[common], help="run a failed/cancelled plan again")
    p.add_argument("plan", metavar="PLAN_ID")
    p.set_defaults(func=lambda a: _control(a, ".retry"))

    p = sub.add_parser("resume", parents=[common], help="run a plan a budget paused again")
    p.add_argument("plan", metavar="PLAN_ID")
    p.add_argument(
        "--budget",
        action="append",
        metavar="NAME=VALUE",
        help="raise this plan's limit (e.g. plan_max_cost_usd=20); repeatable",
    )
    p.set_defaults(func=lambda a: _control(a, ".resume"))

    p = sub.add_parser(
        "usage",
        parents=[common],
        help="tokens and cost per plan, day, profile and model (daemon not needed)",
    )
    p.add_argument("--since", metavar="DATE", help="from this UTC day on (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_usage)

    p = sub.add_parser("merge", parents=[common], help="try a blocked merge again now")
    p.add_argument("plan", metavar="PLAN_ID")
    p.set_defaults(func=lambda a: _control(a, ".merge"))
    p = sub.add_parser(
        "unblock", parents=[common], help="let workers start on a profile blocked by a login"
    )
    p.add_argument("profile", metavar="PROFILE")
    p.set_defaults(func=_cmd_unblock)

    for name, (module, help_text) in MODULE_COMMANDS.items():
        if command is None or command == name:
            importlib.import_module(f".{module}", __package__).add_subcommand(sub, common)
        else:  # listed in `--help` under its own help; its module is not needed to run another
            sub.add_parser(name, help=help_text)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (options before it are the top level's: only --help)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv) or "").parse_args(argv)
    try:
        code: int = args.func(args)
    except OrchestrdError as exc:
        from .text import printable

        print(printable(f"orchestrd: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. no permission on state_dir: say which file, no traceback
        from .text import printable

        where = f" {exc.filename}" if exc.filename else ""
        print(printable(f"orchestrd:{where}: {exc.strerror or exc}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
