

LOCAL_INTERNALS = (
    "LocalWorker",
    "LocalLauncher",
    "WorkerHandle",
    "stop_group",
    "group_members",
    "stop_orphan",
    "stop_processes",
    "processes_with_env",
    "nsinit_processes",
    "proctree",
    "launchers.local",
    "cgroups",
)


def test_nothing_outside_the_local_launcher_uses_its_internals() -> None:
    """The runner, the policy, the checks and recovery know workers only by the protocol."""
    package = Path(__file__).parent.parent / "orchestrd"
    allowed = {package / "cgroups.py", package / "launchers" / "local.py"}
    allowed |= {package / "launchers" / "proctree.py", package / "launchers" / "__init__.py"}
    found = [
        f"{path.relative_to(package)}: {name}"
        for path in package.rglob("*.py")
        if path not in allowed
        for name in LOCAL_INTERNALS
        if re.search(rf"\b{re.escape(name)}\b", path.read_text(encoding="utf-8"))
    ]
    assert found == []
