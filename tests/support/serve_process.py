"""fusion-serve in a subprocess on a free port, for tests that talk to it with real HTTP clients."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")


class ServeProcess:
    """`python -m textclassify.serve.cli ARGS --port 0`; stderr goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "textclassify.serve.cli", *args, "--port", "0"]
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_port = ""

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        """Start and wait for the 'listening on' line (every bundle loaded and warmed up by then)."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.host_port = f"{match.group(1)}:{match.group(2)}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"fusion-serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fusion-serve did not start within {timeout_s} s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
