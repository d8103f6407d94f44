#!/usr/bin/env bash
# Checks the systemd files in this folder:
#  1. orchestrd.service with `systemd-analyze verify`; any warning about the unit fails the check
#     (verify only warns, exit 0, about unknown keys and unparsable values).
#  2. as root: orchestrd.sysusers and orchestrd.tmpfiles applied to a scratch root, then the
#     created user, folders, modes (inbox 2770) and owners checked.
# Usage: bash systemd/verify.sh     (CI: run as root with CI=true; installs systemd if missing)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit="$here/orchestrd.service"
fail() { echo "verify.sh: FAIL: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) == 0 && ${CI:-} == true ]]; then
        echo "verify.sh: systemd-analyze missing; installing the systemd package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    else
        echo "verify.sh: systemd-analyze not found. Install it (Debian/Ubuntu:" \
            "sudo apt-get install systemd), or run as root with CI=true to install it." >&2
        exit 1
    fi
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- 1. the unit ---------------------------------------------------------------------------
# verify insists that ExecStart's binary exists. If orchestrd is not installed here, verify a copy
# that differs from the real unit in that one path only (a stub), so every other line is checked.
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[[ $(grep -c '^ExecStart=' "$unit") == 1 ]] || fail "$unit: expected exactly one ExecStart= line"
checked="$scratch/unit/orchestrd.service"  # same name: verify derives the unit's name from it
mkdir -p "$(dirname "$checked")"
if [[ -x $exec_start ]]; then
    cp "$unit" "$checked"
else
    stub="$scratch/bin/orchestrd"
    mkdir -p "$(dirname "$stub")"
    printf '#!/bin/sh\nexit 0\n' >"$stub"
    chmod +x "$stub"
    sed "s|^ExecStart=$exec_start |ExecStart=$stub |" "$unit" >"$checked"
    changed=$(diff "$unit" "$checked" | grep -c '^[<>]' || true)
    [[ $changed == 2 ]] || fail "stub substitution changed $changed lines, expected one"
    echo "verify.sh: $exec_start is not installed; verifying with it replaced by a stub"
fi

status=0
output=$(systemd-analyze verify --man=no "$checked" 2>&1) || status=$?
output=${output//"$checked"/"$unit"}  # line numbers match: the copy has no line added or removed
# Lines about other units (dependencies on this machine) are shown but are not ours to fix.
ours=$(grep -i 'orchestrd' <<<"$output" || true)
[[ -n $output ]] && echo "$output"
[[ $status == 0 && -z $ours ]] || fail "systemd-analyze verify reported problems in $unit"
echo "verify.sh: ok: systemd-analyze verify $(basename "$unit")"

# --- 2. sysusers + tmpfiles ----------------------------------------------------------------
if [[ $(id -u) != 0 ]]; then
    echo "verify.sh: skipped sysusers/tmpfiles check (needs root to chown in a scratch root)"
    exit 0
fi
root="$scratch/root"
mkdir -p "$root/etc"
systemd-sysusers --root="$root" "$here/orchestrd.sysusers"
user_line=$(grep '^orchestrd:' "$root/etc/passwd") || fail "sysusers created no orchestrd user"
group_line=$(grep '^orchestrd:' "$root/etc/group") || fail "sysusers created no orchestrd group"
uid=$(cut -d: -f3 <<<"$user_line")
gid=$(cut -d: -f3 <<<"$group_line")
[[ $(cut -d: -f4 <<<"$user_line") == "$gid" ]] || fail "orchestrd's primary group is not orchestrd"
[[ $(cut -d: -f6 <<<"$user_line") == /var/lib/orchestrd/home ]] || fail "unexpected HOME: $user_line"

systemd-tmpfiles --root="$root" --create "$here/orchestrd.tmpfiles"
expect() {  # path mode: exists as a folder with that mode, owned by orchestrd:orchestrd
    local path="$root$1" got
    [[ -d $path ]] || fail "tmpfiles did not create $1"
    got=$(stat -c '%a %u %g' "$path")
    [[ $got == "$2 $uid $gid" ]] || fail "$1: mode/uid/gid are '$got', expected '$2 $uid $gid'"
}
expect /var/lib/orchestrd 750
expect /var/lib/orchestrd/inbox 2770
expect /var/lib/orchestrd/plans 750
expect /var/lib/orchestrd/control 2770
expect /var/lib/orchestrd/rejected 750
expect /var/lib/orchestrd/archive 750
expect /var/lib/orchestrd/home 700

# the worker user: its own group, the daemon in that group, never the other way round
wuser_line=$(grep '^orchestrd-worker:' "$root/etc/passwd") || fail "sysusers created no orchestrd-worker"
wgid=$(grep '^orchestrd-worker:' "$root/etc/group" | cut -d: -f3)
wuid=$(cut -d: -f3 <<<"$wuser_line")
[[ $(cut -d: -f4 <<<"$wuser_line") == "$wgid" ]] || fail "orchestrd-worker's primary group"
[[ $(cut -d: -f6 <<<"$wuser_line") == /var/lib/orchestrd-worker ]] || fail "worker HOME: $wuser_line"
grep -q "^orchestrd-worker:[^:]*:$wgid:\(.*,\)\?orchestrd\(,.*\)\?$" "$root/etc/group" \
    || fail "the orchestrd user is not in the orchestrd-worker group"
if grep -q "^orchestrd:[^:]*:$gid:.*orchestrd-worker" "$root/etc/group"; then
    fail "orchestrd-worker must not be in the daemon's group"
fi
got=$(stat -c '%a %u %g' "$root/var/lib/orchestrd-worker")
[[ $got == "700 $wuid $wgid" ]] || fail "/var/lib/orchestrd-worker: '$got'"
got=$(stat -c '%a %u %g' "$root/var/lib/orchestrd-handoff")
[[ $got == "2750 $uid $wgid" ]] || fail "/var/lib/orchestrd-handoff: '$got'"
echo "verify.sh: ok: sysusers and tmpfiles (users orchestrd and orchestrd-worker, inbox 2770," \
    "folders 0750, homes 0700, hand-off 2750)"
