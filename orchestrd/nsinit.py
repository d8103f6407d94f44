"""Start a worker alone in a new user + PID + mount namespace, as the worker's user.

The daemon starts this (`python -I -S nsinit.py PIDNS LOG -- ARGV...`, nothing but the standard
library) already switched to the worker's user: Python's subprocess does setgroups/setresgid/
setresuid in the child, with the daemon's capabilities, before exec; nothing here needs any.
With PIDNS=1 it unshares a user, a PID and a mount namespace: inside, `kill -9 -1`,
`pkill -f python` and `killall node` reach only this attempt's own processes (it gets a /proc of
its own), never the daemon or other plans' workers, which share the same uid. Three processes:

- this one (the daemon's child, leader of the worker's session): forwards SIGTERM/SIGINT/SIGHUP,
  exits as the worker did;
- init, PID 1 of the namespace: forwards those signals to everything inside (PID 1 ignores
  signals it has no handler for), reaps orphans, exits when the worker does — and with it the
  kernel kills whatever the worker left inside; it dies with its parent (PDEATHSIG);
- the worker itself.

A worker exit code above 128 is read as death by signal 128+n (a shell's convention).
LOG is not used here: it names the attempt for recovery, which reads command lines.
"""

from __future__ import annotations

# `_signal`, the C module, not `signal` (which builds enums): each worker and verify command
# starts this interpreter, and that import alone costs as much as the rest of it
import _signal as signal  # type: ignore[import-not-found]  # (no stub)
import ctypes  # Python 3.11 has no os.unshare
import os
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def fail(what: str, code: int) -> None:
    err = ctypes.get_errno()
    os.write(1, f"orchestrd nsinit: {what}: {os.strerror(err) if err else ''}\n".encode())
    os._exit(code)


def enter_namespaces(uid: int, gid: int) -> None:
    if libc().unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) != 0:
        fail(
            "cannot create a user+pid namespace (are unprivileged user namespaces disabled? "
            "sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces; or set "
            "worker_pid_namespace = false)",
            126,
        )
    # the same ids inside: files, `id -u` and the worker's HOME stay the worker user's
    for name, text in (
        ("uid_map", f"{uid} {uid} 1"),
        ("setgroups", "deny"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def run(argv: list[str]) -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(1, f"orchestrd nsinit: cannot execute {argv[0]!r}: {exc.strerror}\n".encode())
    os._exit(127)


def wait_for(child: int) -> int:
    """Reap every child until `child` ends; its status as an exit code (128+n for signal n)."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return (
                os.waitstatus_to_exitcode(status)
                if os.WIFEXITED(status)
                else (128 + os.WTERMSIG(status))
            )


def mount_proc() -> None:
    """A /proc of this namespace: `pkill`/`ps` see only the attempt's own processes, and no
    other worker's environment or command line. Without it (a /proc the kernel will not
    mount again, e.g. partly masked in a container) signals stay confined all the same."""
    c = libc()
    private = c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
    if (
        not private
        or c.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0
    ):
        err = ctypes.get_errno()
        os.write(
            1,
            f"orchestrd nsinit: /proc not remounted ({os.strerror(err)}); the "
            "worker sees the host's processes, cannot signal them\n".encode(),
        )


def init(argv: list[str]) -> None:
    libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    mount_proc()
    worker = os.fork()
    if worker == 0:
        run(argv)
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(-1, s))
    os._exit(wait_for(worker))


def main() -> None:
    args = sys.argv[1:]
    pidns, argv = args[0] == "1", args[args.index("--") + 1 :]
    # the repo is shared with the daemon through the worker group: the work stays readable to
    # the daemon, and nothing is open to others
    os.umask(0o007)
    if not pidns:
        run(argv)
    enter_namespaces(os.getuid(), os.getgid())
    child = os.fork()
    if child == 0:
        init(argv)
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    code = wait_for(child)
    if code > 128:
        if code - 128 not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be handled
            signal.signal(code - 128, signal.SIG_DFL)
        os.kill(os.getpid(), code - 128)
    os._exit(code)


if __name__ == "__main__":
    main()
