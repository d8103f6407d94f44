"""The CLI starts light: the dispatcher imports only the module of the command run, so
`orchestrd --help` and each command's start-up skip the heavy modules other commands need.
Checked by the modules loaded (robust on a loaded machine), not by a stopwatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_config

from orchestrd import cli

HEAVY = ("pydantic", "rich", "httpx", "starlette", "prometheus_client", "structlog", "anyio")
"""Third-party packages no `--help` needs."""
OTHER_COMMANDS = ("orchestrd.runner", "orchestrd.daemon", "orchestrd.importer", "orchestrd.web")
"""Modules of other commands: never imported to run `status`, `validate` or `tail`."""


def _loaded(argv: list[str]) -> set[str]:
    """The modules `orchestrd ARGV` has imported once it has run (in a fresh interpreter)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from orchestrd import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    cli.main({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def _roots(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


@pytest.mark.parametrize(
    "argv", [["--help"], ["status", "--help"], ["run", "--help"], ["validate", "--help"]]
)
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    loaded = _loaded(argv)
    assert not _roots(loaded) & set(HEAVY), sorted(_roots(loaded) & set(HEAVY))
    assert not {m for m in loaded if m.startswith(OTHER_COMMANDS)}


def test_a_module_command_imports_only_its_module() -> None:
    loaded = _loaded(["tail", "--help"])
    assert "orchestrd.tail" in loaded
    assert not {m for m in loaded if m.startswith(OTHER_COMMANDS)}
    assert not _roots(loaded) & {"httpx", "starlette", "prometheus_client"}


def test_status_and_validate_import_only_what_they_need(tmp_path: Path) -> None:
    config = str(make_config(tmp_path))
    (tmp_path / "p.toml").write_text('id = "P"\nrepo = "."\n[[phases]]\nid = "A"\nprompt = "x"\n')
    for argv in (
        ["status", "--config", config],
        ["status", "--json", "--config", config],
        ["validate", "--config", config, str(tmp_path / "p.toml")],
    ):
        loaded = _loaded(argv)
        assert not {m for m in loaded if m.startswith(OTHER_COMMANDS)}, argv
        assert not _roots(loaded) & {"httpx", "starlette", "prometheus_client"}, argv


def test_validate_and_tail_load_no_audit_machinery(tmp_path: Path) -> None:
    """What they print goes through orchestrd.text: no structlog (nor rich, which structlog
    imports when installed), no anyio; the config's pydantic models are all they load beyond
    the stdlib."""
    config = make_config(tmp_path)
    (tmp_path / "p.toml").write_text('id = "P"\nrepo = "."\n[[phases]]\nid = "A"\nprompt = "x"\n')
    for argv in (
        ["validate", "--config", str(config), str(tmp_path / "p.toml")],
        ["tail", "--config", str(config)],
    ):
        loaded = _loaded(argv)
        assert not _roots(loaded) & {"structlog", "rich", "anyio"}, (argv, sorted(loaded))
        assert "orchestrd.audit" not in loaded, argv


def test_help_lists_every_module_command_with_its_own_help() -> None:
    """The help lines kept in cli.py for unloaded commands are the ones their modules give."""
    full = cli.build_parser()
    light = cli.build_parser("")

    def helps(parser: object) -> dict[str, str | None]:
        sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
        return {a.dest: a.help for a in sub._choices_actions}

    assert helps(light) == helps(full)
    assert set(cli.MODULE_COMMANDS) <= set(helps(full))


def test_the_light_printing_module_escapes_and_redacts_as_the_audit_log_does() -> None:
    """`orchestrd.text` is what the CLI prints through without loading the audit module: it
    must show and hide exactly what `orchestrd.audit` does."""
    from orchestrd import audit, text

    samples = [
        "plain",
        "tab\tand newline\nhere",
        "\x1b[31mred\x1b[0m \x07 \x9b2J \u202egnp.exe \u2028 \udcff",
        "secret-value-123456 and secret-val",
        "",
    ]
    for s in samples:
        for newlines in (True, False):
            assert text.printable(s, newlines) == audit.printable(s, newlines), s
    values, patterns = ["secret-value-123456"], [r"tok_[a-z]+"]
    new, old = text.Redactor(values, patterns), audit.Redactor(values, patterns)
    for s in [*samples, "a tok_abc b", {"k": ["secret-value-123456", 3]}]:
        assert new.deep(s) == old.deep(s), s
    event = {"ts": "2026-12-05T05:00:00.123+00:00", "event": "x.y", "plan": "P\x1b", "n": [1]}
    assert text.console(event) == audit._console(event)
