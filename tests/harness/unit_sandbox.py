"""Run a command under a systemd unit's sandbox, without systemd.

systemd is not PID 1 in the test container, so `systemd-run -p ...` cannot apply a unit's
restrictions.  This module applies the ones that can break a Python service, with the kernel
features systemd itself uses, read from the unit file:

- ProtectSystem=strict: every mount read-only (in a private mount namespace), except the paths
  given as writable (the unit's RuntimeDirectory/StateDirectory stand-ins); ProtectKernelTunables:
  /sys and /proc/sys read-only too.
- ProtectHome: an empty read-only tmpfs on /home and /root; PrivateTmp: a fresh /tmp and /var/tmp
  (the paths the test passes in are bound back in); PrivateDevices: a /dev with only the pseudo
  devices; ProtectProc=invisible and ProcSubset=pid: a /proc of processes only.
- User/SupplementaryGroups (`nobody` stands in for filterd), NoNewPrivileges, an empty
  CapabilityBoundingSet: util-linux's setpriv; UMask: umask(2).
- SystemCallFilter (systemd's own groups, from `systemd-analyze syscall-filter`, combined in the
  unit's order as systemd does), SystemCallArchitectures=native, RestrictAddressFamilies and
  MemoryDenyWriteExecute: seccomp filters through libseccomp, the library systemd uses, plus the
  kernel's PR_SET_MDWE.  A filtered system call KILLS the process here (the unit answers EPERM),
  so a call the service makes and the unit refuses cannot go unnoticed.

Not emulated (nothing in filterd could trip them): RestrictNamespaces, RestrictRealtime,
RestrictSUIDSGID, LockPersonality, ProtectClock, ProtectHostname, RemoveIPC, PrivateUsers.

Usage, as root (it makes its own mount namespace): python -m tests.harness.unit_sandbox UNIT --rw DIR ... --ro DIR ... -- COMMAND...
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# seccomp actions and comparisons (seccomp.h)
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
AF_MAX = 46
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def scmp_act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


def parse_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] (and other) settings of a unit file: "Section.Key" -> values in file order
    (an empty assignment resets the list, as systemd does)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        name = f"{section}.{key.strip()}"
        value = value.strip()
        settings[name] = [] if not value else [*settings.get(name, []), value]
    return settings


def syscall_group(name: str, _seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group (@system-service, ...), nested groups expanded."""
    seen = _seen if _seen is not None else set()
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    )
    calls: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= syscall_group(item, seen)
        else:
            calls.add(item)
    return calls


def _names(words: str) -> set[str]:
    calls: set[str] = set()
    for word in words.split():
        calls |= syscall_group(word) if word.startswith("@") else {word}
    return calls


def allowed_syscalls(lines: Sequence[str]) -> set[str]:
    """SystemCallFilter= lines combined as systemd.exec(5) says: the first line is an allow list
    (the unit's case); later lines add to it, and "~" lines take calls out of it."""
    if not lines or lines[0].startswith("~"):
        raise ValueError("expected SystemCallFilter= to start with an allow list")
    allowed = _names(lines[0])
    for line in lines[1:]:
        if line.startswith("~"):
            allowed -= _names(line[1:])
        else:
            allowed |= _names(line)
    return allowed


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class Seccomp:
    """A libseccomp filter for the native architecture."""

    def __init__(self, default_action: int) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, syscall: str, *cmps: tuple[int, int, int, int]) -> bool:
        """Add a rule; False when the call does not exist on this architecture."""
        nr = self.lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr < 0:
            return False
        array = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add({syscall})")
        return True

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")


def _mount(*args: str) -> None:
    subprocess.run(["mount", "-n", *args], check=True)  # -n: no utab, /run is read-only


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return sorted(set(points), key=len)


