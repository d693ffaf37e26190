"""A two-node Ray cluster on 127.0.0.1 inside a private network and PID namespace, for the tests.

Run by tests/test_ray.py as
``unshare --net --pid --fork --mount --mount-proc --kill-child python ray_sandbox.py TMPDIR``:
only loopback exists in the namespace (Ray cannot pick the host's address, and nothing leaves
it), and every process started here dies with the namespace, whatever happens to the test.

It brings ``lo`` up, starts a head node and one worker node (1 CPU each, a temp dir each), prints
``READY ADDRESS``, then runs one command per JSON line read on stdin
(``{"argv": [...], "timeout": s}``) and answers a JSON line ``{"rc", "stdout", "stderr"}``.
At the end of stdin it ends every process of the namespace (see :func:`stop_all`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PORT = 6379  # the namespace is private: no other Ray can hold it
NODE_ARGS = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
             "--object-store-memory", str(100 * 1024 * 1024)]


def ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def run(argv, timeout=180) -> dict:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
    except subprocess.TimeoutExpired as e:
        return {"rc": -1, "stdout": str(e.stdout or ""), "stderr": f"timed out after {timeout} s"}


def stop_all(grace: float = 5.0) -> None:
    """End every other process of this PID namespace, one by one by id (``/proc`` is this
    namespace's own): SIGTERM, then SIGKILL after ``grace`` seconds. (``ray stop`` would do the
    same but waits ~20 s; whatever is left dies with the namespace anyway.)"""
    def others():
        return [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in others():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0] > 0:  # as the namespace's init, reap orphans
                    pass
            if not others():
                return
            time.sleep(0.1)


def main() -> int:
    tmp = Path(sys.argv[1])
    (tmp / "home").mkdir()
    os.environ.update({
        "RAY_USAGE_STATS_ENABLED": "0",
        # token authentication (Ray's default for new clusters) with a token of this run only, so
        # nothing is read from or written to ~/.ray, and Ray's default temp dir is in here too
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "HOME": str(tmp / "home"), "RAY_TMPDIR": str(tmp),
    })
    steps = [
        ["ip", "link", "set", "lo", "up"],
        [ray_cli(), "start", "--head", "--port", str(PORT), "--temp-dir", str(tmp / "head"),
         "--include-dashboard=false", *NODE_ARGS],
        [ray_cli(), "start", "--address", f"127.0.0.1:{PORT}", "--temp-dir", str(tmp / "worker"), *NODE_ARGS],
    ]
    try:
        for argv in steps:
            r = run(argv)
            if r["rc"] != 0:
                print("FAILED " + json.dumps({"argv": argv, **r}), flush=True)
                return 1
        print(f"READY 127.0.0.1:{PORT}", flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            print(json.dumps(run(request["argv"], request.get("timeout", 180))), flush=True)
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
