"""The `orchestrd` command: subcommands, error printing, and exit codes (only here).

Exit codes: 0 success, 1 the plan failed (or was interrupted), 2 bad input or config.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import tomli_w

from .audit import AuditLog
from .config import Config, load_config
from .errors import OrchestrdError
from .plan import Plan, load_plan
from .runner import PlanRunner
from .state import PhaseState, PlanFolder, PlanRecord, PlanState, load_state
from .states import PLAN_TERMINAL, PlanStatus

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def plan_toml(plan: Plan) -> bytes:
    """The plan as the daemon keeps it (absolute repo, nothing left implicit but defaults)."""
    return tomli_w.dumps(plan.model_dump(mode="json", exclude_none=True)).encode()


def _cmd_validate(args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    for path in args.plans:
        plan = load_plan(Path(path), config, base_dir=Path(path).resolve().parent)
        print(f"{path}: ok — plan {plan.id}, {len(plan.phases)} phases, repo {plan.repo}")
    return EXIT_OK


async def run_foreground(plan: Plan, config: Config, echo: bool) -> PlanStatus:
    """Run one plan in this process under `state_dir/plans/<id>/`; SIGINT/SIGTERM interrupt it."""
    folder = PlanFolder(config.state_dir / "plans" / plan.id)
    if folder.state_file.exists():
        old = load_state(folder.state_file)
        if old.status not in PLAN_TERMINAL and old.status is not PlanStatus.INTERRUPTED:
            raise OrchestrdError(
                f"plan {plan.id} is {old.status} in {folder.root} (owned by a daemon?); "
                f"cancel it first or give this run another id"
            )
    if folder.root.exists():
        folder.archive(config.state_dir / "archive")
    folder.create()
    folder.plan_file.write_bytes(plan_toml(plan))
    audit = AuditLog(config.audit_path, echo=sys.stderr if echo else None)
    log = audit.bind(plan=plan.id)
    state = PlanState(plan=plan.id, phases={p.id: PhaseState() for p in plan.phases})
    record = PlanRecord(folder.state_file, state, log)
    await record.save()
    runner = PlanRunner(plan, record, folder, lambda: config, log)
    result = PlanStatus.INTERRUPTED
    try:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for sig in signals:
                        log.info("daemon.stopping", signal=signal.Signals(sig).name)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_signal)
            result = await runner.run()
            tg.cancel_scope.cancel()
        if record.state.status is PlanStatus.RUNNING:
            with anyio.CancelScope(shield=True):
                await record.set_status(PlanStatus.INTERRUPTED, "interrupted by a signal")
        return result
    finally:
        audit.close()


def _cmd_run(args: argparse.Namespace) -> int:
    config, _ = load_config(args.config)
    path = Path(args.plan)
    plan = load_plan(path, config, base_dir=path.resolve().parent)
    status = anyio.run(run_foreground, plan, config, not args.quiet)
    folder = config.state_dir / "plans" / plan.id
    print(f"plan {plan.id}: {status} — audit log {config.audit_path}, files {folder}")
    return EXIT_OK if status is PlanStatus.SUCCEEDED else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except OrchestrdError as exc:
        print(f"orchestrd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