def build_namespace(unit: dict[str, list[str]], rw: Sequence[str], ro: Sequence[str]) -> None:
    """The filesystem view of the unit, in a new private mount namespace of this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount("--make-rprivate", "/")  # nothing below reaches the host's mounts
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in [*ro, *rw]}

    def yes(key: str) -> bool:
        return unit.get(f"Service.{key}", ["no"])[-1] in ("yes", "true", "strict", "invisible", "pid")

    if unit.get("Service.ProtectSystem", [""])[-1] == "strict":
        for point in _mountpoints():
            if point.startswith(("/proc", "/dev", "/mnt/")):  # API filesystems; not ours
                continue
            _mount("-o", "remount,bind,ro", point)
    if yes("ProtectKernelTunables"):
        _mount("--bind", "/proc/sys", "/proc/sys")
        _mount("-o", "remount,bind,ro", "/proc/sys")
    homes = [h for h in ("/home", "/root", "/run/user") if yes("ProtectHome") and os.path.isdir(h)]
    for home in homes:  # read-only once the paths below are bound in
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", home)
    if yes("PrivateTmp"):
        for tmp in ("/tmp", "/var/tmp"):
            _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", tmp)
    if yes("PrivateDevices"):
        staging = "/tmp/.sandbox-dev" if yes("PrivateTmp") else None
        if staging is None:
            raise ValueError("PrivateDevices is emulated only with PrivateTmp")
        os.mkdir(staging)
        _mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", staging)
        for dev in ("null", "zero", "full", "random", "urandom", "tty"):
            Path(staging, dev).touch()
            _mount("--bind", f"/dev/{dev}", f"{staging}/{dev}")
        for sub in ("pts", "shm"):
            os.mkdir(f"{staging}/{sub}")
            _mount("--bind", f"/dev/{sub}", f"{staging}/{sub}")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
            os.symlink(target, f"{staging}/{name}")
        os.symlink("/proc/self/fd/1", f"{staging}/stdout")
        os.symlink("/proc/self/fd/2", f"{staging}/stderr")
        _mount("--move", staging, "/dev")
    # the paths the command needs, bound back over the private /tmp (read-only, then writable)
    for path in [*ro, *rw]:
        if not os.path.isdir(path):  # (mkdir on a read-only mount fails even when it exists)
            os.makedirs(path)
        # mount(2) itself: mount(8) would resolve the fd's link to a path, now the empty private one
        if libc.mount(f"/proc/self/fd/{keep[path]}".encode(), path.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind {path}")
        _mount("-o", f"remount,bind,{'rw' if path in rw else 'ro'}", path)
    for home in homes:
        _mount("-o", "remount,ro", home)
    if yes("ProtectProc") or yes("ProcSubset"):
        options = ["hidepid=invisible"] if yes("ProtectProc") else []
        if unit.get("Service.ProcSubset", [""])[-1] == "pid":
            options.append("subset=pid")
        _mount("-t", "proc", "-o", ",".join(options), "proc", "/proc")
    for fd in keep.values():
        os.close(fd)


def load_filters(unit: dict[str, list[str]]) -> None:
    """MemoryDenyWriteExecute, SystemCallFilter and RestrictAddressFamilies, for this process and
    what it executes (needs NoNewPrivileges, which setpriv set)."""
    service = {k.removeprefix("Service."): v for k, v in unit.items()}
    calls = Seccomp(SCMP_ACT_KILL_PROCESS)
    for name in sorted(allowed_syscalls(service["SystemCallFilter"])):
        calls.rule(SCMP_ACT_ALLOW, name)
    guards = Seccomp(SCMP_ACT_ALLOW)
    if service.get("RestrictAddressFamilies"):
        allowed = {FAMILIES[f] for f in " ".join(service["RestrictAddressFamilies"]).split()}
        for family in range(AF_MAX):
            if family not in allowed:
                guards.rule(scmp_act_errno(97), "socket", (0, SCMP_CMP_EQ, family, 0))  # EAFNOSUPPORT
    if service.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        # systemd's rules (seccomp-util.c), then the kernel's own W^X switch on top
        both = PROT_WRITE | PROT_EXEC
        guards.rule(scmp_act_errno(1), "mmap", (2, SCMP_CMP_MASKED_EQ, both, both))
        guards.rule(scmp_act_errno(1), "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        guards.rule(scmp_act_errno(1), "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        guards.rule(scmp_act_errno(1), "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    guards.load()
    calls.load()  # last: loading a filter is not a call a service may make


def setpriv_argv(unit: dict[str, list[str]], user: str) -> list[str]:
    """setpriv for User= (`user` stands in), SupplementaryGroups, NoNewPrivileges and an empty
    CapabilityBoundingSet."""
    ids = pwd.getpwnam(user)
    argv = [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={ids.pw_uid}", f"--regid={ids.pw_gid}"]
    groups = " ".join(unit.get("Service.SupplementaryGroups", [])).split()
    argv.append(
        f"--groups={','.join(str(grp.getgrnam(g).gr_gid) for g in groups)}" if groups else "--clear-groups"
    )
    if unit.get("Service.NoNewPrivileges", ["no"])[-1] == "yes":
        argv.append("--no-new-privs")
    if unit.get("Service.CapabilityBoundingSet", ["x"]) == []:
        argv += ["--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]
    return argv


def sandbox_argv(
    unit_path: Path, command: Sequence[str], rw: Sequence[str], ro: Sequence[str], user: str
) -> list[str]:
    """The command line that runs `command` under the unit's sandbox (as root, which it drops)."""
    me = [sys.executable, "-m", "tests.harness.unit_sandbox", str(unit_path)]
    paths = [a for p in rw for a in ("--rw", p)] + [a for p in ro for a in ("--ro", p)]
    return [*me, *paths, "--user", user, "--", *command]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("unit", type=Path)
    parser.add_argument("--rw", action="append", default=[])
    parser.add_argument("--ro", action="append", default=[])
    parser.add_argument("--user", default="nobody")
    parser.add_argument("--filters-only", action="store_true", help="(internal) the second stage")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    unit = parse_unit(args.unit)
    if args.filters_only:  # second stage: the user's, after setpriv
        if unit.get("Service.UMask"):
            os.umask(int(unit["Service.UMask"][-1], 8))
        load_filters(unit)
        os.execvp(args.command[0], args.command)
    build_namespace(unit, args.rw, args.ro)
    stage2 = [sys.executable, "-m", "tests.harness.unit_sandbox", str(args.unit), "--filters-only", "--"]
    os.execvp("setpriv", [*setpriv_argv(unit, args.user), *stage2, *args.command])


if __name__ == "__main__":
    main()
