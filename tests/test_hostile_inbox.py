"""Hostile and broken files in the inbox: each one is moved to rejected/ beside `<name>.error`
naming the file, the key and the fix, a `plan.rejected` event says the same, and the daemon
keeps serving. Nothing is followed, nothing is read past `max_plan_bytes`, nothing blocks.

The same table of bad files is checked twice: file by file against the spool (fast, exact
messages), and all at once against the real daemon (events, and a good plan afterwards).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import make_config
from daemon_support import Daemon

from orchestrd.config import Config, load_config
from orchestrd.errors import PlanError
from orchestrd.spool import Accepted, Rejected, Spool, read_plan_file

MAX_PLAN_BYTES = 4096
IS_ROOT = os.geteuid() == 0


@dataclasses.dataclass
class Place:
    """Where a case builds its file: `repos/` is the only allowed repo root, `outside/` is not."""

    tmp: Path

    @property
    def repos(self) -> Path:
        return self.tmp / "repos"

    @property
    def repo(self) -> Path:
        return self.repos / "repo"

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    def make(self) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)
        self.outside.mkdir(exist_ok=True)
        (self.outside / "secret.txt").write_text("outside the repo\n")
        (self.outside / "plan.toml").write_text(self.plan_text(id="followed"))
        (self.repos / "afile").write_text("not a folder\n")
        links = ((self.repo / "out", self.outside), (self.repos / "link", self.outside))
        for link, target in links:
            if not link.is_symlink():
                link.symlink_to(target)
        (self.repo / "prompts").mkdir(exist_ok=True)
        (self.repo / "prompts" / "p.md").write_text("Do it.\n")

    def plan(self, phase: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"id": "hostile", "repo": str(self.repo), **fields}
        data.setdefault("phases", [{"id": "P01", "prompt": "Do P01.", **(phase or {})}])
        return data

    def plan_text(self, phase: dict[str, Any] | None = None, **fields: Any) -> str:
        return tomli_w.dumps(self.plan(phase, **fields))


Build = Callable[[Path, Place], None]


def text(content: str | bytes) -> Build:
    def build(path: Path, _: Place) -> None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return build


def plan(phase: dict[str, Any] | None = None, **fields: Any) -> Build:
    return lambda path, place: path.write_text(place.plan_text(phase, **fields))


def plan_without(*keys: str) -> Build:
    def build(path: Path, place: Place) -> None:
        data = place.plan()
        for key in keys:
            del data[key]
        path.write_text(tomli_w.dumps(data))

    return build


def raw_plan(edit: Callable[[Place], dict[str, Any]]) -> Build:
    return lambda path, place: path.write_text(tomli_w.dumps(edit(place)))


def symlink(target: Callable[[Place], Path | str]) -> Build:
    return lambda path, place: path.symlink_to(target(place))


def padded(size: int) -> Build:
    def build(path: Path, place: Place) -> None:
        body = place.plan_text()
        path.write_text(body + "#" * (size - len(body) - 1) + "\n")

    return build


def sparse(size: int) -> Build:
    def build(path: Path, _: Place) -> None:
        with open(path, "wb") as f:
            f.truncate(size)

    return build


def fifo(path: Path, _: Place) -> None:
    os.mkfifo(path)


def directory(path: Path, place: Place) -> None:
    path.mkdir()
    (path / "plan.toml").write_text(place.plan_text())


def zero_device(path: Path, _: Place) -> None:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Build
    expect: tuple[str, ...]
    """Fragments the reason must hold after `inbox/<name>: ` — the key, what is wrong, the fix."""
    root_only: bool = False


CASES = [
    # not TOML, not text, nothing at all
    Case(
        "bad-toml.toml",
        text('id = "x"\nrepo = [\nphases = 3\n'),
        ("invalid TOML", "line 3", "fix the syntax there"),
    ),
    Case(
        "binary.toml",
        text(bytes(range(256)) * 8),
        ("not UTF-8 text (bad byte at offset 128)", "save it as UTF-8 TOML"),
    ),
    Case(
        "latin1.toml",
        text('id = "caf\xe9"\n'.encode("latin-1")),
        ("not UTF-8 text (bad byte at offset 9)", "save it as UTF-8"),
    ),
    Case("nul.toml", text(b'id = "x"\n\x00\n'), ("invalid TOML", "fix the syntax there")),
    # nested past Python's recursion limit: the parser raises RecursionError (a bug, see
    # test_fuzz.py); whatever the message, the file is rejected and the daemon lives
    Case("deep.toml", text("a = " + "[" * 5000 + "]" * 5000), ()),
    Case("empty.toml", text(""), ("the file is empty", "write a TOML document")),
    Case("blank.toml", text("\n   \n\t\n"), ("the file is empty", "write a TOML document")),
    # too big: by size, read no further
    Case(
        "big.toml",
        padded(MAX_PLAN_BYTES + 1),
        (
            f"{MAX_PLAN_BYTES + 1} bytes is over [spool] max_plan_bytes ({MAX_PLAN_BYTES})",
            "put long prompts in prompt_file",
        ),
    ),
    Case(
        "sparse.toml",
        sparse(10 << 30),
        (f"{10 << 30} bytes is over [spool] max_plan_bytes", "prompt_file"),
    ),
    # not a regular file; links never followed
    Case(
        "link-plan.toml",
        symlink(lambda p: p.outside / "plan.toml"),
        ("is a symbolic link (to ", "links are never followed", "copy the file itself"),
    ),
    Case(
        "link-zero.toml",
        symlink(lambda p: "/dev/zero"),
        ("is a symbolic link (to /dev/zero)", "copy the file itself"),
    ),
    Case(
        "link-dangling.toml",
        symlink(lambda p: p.outside / "nothing"),
        ("is a symbolic link", "never followed"),
    ),
    Case("fifo.toml", fifo, ("is a named pipe (FIFO), not a regular file", "drop plan files only")),
    Case("dir.toml", directory, ("is a directory, not a regular file", "drop plan files only")),
    Case(
        "zero-device.toml",
        zero_device,
        ("is a character device", "drop plan files only"),
        root_only=True,
    ),
    # ids that are paths, or too long
    Case("id-dotdot-slash.toml", plan(id="../x"), ("id: String should match pattern",)),
    Case("id-slash.toml", plan(id="a/b"), ("id: String should match pattern",)),
    Case("id-long.toml", plan(id="x" * 200), ("id: String should match pattern",)),
    Case("id-empty.toml", plan(id=""), ("id: String should match pattern",)),
    Case("id-dotdot.toml", plan(id=".."), ("id: ",)),
    Case("id-dot.toml", plan(id="."), ("id: ",)),
    # phases
    Case("no-phases.toml", plan(phases=[]), ("phases: List should have at least 1 item",)),
    Case(
        "phases-missing.toml", plan_without("phases"), ("phases: required key is missing; add it",)
    ),
    Case(
        "dup-phases.toml",
        plan(phases=[{"id": "P01", "prompt": "a"}, {"id": "P01", "prompt": "b"}]),
        ("phase id 'P01' appears twice; phase ids must be unique",),
    ),
    # typos
    Case(
        "typo-top.toml",
        plan(repos="x"),
        ("repos: unknown key; check its spelling (allowed here: id, repo",),
    ),
    Case(
        "typo-phase.toml",
        raw_plan(lambda p: p.plan(phases=[{"id": "P01", "promt": "x"}])),
        ("phases[0].promt: unknown key; check its spelling",),
    ),
    Case(
        "typo-verify.toml",
        plan({"verify": [{"run": "true", "expct": "fail"}]}),
        ("phases[0].verify[0].expct: unknown key; check its spelling",),
    ),
    Case(
        "typo-policy.toml",
        plan(policy={"max_poll": 3}),
        ("policy.max_poll: unknown key; check its spelling (allowed here: poll_interval",),
    ),
    # zero and negative durations and counts
    Case(
        "zero-interval.toml",
        plan(policy={"poll_interval": "0s"}),
        ("policy.poll_interval: '0s': a duration must be greater than zero",),
    ),
    Case(
        "neg-grace.toml",
        plan(policy={"stop_grace": -1}),
        ("policy.stop_grace: -1: a duration must be greater than zero",),
    ),
    Case(
        "neg-grace-text.toml",
        plan(policy={"stop_grace": "-1s"}),
        ("policy.stop_grace: '-1s': a duration must be positive", "write e.g."),
    ),
    Case(
        "zero-polls.toml",
        plan(policy={"max_polls": 0}),
        ("policy.max_polls: must be greater than 0",),
    ),
    Case(
        "neg-phase-polls.toml",
        plan({"policy": {"max_polls": -3}}),
        ("phases[0].policy.max_polls: must be greater than 0",),
    ),
    Case(
        "neg-remediations.toml",
        plan(policy={"max_remediations": -1}),
        ("policy.max_remediations: must be greater than or equal to 0",),
    ),
    Case(
        "zero-verify-timeout.toml",
        plan({"verify": [{"run": "true", "timeout": "0ms"}]}),
        ("phases[0].verify[0].timeout:", "greater than zero"),
    ),
    # the config: profiles, repo roots
    Case(
        "unknown-worker.toml",
        plan(worker="nope"),
        ("worker: no worker profile 'nope' in the config; use one of: ",),
    ),
    Case(
        "repo-outside.toml",
        raw_plan(lambda p: p.plan(repo=str(p.outside))),
        ("repo:", "is not inside allowed_repo_roots", "move the checkout or extend the config"),
    ),
    Case(
        "repo-via-link.toml",
        raw_plan(lambda p: p.plan(repo=str(p.repos / "link"))),
        ("repo:", "is not inside allowed_repo_roots"),
    ),
    Case(
        "repo-file.toml",
        raw_plan(lambda p: p.plan(repo=str(p.repos / "afile"))),
        ("repo:", "is not a directory; clone it first"),
    ),
    Case(
        "repo-missing.toml",
        raw_plan(lambda p: p.plan(repo=str(p.repos / "gone"))),
        ("repo:", "is not a directory; clone it first"),
    ),
    Case(
        "repo-relative.toml",
        plan(repo="repos/repo"),
        ("repo: 'repos/repo' is relative; write an absolute path",),
    ),
    Case(
        "repo-dotdot.toml",
        raw_plan(lambda p: p.plan(repo=f"{p.repos}/../outside")),
        ("repo:", "is not inside allowed_repo_roots"),
    ),
    # paths that leave the repo
    Case(
        "report-absolute.toml",
        plan({"report": "/etc/passwd"}),
        ("phases[0].report: '/etc/passwd' is absolute; write it relative",),
    ),
    Case(
        "report-dotdot.toml",
        plan({"report": "../x.md"}),
        ("phases[0].report: '../x.md' leaves its folder with '..'; keep paths inside the repo",),
    ),
    Case(
        "completion-dotdot.toml",
        plan({"completion": ["ok.md", "a/../../x.md"]}),
        ("phases[0].completion:", "leaves its folder with '..'"),
    ),
    Case(
        "prompt-file-absolute.toml",
        raw_plan(lambda p: p.plan(phases=[{"id": "P01", "prompt_file": "/etc/passwd"}])),
        ("phases[0].prompt_file: '/etc/passwd' is absolute",),
    ),
    Case(
        "report-linked-out.toml",
        plan({"report": "out/r.md"}),
        ("phases[0].report: 'out/r.md' resolves to", "outside", "keep paths inside the repo"),
    ),
    Case(
        "completion-linked-out.toml",
        plan({"completion": ["out/c.md"]}),
        ("phases[0].completion[0]: 'out/c.md' resolves to", "outside"),
    ),
    Case(
        "prompt-file-linked-out.toml",
        raw_plan(lambda p: p.plan(phases=[{"id": "P01", "prompt_file": "out/secret.txt"}])),
        ("phases[0].prompt_file: 'out/secret.txt' resolves to", "outside"),
    ),
    Case(
        "plan-dir-linked-out.toml",
        plan(plan_dir="out"),
        ("phases[0].report: 'out/reports/P01-worker.md' resolves to", "outside"),
    ),
    Case(
        "plan-dir-dotdot.toml",
        plan(plan_dir="../outside"),
        ("plan_dir: '../outside' leaves its folder with '..'",),
    ),
]
CASE_IDS = [c.name for c in CASES]


def config_for(tmp: Path) -> Config:
    place = Place(tmp)
    path = make_config(
        tmp, allowed_repo_roots=[str(place.repos)], spool={"max_plan_bytes": MAX_PLAN_BYTES}
    )
    config, _ = load_config(path)
    return config


def kind(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def check_rejection(rejected: Path, case: Case, reason: str, dropped_kind: int) -> None:
    """The reason names the file and says what the case expects; the entry is in rejected/ as
    it came, beside its .error."""
    assert reason.startswith(f"inbox/{case.name}: "), reason
    for fragment in case.expect:
        assert fragment in reason, f"{case.name}: {fragment!r} not in {reason!r}"
    assert (rejected / f"{case.name}.error").read_text() == reason + "\n"
    assert kind(rejected / case.name) == dropped_kind


# -- one file at a time, against the spool --


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_bad_file_is_moved_to_rejected_with_a_reason_naming_file_key_and_fix(
    tmp_path: Path, case: Case
) -> None:
    if case.root_only and not IS_ROOT:
        pytest.skip("mknod needs root")
    place = Place(tmp_path)
    place.make()
    config = config_for(tmp_path)
    spool = Spool(config.state_dir)
    spool.ensure()
    case.build(spool.inbox / case.name, place)
    dropped_kind = kind(spool.inbox / case.name)

    outcome = spool.take(case.name, config, seq=1)

    assert isinstance(outcome, Rejected), outcome
    check_rejection(spool.rejected, case, outcome.reason, dropped_kind)
    assert os.listdir(spool.inbox) == []
    assert os.listdir(spool.plans) == []
    assert (place.outside / "secret.txt").read_text() == "outside the repo\n"


def test_a_plan_id_already_known_is_rejected_saying_how_to_run_it_again(tmp_path: Path) -> None:
    place = Place(tmp_path)
    place.make()
    config = config_for(tmp_path)
    spool = Spool(config.state_dir)
    spool.ensure()
    (spool.inbox / "first.toml").write_text(place.plan_text())
    assert isinstance(spool.take("first.toml", config, seq=1), Accepted)
    (spool.inbox / "again.toml").write_text(place.plan_text(plan_dir="elsewhere"))

    outcome = spool.take("again.toml", config, seq=2)

    assert isinstance(outcome, Rejected)
    assert outcome.reason == (
        f"inbox/again.toml: id: plan id 'hostile' is already known ({spool.plans / 'hostile'}); "
        "give the plan a new id, or `orchestrd retry` the old one"
    )


def test_no_more_than_max_plan_bytes_is_read_from_a_file_whose_size_lies(tmp_path: Path) -> None:
    # /proc files say st_size 0 and hold more: like a file still growing while it is read
    def bytes_read() -> int:
        io = Path("/proc/thread-self/io").read_text()
        return int(io.split("rchar:")[1].split()[0])

    path = Path("/proc/self/smaps")
    assert os.stat(path).st_size == 0 and len(path.read_bytes()) > 8 * 1024
    before = bytes_read()
    with pytest.raises(PlanError, match=r"over \[spool\] max_plan_bytes \(512\) while reading"):
        read_plan_file(path, 512, "inbox/growing.toml")
    # 513 bytes from the file, plus what reading /proc/thread-self/io itself returned
    assert bytes_read() - before <= 513 + 256


def test_rejecting_never_writes_through_a_link_planted_in_rejected(tmp_path: Path) -> None:
    # a symlink named like an error file is rejected (moved to rejected/ as it is); a later
    # bad file of the matching name must not have its .error written through that link
    place = Place(tmp_path)
    place.make()
    config = config_for(tmp_path)
    spool = Spool(config.state_dir)
    spool.ensure()
    planted = place.outside / "planted"
    (spool.inbox / "victim.toml.error").symlink_to(planted)
    assert isinstance(spool.take("victim.toml.error", config, seq=1), Rejected)
    (spool.inbox / "victim.toml").write_text("not = [toml")

    outcome = spool.take("victim.toml", config, seq=2)

    assert isinstance(outcome, Rejected)
    assert not planted.exists() and not planted.is_symlink()
    assert outcome.moved_to == spool.rejected / "victim.toml.2"
    assert (spool.rejected / "victim.toml.2.error").read_text().startswith("inbox/victim.toml:")


def test_names_that_are_too_long_or_not_utf8_are_rejected_with_bounded_names(
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path)
    spool = Spool(config.state_dir)
    spool.ensure()
    long_name = "a" * 250 + ".toml"
    odd = os.fsdecode(b"caf\xe9-\xff.toml")
    for name in (long_name, odd):
        (spool.inbox / name).write_text("[broken")
        outcome = spool.take(name, config, seq=1)
        assert isinstance(outcome, Rejected)
        assert outcome.moved_to.exists()
        assert len(os.fsencode(outcome.moved_to.name + ".error")) <= 255
        assert "invalid TOML" in outcome.reason
    assert os.listdir(spool.inbox) == []
    reasons = sorted(p.read_text() for p in spool.rejected.glob("*.error"))
    assert reasons[0].startswith("inbox/" + "a" * 250 + ".toml: invalid TOML")
    # each byte that is not UTF-8 shown as itself, escaped (not the same U+FFFD for all)
    assert reasons[1].startswith("inbox/caf\\xe9-\\xff.toml: invalid TOML")


# -- who may submit --


@pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")
@pytest.mark.parametrize(
    ("uid", "named"),
    [(65534, "nobody (uid 65534)"), (54321, "uid 54321")],
    ids=["nobody", "no-name"],
)
def test_allowed_submitters_rejects_a_file_owned_by_someone_else(
    tmp_path: Path, uid: int, named: str
) -> None:
    place = Place(tmp_path)
    place.make()
    path = make_config(tmp_path, allowed_repo_roots=[str(place.repos)], allowed_submitters=["root"])
    config, _ = load_config(path)
    spool = Spool(config.state_dir)
    spool.ensure()
    (spool.inbox / "theirs.toml").write_text(place.plan_text())
    os.chown(spool.inbox / "theirs.toml", uid, uid)

    outcome = spool.take("theirs.toml", config, seq=1)

    assert isinstance(outcome, Rejected)
    assert outcome.reason == (
        f"inbox/theirs.toml: allowed_submitters: owned by {named}, who is not in "
        "allowed_submitters (root); submit as one of them or ask the operator to add you"
    )
    # a listed owner, or a member of a listed group, is accepted
    (spool.inbox / "mine.toml").write_text(place.plan_text(id="mine"))
    assert isinstance(spool.take("mine.toml", config, seq=2), Accepted)
    groups = [line.split(":") for line in Path("/etc/group").read_text().splitlines()]
    group = next((g[0] for g in groups if g[2:3] == ["65534"]), None)
    if uid == 65534 and group:
        by_group = config.model_copy(update={"allowed_submitters": [group]})
        (spool.inbox / "group.toml").write_text(place.plan_text(id="by-group"))
        os.chown(spool.inbox / "group.toml", uid, uid)
        assert isinstance(spool.take("group.toml", by_group, seq=3), Accepted)


# -- all at once, against the daemon --


def test_the_daemon_rejects_every_bad_file_and_keeps_serving(daemon: Daemon) -> None:
    place = Place(daemon.tmp)
    place.make()
    daemon.write_config(
        allowed_repo_roots=[str(place.repos)],
        spool={"rescan_interval": "0.2s", "max_plan_bytes": MAX_PLAN_BYTES},
    )
    daemon.start()
    cases = [c for c in CASES if IS_ROOT or not c.root_only]
    staging = daemon.tmp / "staging"
    staging.mkdir()
    kinds = {}
    for case in cases:
        case.build(staging / case.name, place)
        kinds[case.name] = kind(staging / case.name)
    link_target = place.outside / "plan.toml"
    target_before = (link_target.read_bytes(), os.stat(link_target).st_mtime_ns)
    # a FIFO with nobody writing, /dev/zero behind a link, a 10 GiB file: none may hold it up
    for case in cases:
        os.rename(staging / case.name, daemon.inbox / case.name)
    # a folder named like a control request is not one, and must not stop the daemon either
    (daemon.state_dir / "control" / "hostile.cancel").mkdir()

    rejected = {
        e["file"]: e for e in daemon.wait_event("plan.rejected", count=len(cases), timeout=30)
    }
    assert sorted(rejected) == sorted(c.name for c in cases)
    for case in cases:
        event = rejected[case.name]
        assert event["moved_to"] == str(daemon.state_dir / "rejected" / case.name)
        check_rejection(daemon.state_dir / "rejected", case, event["reason"], kinds[case.name])
    assert os.listdir(daemon.inbox) == []
    assert daemon.events("plan.accepted") == []
    assert (link_target.read_bytes(), os.stat(link_target).st_mtime_ns) == target_before
    assert daemon.events(plan="followed") == []

    daemon.submit("good", repo="repo")
    daemon.wait_event("plan.succeeded", plan="good")
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.stop(signal.SIGTERM) == 0
