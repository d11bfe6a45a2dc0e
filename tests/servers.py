"""Real servers for tests: `vhw server run` in a child process on 127.0.0.1, TLS and all."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from vhw.client import Client, tls_context
from vhw.serverhome import Credential, ServerHome


class RunningServer:
    def __init__(self, home: Path, proc: subprocess.Popen, url: str, log: Path):
        self.home = ServerHome(home)
        self.proc = proc
        self.url = url
        self.log = log

    @classmethod
    def start(cls, home: Path, *, init: list[str] = (), run: list[str] = (), env: dict | None = None,
              timeout: float = 30) -> RunningServer:
        env = {**os.environ, **(env or {})}
        if not (home / "config.json").exists():
            subprocess.run([sys.executable, "-m", "vhw", "server", "init", "--home", str(home), *init],
                           check=True, capture_output=True, env=env)
        log = home / "server.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhw", "server", "run", "--home", str(home), "--listen", "127.0.0.1:0", *run],
            stdout=subprocess.PIPE, stderr=open(log, "ab"), env=env, text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if "listening on" in line:
                    return cls(home, proc, line.split("listening on", 1)[1].strip(), log)
            if proc.poll() is not None:
                break
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def credential(self, role: str) -> Path:
        return self.home.credential_path(role)

    def role_client(self, role: str) -> Client:
        cred = Credential.load(self.credential(role))
        return Client(self.url, tls_context(ca_pem=cred.ca), token=cred.token)

    def console_client(self) -> Client:
        return Client(self.url, tls_context(self.home.ca_der()))

    @property
    def ca_der(self) -> bytes:
        return self.home.ca_der()
