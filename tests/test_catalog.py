"""The archive's summary index: `status` reads one line per archived plan instead of parsing
every archived state file, and the index never hides what the state files say."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from daemon_support import Daemon

from orchestrd import catalog, status
from orchestrd.config import load_config
from orchestrd.spool import Spool
from orchestrd.state import PlanState, dump_state
from orchestrd.states import PlanStatus


def _archived(spool: Spool, plan_id: str, when: str = "00") -> Path:
    folder = spool.archive_dir / plan_id
    folder.mkdir(parents=True)
    state = PlanState(
        plan=plan_id,
        status=PlanStatus.SUCCEEDED,
        submitted_at=f"2026-01-01T00:{when}:00+00:00",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:05:00+00:00",
    )
    (folder / "state.toml").write_bytes(dump_state(state))
    return folder


def _spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "state")
    spool.ensure()
    return spool


def _index_lines(spool: Spool) -> list[dict[str, object]]:
    text = catalog.index_path(spool.archive_dir).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_status_reads_archived_plans_from_the_index_not_their_state_files(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path)
    folders = [_archived(spool, f"A{i}", f"{i:02d}") for i in range(3)]
    first = status.collect(spool)
    assert [r["plan"] for r in first] == ["A0", "A1", "A2"]
    assert sorted(str(e["dir"]) for e in _index_lines(spool)) == ["A0", "A1", "A2"]

    # the same bytes count, inode and mtime, other content: only a reader of the index
    # still sees the plan as it was summarised
    state_file = folders[1] / "state.toml"
    st = os.stat(state_file)
    with open(state_file, "r+b") as f:
        f.write(b"x" * st.st_size)
    os.utime(state_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert status.collect(spool) == first

    # a state file that changed (its mtime) is read again, not served from the index
    os.utime(state_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = {r["plan"]: r for r in status.collect(spool)}
    assert again["A1"]["state"] == "corrupt"
    assert again["A0"] == first[0]


def test_index_catches_up_with_what_it_lacks_and_drops_what_left(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    for i in range(4):
        _archived(spool, f"B{i}", f"{i:02d}")
    before = status.collect(spool)
    catalog.index_path(spool.archive_dir).unlink()  # lost: rebuilt from the state files
    assert status.collect(spool) == before
    assert len(_index_lines(spool)) == 4

    _archived(spool, "B9", "59")  # archived by a process that did not index it
    assert [r["plan"] for r in status.collect(spool)][-1] == "B9"
    assert len(_index_lines(spool)) == 5

    for name in ("B0", "B1", "B2"):  # e.g. retried: moved back to plans/
        shutil.rmtree(spool.archive_dir / name)
    assert [r["plan"] for r in status.collect(spool)] == ["B3", "B9"]
    # most of the index was dead lines: rewritten with the live ones only
    assert sorted(str(e["dir"]) for e in _index_lines(spool)) == ["B3", "B9"]


def test_a_torn_index_line_costs_only_a_reread(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    _archived(spool, "C0")
    before = status.collect(spool)
    with open(catalog.index_path(spool.archive_dir), "ab") as f:
        f.write(b'{"dir": "C0", "stamp": [1')  # a writer killed mid-line
    assert status.collect(spool) == before
    _archived(spool, "C1", "01")  # the line added next is whole, after the torn one
    assert [r["plan"] for r in status.collect(spool)] == ["C0", "C1"]
    text = catalog.index_path(spool.archive_dir).read_text()
    assert json.loads(text.splitlines()[-1])["dir"] == "C1"


def test_the_daemon_indexes_a_plan_when_it_archives_it(daemon: Daemon) -> None:
    daemon.start()
    daemon.submit("d1")
    daemon.wait_event("plan.archived", plan="d1")
    config, _ = load_config(daemon.config_path)
    lines = _index_lines(Spool(config.state_dir))
    assert [(e["dir"], e["row"]["state"]) for e in lines] == [("d1", "succeeded")]  # type: ignore[index]
