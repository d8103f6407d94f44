"""CPU of a process group from /proc: a sleeping group uses none, a spinning one does; and the
stat parser survives command names with spaces and parentheses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrd.procfs import CpuSample, busy, cgroup_cpu, parse_stat, worker_cpu


def cpu(leader: int) -> CpuSample:
    return worker_cpu(leader, leader)


@pytest.fixture
def group() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    for p in started.values():
        p.kill()
        p.wait()


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_sleeping_group_is_idle_and_a_spinning_one_is_busy(
    group: dict[str, subprocess.Popen[bytes]],
) -> None:
    group["sleep"] = spawn("import time; time.sleep(30)")
    group["spin"] = spawn("while True: pass")
    time.sleep(0.3)  # both past their start-up (which uses CPU)
    idle_before, spin_before = cpu(group["sleep"].pid), cpu(group["spin"].pid)
    time.sleep(0.3)
    idle_after, spin_after = cpu(group["sleep"].pid), cpu(group["spin"].pid)
    assert [pid for pid, _ in idle_before] == [group["sleep"].pid]
    assert not busy(idle_before, idle_after)
    assert busy(spin_before, spin_after)


def test_a_new_process_is_activity_and_a_child_in_its_own_session_counts(
    group: dict[str, subprocess.Popen[bytes]],
) -> None:
    group["parent"] = spawn(
        "import subprocess, sys, time; time.sleep(0.3); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], "
        "start_new_session=True); time.sleep(30)"
    )
    before = cpu(group["parent"].pid)
    time.sleep(0.8)
    after = cpu(group["parent"].pid)
    assert len(after) == 2 and busy(before, after)
    child = next(pid for pid, _ in after if pid != group["parent"].pid)
    os.kill(child, 9)


def test_a_group_that_does_not_exist_is_empty() -> None:
    assert cpu(2**22 + 17) == {}


def test_parse_stat_takes_the_last_parenthesis(tmp_path: Path) -> None:
    fields = " ".join(
        ["S", "1", "4242"] + ["0"] * 8 + ["7", "3", "2", "1"] + ["0"] * 4 + ["99"] + ["0"] * 10
    )
    raw = f"4243 (evil) S 1 1 (x) {fields}".encode()
    parsed = parse_stat(raw)
    assert parsed is not None and parsed[2] == "4242" and parsed[19] == "99"
    fake = tmp_path / "proc"
    (fake / "4243").mkdir(parents=True)
    (fake / "4243" / "stat").write_bytes(raw)
    (fake / "self").mkdir()
    assert worker_cpu(4242, 4242, fake) == {(4243, 99): 13}
    assert worker_cpu(4243, 7, fake) == {(4243, 99): 13}  # the leader itself
    assert worker_cpu(17, 7, fake) == {}
    assert parse_stat(b"no parens") is None


def test_cgroup_cpu_reads_usage_usec(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 12345\nuser_usec 10000\n")
    assert cgroup_cpu(tmp_path) == 12345
    assert cgroup_cpu(tmp_path / "gone") is None
