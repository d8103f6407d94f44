"""`orchestrd import`: a folder of markdown phase files (`plan/01-*.md`, `P0.5-*.md`, …) as a plan.

The worker still reads each whole phase file as its prompt; this module extracts only what the
daemon checks itself (ids, kind, completion files, verify commands) and reports, with file and
line, whatever it could not turn into a check.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import tomli_w

from .. import __version__
from ..config import load_config
from ..errors import PlanError
from ..plan import ID_PATTERN, plan_from_bytes
from .markdown import (
    FILE_NUMBER,
    MAX_PHASE_FILE_BYTES,
    TOTAL_PHASES,
    PhaseFile,
    PhaseKey,
    kind_from_name,
    phase_key,
    read_bounded,
)
from .shell import shell_commands, shell_unfinished
from .warnings import MAX_WARNINGS_PER_KIND, UNPRINTABLE, ParseWarning, Warnings

__all__ = [
    "MAX_IMPORT_BYTES",
    "MAX_PHASE_FILE_BYTES",
    "MAX_WARNINGS_PER_KIND",
    "ImportedPlan",
    "ParseWarning",
    "add_subcommand",
    "import_plan_folder",
    "kind_from_name",
    "render_plan_toml",
    "render_report",
    "shell_commands",
    "shell_unfinished",
]

MAX_IMPORT_BYTES = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ImportedPlan:
    """A plan dict valid for `Plan`, the warnings, and the notes written as comments per phase."""

    plan: dict[str, Any]
    warnings: list[ParseWarning]  # summarised: at most MAX_WARNINGS_PER_KIND of a kind
    notes: dict[str, list[str]]  # phase id ("" for the header) → comment lines
    folder: Path  # the source folder, resolved
    warning_count: int = -1  # all of them, summarised ones included (-1: len(warnings))
    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # phase id → its file

    @property
    def total_warnings(self) -> int:
        return self.warning_count if self.warning_count >= 0 else len(self.warnings)


def _phase_files(
    phase_dir: Path, warnings: Warnings
) -> tuple[list[tuple[PhaseKey, str, Path]], list[Path]]:
    """Numbered markdown files (`01a-`, `P0.5-`, `P10-`) in order of their number as a number,
    then the letter, each with its number as written; and the unnumbered overviews. Other .md
    files warn."""
    out, overviews = [], []
    for p in sorted(q for q in phase_dir.iterdir() if q.is_file() and q.suffix.lower() == ".md"):
        if m := FILE_NUMBER.match(p.name):
            out.append((phase_key(m.group(1)), m.group(1), p))
        elif "overview" in p.stem.lower():
            overviews.append(p)
        else:
            warnings.add(
                ParseWarning(
                    p,
                    1,
                    "not a phase: its name has no number prefix "
                    "(NN-name.md, P05-name.md); not imported",
                )
            )
    if (total := sum(p.stat().st_size for _, _, p in out)) > MAX_IMPORT_BYTES:
        raise PlanError(
            f"{phase_dir}: its phase files hold {total} bytes, over the import's limit of "
            f"{MAX_IMPORT_BYTES} (each is a worker's prompt, read whole); split the plan folder"
        )
    return sorted(out, key=lambda kp: (kp[0], kp[2].name)), overviews


def _folder_plan_id(folder: str) -> str:
    """`PLAN-<FOLDER>`: the folder's name upper-cased, other characters than [A-Z0-9._-] as -."""
    name = re.sub(r"[^A-Z0-9._-]+", "-", folder.upper()).strip("-.")
    return f"PLAN-{name}"[:128].rstrip("-.")


def _choose_plan_id(
    given: str | None,
    plan_ids: dict[str, str | None],
    files: dict[str, Path],
    folder: str,
    warnings: Warnings,
) -> str:
    """`--id`, else the plan id most Phase IDs name, else `PLAN-<FOLDER>` (warned); phases whose
    Phase ID names another plan, or that have none while others do, warn."""
    named = Counter(v for v in plan_ids.values() if v is not None)
    plan_id = given or (named.most_common(1)[0][0] if named else _folder_plan_id(folder))
    if not given and not named:  # said once, at the first phase file
        warnings.add(
            ParseWarning(
                next(iter(files.values())),
                1,
                "no Phase ID in any file: "
                f"the plan id is {plan_id}, from the folder name "
                f"{folder!r} (give --id to choose)",
            )
        )
    warnings += [ParseWarning(files[pid], 1, f"Phase ID {other}.{pid} names plan {other}, not "
                              f"{plan_id}; its marker keeps {other}")
                 for pid, other in plan_ids.items() if other not in (None, plan_id)]  # fmt: skip
    if named:
        warnings += [
            ParseWarning(files[pid], 1, f"no Phase ID: the phase is {pid}, from the file name")
            for pid, other in plan_ids.items()
            if other is None
        ]
    return plan_id


