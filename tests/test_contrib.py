"""The files in contrib/ an admin installs: the systemd units, the sysusers file, the Postfix snippets.

systemd is not PID 1 here, so the units cannot be started; they are checked with systemd's own tools
(`systemd-analyze verify`, `security --offline`, `systemd-sysusers --root`) and filterd is run under
the unit's sandbox by tests/harness/unit_sandbox.py, with mail sent through Postfix.
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from filterd.config import DEFAULT_CONFIG_PATH
from tests.harness.filterd import Filterd
from tests.harness.net import free_port
from tests.harness.stack import Stack, make_message, private_dir
from tests.harness.unit_sandbox import allowed_syscalls, parse_unit, sandbox_argv

ROOT = Path(__file__).resolve().parents[1]
FILTERD_UNIT = ROOT / "contrib" / "systemd" / "filterd.service"
WORKER_UNIT = ROOT / "contrib" / "dovecot" / "filterd-learn-worker.service"
SYSUSERS = ROOT / "contrib" / "systemd" / "filterd.sysusers"
INSTALL_DOC = ROOT / "docs" / "install.md"
UNITS = [FILTERD_UNIT, WORKER_UNIT]

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "MemoryDenyWriteExecute": "yes",
    "User": "filterd",
    "StateDirectory": "filterd",
}

needs_systemd_tools = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def _service(unit: Path) -> dict[str, list[str]]:
    return {k.removeprefix("Service."): v for k, v in parse_unit(unit).items()}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_has_the_hardening(unit: Path) -> None:
    service = _service(unit)
    for key, value in HARDENING.items():
        assert service.get(key, [""])[-1] == value, (unit.name, key, service.get(key))
    assert service["CapabilityBoundingSet"] == []  # an empty assignment: no capabilities at all
    assert service["SystemCallFilter"][0] == "@system-service"
    allowed = allowed_syscalls(service["SystemCallFilter"])
    assert "fchownat" in allowed or unit == WORKER_UNIT  # the socket's group
    assert not {"setuid", "mount", "reboot", "init_module", "bpf"} & allowed


def test_filterd_unit_runtime_dir_lets_postfix_reach_the_socket() -> None:
    service = _service(FILTERD_UNIT)
    assert service["RuntimeDirectory"] == ["filterd"]
    mode = int(service["RuntimeDirectoryMode"][-1], 8)
    assert mode & 0o001, "others (the postfix user) must be able to traverse /run/filterd"
    assert not mode & 0o002
    assert "postfix" in " ".join(service["SupplementaryGroups"]).split()
    defaults = tomllib.loads((ROOT / "contrib" / "filterd.toml").read_text())
    assert defaults["milter"]["socket"] == "unix:/run/filterd/filterd.sock"
    assert defaults["milter"]["socket_group"] == "postfix"
    assert defaults["quarantine"]["directory"].startswith("/var/lib/filterd/")  # StateDirectory
    assert defaults["metrics"]["multiproc_dir"].startswith("/run/filterd/")  # RuntimeDirectory


def _installed_commands() -> dict[str, str]:
    """/usr/local/bin/NAME -> the venv's NAME, from the `ln -s` lines of docs/install.md."""
    links: dict[str, str] = {}
    for line in INSTALL_DOC.read_text().splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("ln -s") else []
        if words:
            *targets, directory = words[2:] if words[1] == "-s" else words[3:]
            for target in targets:
                links[str(Path(directory) / Path(target).name)] = target
    return links


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exec_lines_run_what_the_install_doc_installs(unit: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    links = _installed_commands()
    service = _service(unit)
    for line in service["ExecStart"] + service.get("ExecStartPre", []):
        argv = shlex.split(line)
        assert argv[0] in links, (argv[0], "not installed by docs/install.md")
        assert Path(links[argv[0]]).name in scripts  # a console script pip installs in the venv
        assert argv[1:3] == ["--config", str(DEFAULT_CONFIG_PATH)]


def test_exec_lines_arguments_are_accepted() -> None:
    """The venv's own commands take the units' arguments (checked with --help, which parses them)."""
    bindir = Path(sys.executable).parent
    for unit in UNITS:
        service = _service(unit)
        for line in service["ExecStart"] + service.get("ExecStartPre", []):
            argv = shlex.split(line)
            command = [str(bindir / Path(argv[0]).name), *argv[1:], "--help"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (line, result.stderr)


@needs_systemd_tools
def test_units_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` knows every key and value (unknown ones are warnings: none allowed).
    The commands are pointed at the venv's, since /usr/local/bin/filterd is not installed here."""
    bindir = Path(sys.executable).parent
    copies = []
    for unit in UNITS:
        text = unit.read_text().replace("/usr/local/bin/", f"{bindir}/")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    result = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@needs_systemd_tools
@pytest.mark.parametrize(
    ("unit", "ceiling"), [(FILTERD_UNIT, 2.0), (WORKER_UNIT, 2.0)], ids=["filterd", "worker"]
)
def test_exposure_score(unit: Path, ceiling: float) -> None:
    """Debian's rspamd.service scores 9.2 UNSAFE, clamav-daemon 9.6, redis-server 1.2; ours before: 8.5."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    ).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert score <= ceiling, out


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_filterd_in_group_postfix(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "usr/lib/sysusers.d/filterd.conf")
    # the host's postfix entries, as the postfix package makes them
    passwd = [
        ln for ln in Path("/etc/passwd").read_text().splitlines() if ln.startswith(("root:", "postfix:"))
    ]
    group = [ln for ln in Path("/etc/group").read_text().splitlines() if ln.startswith(("root:", "postfix:"))]
    (tmp_path / "etc/passwd").write_text("\n".join(passwd) + "\n")
    (tmp_path / "etc/group").write_text("\n".join(group) + "\n")
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], check=True, capture_output=True)
    users = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/group").read_text().splitlines()}
    assert users["filterd"][5] == "/var/lib/filterd"
    assert users["filterd"][6].endswith("nologin")
    assert int(users["filterd"][2]) < 1000  # a system user
    assert "filterd" in groups["postfix"][3].split(",")
    assert groups["filterd"][2] == users["filterd"][3]


# --- Postfix snippets ---


def _main_cf_settings() -> list[tuple[str, str, list[str]]]:
    """(name, value, the comment lines right above it) of contrib/postfix/main.cf."""
    out: list[tuple[str, str, list[str]]] = []
    comments: list[str] = []
    for line in (ROOT / "contrib/postfix/main.cf").read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif line.strip():
            name, value = (p.strip() for p in line.split("=", 1))
            out.append((name, value, comments))
            comments = []
        else:
            comments = []
    return out


@pytest.mark.skipif(shutil.which("postconf") is None, reason="no postconf")
def test_main_cf_lists_only_what_differs_from_postfix_defaults() -> None:
    settings = _main_cf_settings()
    assert {name for name, _, _ in settings} >= {"smtpd_milters", "non_smtpd_milters"}
    for name, value, comments in settings:
        default = subprocess.run(["postconf", "-d", "-h", name], capture_output=True, text=True, check=True)
        assert value != default.stdout.strip(), f"{name} = {value} is Postfix's default"
        assert comments, f"{name} has no comment above it"
        assert "#" not in value  # main.cf has no trailing comments: it would be part of the value


MASTER_DIST = Path("/usr/share/postfix/master.cf.dist")


def _master_services(text: str) -> dict[tuple[str, str], tuple[str, bool]]:
    """(service, type) -> (its lines normalised, whether a comment is right above it)."""
    services: dict[tuple[str, str], tuple[str, bool]] = {}
    key: tuple[str, str] | None = None
    commented = False
    for line in text.splitlines():
        if line.startswith("#"):
            commented = True
            continue
        if not line.strip():
            commented = False
            continue
        if line[0] in " \t" and key is not None:
            body, c = services[key]
            services[key] = (body + " " + " ".join(line.split()), c)
            continue
        fields = line.split()
        key = (fields[0], fields[1])
        services[key] = (" ".join(fields), commented)
        commented = False
    return services


@pytest.mark.skipif(not MASTER_DIST.exists(), reason="no Debian master.cf.dist")
def test_master_cf_lists_only_changed_or_new_services() -> None:
    stock = _master_services(MASTER_DIST.read_text())
    ours = _master_services((ROOT / "contrib/postfix/master.cf").read_text())
    assert ("filterd-reinject", "unix") in ours
    for key, (body, commented) in ours.items():
        assert commented, f"{key} has no comment above it"
        if key in stock:
            assert body != stock[key][0], f"{key} is Debian's stock line"
    # the chroot is off wherever a milter runs (smtpd and cleanup): /run/filterd is outside it
    for key in (("smtp", "inet"), ("cleanup", "unix")):
        assert ours[key][0].split()[4] == "n"


def test_license_matches_pyproject() -> None:
    license_id = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert license_id == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


# --- filterd under the unit's sandbox, mail through Postfix ---


def _can_sandbox() -> str:
    if os.geteuid() != 0:
        return "needs root (mount namespace, setpriv)"
    for tool in ("setpriv", "systemd-analyze", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return "" if probe.returncode == 0 else "cannot create a mount namespace here"


class SandboxedFilterd(Filterd):
    """filterd as the unit runs it: `nobody` stands in for the filterd user."""

    def __init__(self, workdir: Path, run_dir: Path, state_dir: Path) -> None:
        super().__init__(workdir, run_dir / "filterd.sock")
        self.run_dir, self.state_dir = run_dir, state_dir

    def spawn(self) -> subprocess.Popen[bytes]:
        if self.socket_path.exists():
            self.socket_path.unlink()
        readonly = [str(self.dir)]
        # this machine's interpreter lives under /root (pyenv), which ProtectHome hides; a real
        # install's venv uses /usr/bin/python3
        if Path(sys.base_prefix).is_relative_to("/root") or Path(sys.base_prefix).is_relative_to("/home"):
            readonly.append(sys.base_prefix)
        command = [sys.executable, "-m", "filterd", "--config", str(self.config_path)]
        argv = sandbox_argv(
            FILTERD_UNIT, command, [str(self.run_dir), str(self.state_dir)], readonly, "nobody"
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT
        )
        log.close()
        return self.proc


@pytest.fixture(scope="module")
def sandboxed_stack(redis_server) -> Iterator[Stack]:
    reason = _can_sandbox()
    if reason:
        pytest.skip(reason)
    stack = Stack()
    run_dir, state_dir = private_dir("filterd-run-"), private_dir("filterd-state-")
    for d in (run_dir, state_dir):
        shutil.chown(d, "nobody")
    os.chmod(run_dir, int(_service(FILTERD_UNIT)["RuntimeDirectoryMode"][-1], 8))
    os.chmod(state_dir, 0o750)
    shutil.copy(ROOT / "models" / "bayes.npz", state_dir / "bayes.npz")
    shutil.chown(state_dir / "bayes.npz", "nobody")
    stack.filterd = SandboxedFilterd(stack.dir, run_dir, state_dir)
    stack.postfix.milter_socket = f"unix:{stack.filterd.socket_path}"
    stack.quarantine_dir = state_dir / "quarantine"
    metrics_port = free_port()
    stack.base_config = {
        **stack.base_config,
        "quarantine": {**stack.base_config["quarantine"], "directory": str(stack.quarantine_dir)},
        "redis": {"url": redis_server.url},
        "metrics": {
            "enabled": True,
            "listen": f"127.0.0.1:{metrics_port}",
            "multiproc_dir": str(run_dir / "metrics"),
        },
        # storage = "redis" with signatures: each message's tokens go to Redis over TCP
        "checks": {
            "bayes": {
                "enabled": True,
                "model": str(state_dir / "bayes.npz"),
                "storage": "redis",
                "signature": True,
            }
        },
        "actions": {"add_header": 2.0, "quarantine": 3.0},
        "scores": {"MISSING_DATE": 4.0},
    }
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.stack
def test_filterd_runs_under_the_units_sandbox(sandboxed_stack: Stack) -> None:
    """numpy (Bayes), re2 (rules), Redis over TCP, the metrics endpoint, a quarantined message in the
    state dir and the socket in the runtime dir, with the unit's seccomp filter, W^X memory, read-only
    system and no capabilities.  A refused system call kills the worker here, so this would fail."""
    stack = sandboxed_stack
    filterd = stack.filterd
    assert isinstance(filterd, SandboxedFilterd)
    msg, marker = make_message("sandboxed")
    assert stack.send(msg) == {}
    got = stack.sink.find(marker)
    report = got.header("X-Spam-Report")[0]
    assert "BAYES_" in report and "BAYES_UNTRAINED" not in report, report

    # quarantined: written to the state directory by the sandboxed worker
    held, held_marker = make_message("held in the sandbox")
    no_date = b"\r\n".join(ln for ln in held.split(b"\r\n") if not ln.startswith(b"Date:"))
    stack.send(no_date)
    files = [p for p in stack.quarantine_dir.rglob("*") if p.is_file()]
    assert any(held_marker.encode() in p.read_bytes() for p in files), files
    assert all(not p.stat().st_mode & 0o007 for p in files)  # UMask=0027: mail is not world-readable
    assert stack.sink.count(held_marker) == 0

    # the socket as Postfix needs it, made by the unprivileged process in the runtime directory
    sock = filterd.socket_path.stat()
    assert sock.st_gid == grp.getgrnam("postfix").gr_gid and sock.st_mode & 0o777 == 0o660
    # Redis reached over TCP from inside: the delivered message's Bayes signature is there
    [signature] = got.header("X-Filterd-Signature")
    client = redis.Redis.from_url(stack.base_config["redis"]["url"])
    assert client.exists(f"filterd:bayes:sig:{signature}")
    client.close()

    listen = stack.base_config["metrics"]["listen"]
    metrics = urllib.request.urlopen(f"http://{listen}/metrics", timeout=10).read()
    assert b"filterd" in metrics

    # the process filterd runs as: no capabilities, NoNewPrivs, seccomp on, not root
    pids = subprocess.run(
        ["pgrep", "-f", f"filterd --config {filterd.config_path}"], capture_output=True, text=True
    )
    worker = [p for p in pids.stdout.split() if p != str(filterd.proc.pid)]
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{worker[-1]}/status").read_text().splitlines())
    assert fields["Uid"].split()[0] == "65534"
    assert int(fields["CapBnd"].strip(), 16) == 0 and int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    assert "Bad system call" not in filterd.log() and "Traceback" not in filterd.log(), filterd.log()


@pytest.mark.stack
def test_learn_worker_trains_under_its_units_sandbox(redis_server, tmp_path: Path) -> None:
    """`filterctl learn-worker` (numpy and scipy training, Redis over TCP, the model rewritten in the
    state directory) under filterd-learn-worker.service's restrictions.  Not emulated: PrivateUsers."""
    from filterd.bayes.model import Model, message_digest
    from filterd.message import Message
    from tests.bayes_helpers import make_message as bayes_message
    from tests.bayes_helpers import trained_model

    reason = _can_sandbox()
    if reason:
        pytest.skip(reason)
    etc, state = private_dir("filterd-etc-"), private_dir("filterd-state-")
    shutil.chown(state, "nobody")
    os.chmod(state, 0o750)
    model = state / "bayes.npz"
    trained_model(30).save(model)
    shutil.chown(model, "nobody")
    prefix = f"sandbox-{os.getpid()}:"
    config = etc / "filterd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'
        f'[checks.bayes]\nmodel = "{model}"\nstorage = "file"\n'
    )
    words = " ".join(f"sbx{w}" for w in ("quorvex", "blandish", "tromple", "vexillar", "ganderoo"))
    raw = bayes_message("sbx quarterly", f"{words}\r\n{words}", message_id="<sbx@example.com>")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    queued = subprocess.run(
        [sys.executable, "-m", "filterd.learnclient", "spam", "--user", "bob", "--config", str(config)],
        input=raw,
        env=env,
        capture_output=True,
    )
    assert queued.returncode == 0, queued.stderr
    readonly = [str(etc)]
    if Path(sys.base_prefix).is_relative_to("/root") or Path(sys.base_prefix).is_relative_to("/home"):
        readonly.append(sys.base_prefix)
    command = [sys.executable, "-c", "from filterd.cli.filterctl import main; main()"]
    command += ["--config", str(config), "learn-worker", "--once"]
    try:
        done = subprocess.run(
            sandbox_argv(WORKER_UNIT, command, [str(state)], readonly, "nobody"),
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0 and "1 reports trained" in done.stdout, done.stdout + done.stderr
        trained = Model.load(model)
        assert trained.records[message_digest(Message(raw))] == "spam"
        assert (trained.nspam, trained.nham) == (31, 30)
        assert model.stat().st_uid == 65534  # written by the worker, in the state directory
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
