"""OpenDKIM's test tools as an independent DKIM implementation for interop tests.

`opendkim-testmsg` signs with a key file (no DNS needed) and verifies by asking the system
resolver for the key, at port 53 of the name server in /etc/resolv.conf, with no way to pick
another.  So verification runs in private network and mount namespaces (`unshare`, as root):
loopback only, a resolv.conf that says 127.0.0.1 bind-mounted over the real one, and the
tests' zone served by `LocalDns` on 127.0.0.1:53 inside the namespace.  Nothing outside is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_INSIDE = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from tests.harness import dns as harness
harness.free_port = lambda: 53  # inside our own network namespace, port 53 is ours
server = harness.LocalDns()
server.add(open(sys.argv[2]).read())
server.start()
try:
    with open(sys.argv[3], "rb") as message:
        done = subprocess.run(["opendkim-testmsg"], stdin=message, capture_output=True, timeout=30)
finally:
    server.stop()
print(json.dumps({"rc": done.returncode, "stderr": done.stderr.decode(errors="replace")}))
"""


def available() -> str | None:
    """Why the interop tests cannot run here, or None when they can."""
    for tool in ("opendkim-testmsg", "unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install opendkim-tools util-linux iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def sign(message: bytes, domain: str, selector: str, key_file: Path) -> bytes:
    """`message` signed by OpenDKIM (CRLF line ends kept)."""
    done = subprocess.run(
        ["opendkim-testmsg", "-C", "-d", domain, "-s", selector, "-k", str(key_file)],
        input=message,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def verify(message: bytes, zone: str) -> tuple[int, str]:
    """(exit code, stderr) of OpenDKIM verifying `message` with `zone` as the only DNS there is."""
    with tempfile.TemporaryDirectory(prefix="opendkim-") as tmp:
        d = Path(tmp)
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (d / "zone").write_text(zone)
        (d / "message").write_bytes(message)
        (d / "inside.py").write_text(_INSIDE)
        script = (
            "ip link set lo up && "
            f"mount --bind {d / 'resolv.conf'} /etc/resolv.conf && "
            f"exec {sys.executable} {d / 'inside.py'} {ROOT} {d / 'zone'} {d / 'message'}"
        )
        done = subprocess.run(
            ["unshare", "--net", "--mount", "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"namespace run failed ({done.returncode}): {done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return int(result["rc"]), str(result["stderr"])