def _overview_counts(overviews: list[Path], phases: list[dict[str, Any]]) -> list[ParseWarning]:
    """An overview's `Total Phases: N` against the phases imported (with or without the
    lettered ones, which some authors do not count)."""
    out = []
    whole = sum(1 for p in phases if not p["id"][-1].isalpha())
    for path in overviews:
        text = read_bounded(path).decode("utf-8", errors="replace")
        if (m := TOTAL_PHASES.search(text)) and int(m.group(1)) not in (len(phases), whole):
            line = text.count("\n", 0, m.start()) + 1
            out.append(
                ParseWarning(
                    path,
                    line,
                    f"the overview says {m.group(0)!r}, but "
                    f"{len(phases)} phase files were imported "
                    f"({', '.join(p['id'] for p in phases)})",
                )
            )
    return out


def import_plan_folder(
    folder: Path, repo: Path | None = None, worker: str | None = None, plan_id: str | None = None
) -> ImportedPlan:
    """Import a plan folder (holding `plan/NN-*.md`, or the phase files themselves) that lies
    inside `repo` (default: the current directory); PlanError when there is no usable phase.
    `plan_id` (`--id`) names the plan; default: the Phase IDs', else `PLAN-<FOLDER>`."""
    if plan_id is not None and not re.fullmatch(ID_PATTERN, plan_id):
        raise PlanError(f"--id: {plan_id!r} is not a plan id; use 1-128 of [A-Za-z0-9._-]")
    repo = (repo or Path.cwd()).resolve()
    if not repo.is_dir():
        raise PlanError(f"{repo}: --repo is not a directory; pass the checkout the plan runs in")
    if not folder.is_dir():
        raise PlanError(f"{folder}: no such folder; pass the plan folder (the one with plan/)")
    if not folder.resolve().is_relative_to(repo):
        raise PlanError(
            f"{folder}: not inside the repo {repo}; pass --repo the checkout that contains it"
        )
    plan_dir = folder.resolve().relative_to(repo).as_posix()
    plan_dir = "" if plan_dir == "." else plan_dir
    phase_dir = folder / "plan" if (folder / "plan").is_dir() else folder
    warnings = Warnings()
    notes: dict[str, list[str]] = {"": []}  # "" → the header
    phases: list[dict[str, Any]] = []
    plan_ids: dict[str, str | None] = {}  # phase id → its plan id (None: no Phase ID)
    files: dict[str, Path] = {}
    earlier: dict[PhaseKey, str] = {}  # order key → phase id
    numbered, overviews = _phase_files(phase_dir, warnings)
    if phase_dir != folder:  # an overview next to plan/
        overviews += [p for p in sorted(folder.glob("*.md")) if "overview" in p.stem.lower()]
    for key, tag, path in numbered:
        rel = path.relative_to(folder).as_posix()
        f = PhaseFile(path, warnings)
        if "overview" in path.stem.lower() and not f.of("id"):
            overviews.append(path)
            continue
        if (parsed := f.to_phase(key, tag, rel, plan_dir, earlier)) is None:
            continue
        pid_plan, phase, phase_notes = parsed
        if (pid := phase["id"]) in files:  # two files numbered alike: the first one is kept
            warnings.add(
                ParseWarning(
                    path,
                    1,
                    f"phase id {pid} is also the id of "
                    f"{files[pid].name}; file not imported (give each "
                    "phase file its own number or PLAN.PNN id)",
                )
            )
            continue
        notes[pid] = phase_notes
        phases.append(phase)
        plan_ids[pid], files[pid], earlier[phase_key(pid)] = pid_plan, path, pid
    notes[""] += [
        f"{p.relative_to(folder).as_posix()} is the plan's overview, not a phase" for p in overviews
    ]
    if not phases:
        raise PlanError("\n".join([
            f"{folder}: no phase files in {phase_dir} (NN-name.md or P05-name.md with a "
            "'## Phase ID' section or phase sections); point import at the plan folder",
            *map(str, warnings.summarised()),
        ]))  # fmt: skip
    warnings += _overview_counts(overviews, phases)
    plan_id = _choose_plan_id(plan_id, plan_ids, files, folder.resolve().name, warnings)
    plan: dict[str, Any] = {"id": plan_id, "repo": str(repo)}
    plan |= {"plan_dir": plan_dir} if plan_dir else {}
    plan |= {"worker": worker} if worker else {}
    return ImportedPlan(
        plan | {"phases": phases},
        warnings.summarised(),
        notes,
        folder.resolve(),
        warning_count=warnings.total,
        files=files,
    )


