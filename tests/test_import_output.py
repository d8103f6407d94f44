"""`orchestrd import` never says ok about a file `validate` would refuse, and its work is bounded.

- The text it writes is validated as `orchestrd validate` validates a file (TOML, size, schema,
  config); if that fails it exits 2 and writes nothing.
- A control character in the folder's path does not reach the comment header raw.
- A phase file over the size limit is refused; warnings of one kind are summarised after a few.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
from conftest import run_cli

PLAN = "PLAN-20251018-OUT"
AGENT = Path(__file__).parent / "agents" / "importer_agent.py"


def phase_file(n: int, extra: str = "") -> str:
    return (
        f"# Phase {n:02d}\n\n## Phase ID\n\n`{PLAN}.P{n:02d}`\n\n"
        "## Verification Commands\n\n```bash\ntrue\n```\n\n"
        f"## Phase Completion Marker\n\nCreate: `.completed/P{n:02d}.md`\n{extra}"
    )


def setup(tmp_path: Path, folder_name: str, files: dict[str, str], **config: Any) -> Path:
    """A repo with the plan folder `folder_name/plan/`, and a config; returns the folder."""
    folder = tmp_path / "repo" / folder_name
    (folder / "plan").mkdir(parents=True)
    for name, text in files.items():
        (folder / "plan" / name).write_text(text, encoding="utf-8")
    data = {
        "state_dir": str(tmp_path / "state"),
        "default_worker": "fake",
        "allowed_repo_roots": [str(tmp_path)],
        "workers": {"fake": {"command": ["{python}", str(AGENT), "{prompt_file}"]}},
        **config,
    }
    (tmp_path / "orchestrd.toml").write_text(tomli_w.dumps(data))
    return folder


def orchestrd(tmp_path: Path, *args: str | Path) -> Any:
    return run_cli(*args, "--config", tmp_path / "orchestrd.toml", cwd=tmp_path)


def test_a_control_character_in_the_folder_path_still_gives_a_valid_plan(tmp_path: Path) -> None:
    folder = setup(tmp_path, "demo\x1b[31m\x07", {"01-stub.md": phase_file(1)})
    out = tmp_path / "plan.toml"
    result = orchestrd(tmp_path, "import", folder, "-o", out, "--repo", tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    header = out.read_text().split("\n\n")[0]
    assert "\x1b" not in header and "\x07" not in header
    assert "demo\\x1b[31m\\x07" in header
    validate = orchestrd(tmp_path, "validate", out)
    assert validate.returncode == 0, validate.stderr


def test_import_exits_2_and_writes_nothing_when_validate_would_refuse(tmp_path: Path) -> None:
    files = {f"{n:02d}-stub.md": phase_file(n) for n in range(1, 41)}
    folder = setup(tmp_path, "many", files, spool={"max_plan_bytes": 8192})
    out = tmp_path / "plan.toml"
    result = orchestrd(tmp_path, "import", folder, "-o", out, "--repo", tmp_path / "repo")
    assert result.returncode == 2, result.stderr
    assert "max_plan_bytes (8192)" in result.stderr
    assert not out.exists()
    # --dry-run says the same: it prints nothing `validate` would refuse
    dry = orchestrd(tmp_path, "import", folder, "--dry-run", "--repo", tmp_path / "repo")
    assert dry.returncode == 2 and dry.stdout == ""


def test_a_huge_phase_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = phase_file(1, "x `y`\n" * 300_000)  # 1.8 MB, each line a warning
    folder = setup(tmp_path, "huge", {"01-stub.md": huge, "02-stub.md": phase_file(2)})
    result = orchestrd(tmp_path, "import", folder, "--dry-run", "--repo", tmp_path / "repo")
    assert result.returncode == 2
    assert "01-stub.md" in result.stderr and "bytes" in result.stderr
    assert len(result.stderr) < 2000


def test_warnings_of_one_kind_are_summarised(tmp_path: Path) -> None:
    lines = "".join(f"Run `check {i}` by hand.\n" for i in range(500))
    body = phase_file(1).replace("```bash\ntrue\n```\n", "```bash\ntrue\n```\n" + lines)
    folder = setup(tmp_path, "noisy", {"01-stub.md": body})
    out = tmp_path / "plan.toml"
    result = orchestrd(tmp_path, "import", folder, "-o", out, "--repo", tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    shown = [line for line in lines if "inline code outside" in line and "more warn" not in line]
    assert len(shown) == 20
    assert any("480 more warning(s) like this one" in line for line in lines)
    assert len(out.read_text()) < 10_000
    assert "500 warning(s)" in result.stderr.splitlines()[-1]