def render_plan_toml(imported: ImportedPlan, now: datetime.datetime | None = None) -> str:
    """The plan file: a comment header (source, date, version, warnings), then the plan with the
    notes of each phase as comments above its table."""
    when = (now or datetime.datetime.now().astimezone()).isoformat(timespec="seconds")

    def comment(text: str) -> str:
        # one line, whatever the text, and no control character (TOML forbids them there)
        return "# " + _escape_controls(" ".join(text.splitlines())) + "\n"

    head = [
        f"Imported by orchestrd {__version__} (`orchestrd import`) on {when}",
        f"from the markdown plan folder {imported.folder}.",
        "Each phase's prompt is its markdown file: edit the files and import again.",
        *imported.notes.get("", []),
        f"{imported.total_warnings} warning(s)" + (":" if imported.warnings else "."),
    ]
    for w in imported.warnings:
        file = w.file.resolve()
        shown = file.relative_to(imported.folder) if file.is_relative_to(imported.folder) else file
        head.append(f"  {shown.as_posix()}:{w.line}: {w.message}")
    top = {k: v for k, v in imported.plan.items() if k != "phases"}
    text = "".join(map(comment, head)) + "\n" + tomli_w.dumps(top)
    for phase in imported.plan["phases"]:
        text += "\n" + "".join(map(comment, imported.notes.get(phase["id"], [])))
        text += tomli_w.dumps({"phases": [phase]}, multiline_strings=True)
    return text


def _escape_controls(text: str) -> str:
    """Control characters (tab excepted) and lone surrogates (bytes of a path that are not
    UTF-8) as `\\xNN` / `\\uNNNN`: a TOML comment may hold neither."""
    return UNPRINTABLE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def render_report(imported: ImportedPlan) -> str:
    """A table per phase, to check an import at a glance: what each phase will be judged on."""
    by_file = Counter(w.file.resolve() for w in imported.warnings)
    rows = [("id", "kind", "verify", "fail", "precheck", "markers", "completion", "warnings")]
    for p in imported.plan["phases"]:
        file = imported.files.get(p["id"])
        rows.append((
            p["id"], p["kind"], str(len(p.get("verify", []))),
            str(sum(v["expect"] == "fail" for v in p.get("verify", []))),
            str(len(p.get("precheck", []))), str(len(p["markers"])),
            ", ".join(p["completion"]) or "-", str(by_file[file.resolve()] if file else 0),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    other = len(imported.warnings) - sum(by_file[f.resolve()] for f in imported.files.values())
    tail = f"{other} other warning(s) (overview, folder, files that are not phases)"
    return "\n".join([*lines, tail]) + "\n"


def _cmd_import(args: argparse.Namespace) -> int:
    """Errors are PlanError/ConfigError, which cli.main reports and turns into exit code 2."""
    if not args.output and not args.dry_run:
        raise PlanError("import: nowhere to write; give -o OUT.toml, or --dry-run to print")
    config, _ = load_config(args.config)
    imported = import_plan_folder(Path(args.folder), Path(args.repo), args.worker, args.id)
    for w in imported.warnings:
        print(w, file=sys.stderr)
    if args.report:
        sys.stderr.write(render_report(imported))
    if args.strict and imported.warnings:
        raise PlanError(
            f"{args.folder}: {imported.total_warnings} warning(s) and --strict; "
            "nothing written (fix the files, or import without --strict)"
        )
    source = args.output or f"{args.folder} (imported)"
    try:
        raw = render_plan_toml(imported).encode("utf-8")
    except UnicodeEncodeError:
        raise PlanError(
            f"{source}: a path of the plan ({imported.folder}) is not UTF-8, and a plan file is "
            "UTF-8 text; rename the folder"
        ) from None
    # what is written is checked exactly as `orchestrd validate` would check the file
    plan = plan_from_bytes(raw, source, config, base_dir=Path(source).resolve().parent)
    if args.dry_run:
        sys.stdout.buffer.write(raw)
        return 0
    try:
        Path(args.output).write_bytes(raw)
    except OSError as exc:
        raise PlanError(f"{args.output}: cannot write: {exc.strerror}; pick another path") from None
    print(
        f"{args.output}: plan {plan.id}, {len(plan.phases)} phases, "
        f"{imported.total_warnings} warning(s)",
        file=sys.stderr,
    )
    return 0


def add_subcommand(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """Register `import FOLDER -o OUT [--repo DIR] [--worker NAME] [--id ID] [--strict]
    [--report] [--dry-run] [--config FILE]`."""
    p = sub.add_parser(
        "import", parents=[common], help="turn a folder of markdown phase files into a plan file"
    )
    p.add_argument("folder", metavar="FOLDER", help="the plan folder (holding plan/01-*.md, …)")
    p.add_argument("-o", "--output", metavar="OUT", help="the plan file to write")
    p.add_argument(
        "--repo",
        default=".",
        metavar="DIR",
        help="the checkout the plan runs in; FOLDER must be inside it (default: .)",
    )
    p.add_argument("--worker", metavar="NAME", help="worker profile (default: the config's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan instead of writing it")
    p.add_argument(
        "--id",
        metavar="PLAN_ID",
        help="the plan id (default: the files' Phase IDs, else PLAN-<FOLDER>)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="any warning is an error (exit 2, nothing written): for CI",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="print a table per phase (verify, expect=fail, markers, completion, "
        "warnings) on stderr",
    )
    p.set_defaults(func=_cmd_import)
