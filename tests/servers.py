"""Real servers for tests: `vhw server run` in a child process on 127.0.0.1, TLS and all."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from vhw import crypto
from vhw import protocol as p
from vhw.bindings import DeviceSecrets
from vhw.client import Client, tls_context
from vhw.console import decisions
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.server.credentials import Credential
from vhw.server.home import ServerHome


def listening_url(line: str) -> str:
    """The URL a server's or broker's first line says it listens on: "... listening on URL" (or
    "... URL (2 processes: 11, 12)"), or with JSON logs a JSON line with its ``url``."""
    if line.lstrip().startswith("{"):
        return str(json.loads(line)["url"])
    return line.split("listening on", 1)[1].split()[0]


class RunningServer:
    def __init__(self, home: Path, proc: subprocess.Popen, url: str, log: Path):
        self.workers: list[int] = []  # pids, when started with --workers
        self.home = ServerHome(home)
        self.proc = proc
        self.url = url
        self.log = log
        self.said = ""

    @classmethod
    def start(
        cls,
        home: Path,
        *,
        init: list[str] = (),
        run: list[str] = (),
        env: dict | None = None,
        timeout: float = 30,
        listen: str | None = "127.0.0.1:0",
        top: list[str] = (),
    ) -> RunningServer:
        """``listen=None``: no --listen flag (the address comes from --config, VHW_SERVER_LISTEN or
        the home's config)."""
        env = {**os.environ, **(env or {})}
        if not (home / "config.json").exists():
            subprocess.run(
                [sys.executable, "-m", "vhw", "server", "init", "--home", str(home), *init],
                check=True,
                capture_output=True,
                env=env,
            )
        log = home / "server.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vhw",
                *top,
                "server",
                "run",
                "--home",
                str(home),
                *(["--listen", listen] if listen else []),
                *run,
            ],
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            env=env,
            text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if "listening on" in line:  # "... listening on URL" or "... URL (2 processes: 11, 12)"
                    server = cls(home, proc, listening_url(line), log)
                    if "processes:" in line:
                        server.workers = [int(x) for x in line.split("processes:")[1].strip(" )\n").split(", ")]
                    return server
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
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.said = self.proc.stdout.read()  # what it said on stdout after "listening" ("stopped")
            self.proc.stdout.close()
        return self.proc.returncode

    def credential(self, role: str) -> Path:
        return self.home.credentials.path(role)

    def role_client(self, role: str) -> Client:
        cred = Credential.load(self.credential(role))
        return Client(self.url, tls_context(ca_pem=cred.ca, client_cert=cred.client_cert), token=cred.token)

    def console_client(self) -> Client:
        return Client(self.url, tls_context(self.home.pki.ca_der()))

    @property
    def ca_der(self) -> bytes:
        return self.home.pki.ca_der()


def start_brokered(d: Path, *, staff: tuple[str, str] | None = None):
    """A server in broker mode with a broker before it (price 5.00, 70% to the platform), in
    folder ``d``; ``staff``: a staff account (name, password) for the broker's web console. Returns
    (server, broker process); the server has ``broker_url`` and ``broker_home``."""
    server = RunningServer.start(d / "server", init=["--mode", "broker"])
    run = [sys.executable, "-m", "vhw"]
    subprocess.run(
        [*run, "server", "issue-cert", "broker", "-o", str(d / "tls"), "--home", str(server.home.root)],
        check=True,
        capture_output=True,
    )
    home = d / "broker"
    subprocess.run(
        [
            *run,
            "broker",
            "init",
            "--home",
            str(home),
            "--credential",
            str(server.credential("broker")),
            "--tls",
            str(d / "tls"),
            "--server",
            server.url,
            "--price",
            "5.00",
            "--platform-share",
            "70",
        ],
        check=True,
        capture_output=True,
    )
    if staff:
        subprocess.run(
            [*run, "broker", "staff", "add", staff[0], "--password", staff[1], "--home", str(home)],
            check=True,
            capture_output=True,
        )
    proc = subprocess.Popen(
        [*run, "broker", "run", "--home", str(home), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=open(d / "broker.log", "wb"),
        text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        server.stop()
        raise RuntimeError(f"broker did not start: {(d / 'broker.log').read_text()[-2000:]}")
    server.broker_url = listening_url(line)
    server.broker_home = home
    server.broker_log = d / "broker.log"
    return server, proc


def stop_brokered(server: RunningServer, proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(15)
    server.stop()


def factory(cli, srv, folder: Path, *, register_card: bool = True, hdd_size: str = "256M") -> dict[str, Path]:
    """A console (ROM + HDD, set up in folder/console) and a card, made by the manufacturer."""
    folder.mkdir(parents=True, exist_ok=True)
    cred = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    paths = {
        k: folder / n
        for k, n in (("rom", "console.rom"), ("hdd", "console.hdd"), ("card", "card.card"), ("console", "console"))
    }
    assert cli("console", "rom", paths["rom"], *cred).code == 0
    assert cli("hdd", "format", paths["hdd"], "--size", hdd_size, *cred).code == 0
    assert cli("card", "format", paths["card"], *(cred if register_card else [])).code == 0
    assert cli("console", "setup", paths["console"], "--rom", paths["rom"], "--hdd", paths["hdd"]).code == 0
    assert cli("console", "insert-card", paths["card"], "--console", paths["console"]).code == 0
    return paths


def publish(cli, srv, src: Path, folder: Path, title_id: str, count: int = 1) -> list[Path]:
    pub = ["--credential", srv.credential("publisher"), "--server", srv.url]
    assert cli("disc", "master", src, "-o", folder / f"{title_id}.master", "--title-id", title_id, *pub).code == 0
    r = cli("disc", "press", folder / f"{title_id}.master", "--count", count, "-o", folder / "discs", *pub)
    assert r.code == 0, r
    return sorted((folder / "discs").glob(f"{title_id}-*.disc"))


def make_users(srv, n: int) -> list[tuple[decisions.CardView, decisions.Hardware]]:
    """``n`` registered users, each as (card view, hardware): ready for ``acquisition_request``."""
    kits = []
    with srv.role_client("manufacturer") as m, srv.console_client() as c:
        for _ in range(n):
            card = Card(Id.random(IdKind.CARD), crypto.random_key(), 1)
            devices = DeviceSecrets(
                Id.random(IdKind.CLIENT), Id.random(IdKind.HDD), crypto.device_secret(), crypto.device_secret()
            )
            public = devices.public()
            m.call("/v1/manufacturer/cards", p.RegisterCard(card.mc_id, card.mc_key), p.Done)
            m.call("/v1/manufacturer/consoles", p.RegisterConsole(devices.client_id, public.console), p.Done)
            m.call("/v1/manufacturer/hdds", p.RegisterHdd(devices.hdd_id, public.hdd), p.Done)
            resp = c.call(
                "/v1/console/register",
                decisions.registration_request(card, devices.client_id, devices.hdd_id),
                p.RegisterResponse,
            )
            card, _ = decisions.accept_registration(card, resp)
            kits.append((decisions.CardView.open(card), decisions.Hardware(devices, srv.home.pki.signing_der())))
    return kits


def press(srv, title_id: str, n: int) -> list[decisions.Medium]:
    """A title registered by the publisher, and ``n`` discs of it (without image files: each its
    MID, the title digest and its own secret, as an acquisition proves them)."""
    from tests.world import new_disc, pressed

    digest = os.urandom(32)
    discs = [new_disc(digest) for _ in range(n)]
    with srv.role_client("publisher") as pub:
        pub.call("/v1/publisher/titles", p.RegisterTitle(title_id, title_id, crypto.random_key(), digest), p.Done)
        for i in range(0, n, 400):  # (a request body is at most 64 KiB)
            pub.call(
                "/v1/publisher/media", p.RegisterMedia(title_id, tuple(pressed(d) for d in discs[i : i + 400])), p.Done
            )
    return discs


def make_disc(srv, title_id: str) -> decisions.Medium:
    return press(srv, title_id, 1)[0]


def hardware_of(rom_path: Path, hdd_path: Path, *, epochs: bool = True) -> decisions.Hardware:
    """A console made of these ROM and HDD files, as its CPU sees it."""
    from vhw.devices import rom as rom_dev
    from vhw.devices.hdd import HddImage

    rom = rom_dev.load(rom_path)
    with HddImage.open(hdd_path) as img:
        return decisions.Hardware(
            DeviceSecrets(rom.client_id, img.hdd_id, rom.secret, img.secret),
            rom.token_anchor,
            img.volume.catalog.epochs() if epochs else {},
        )


def match_of(dev: dict, card_path: Path | None = None) -> decisions.Match:
    """What the console of ``dev`` (its ROM and HDD) opens with the card: its keys and binding."""
    from vhw.devices import card as card_dev

    view = decisions.CardView.open(card_dev.load(card_path or dev["card"]))
    return decisions.reproduction_key(view, hardware_of(dev["rom"], dev["hdd"]))


def cluster_tool():
    """tools/vhw_cluster.py as a module (tools/ is no package), loaded once for every test that uses it."""
    if "vhw_cluster" not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "tools" / "vhw_cluster.py"
        spec = importlib.util.spec_from_file_location("vhw_cluster", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["vhw_cluster"] = module  # (before running it: its dataclasses look themselves up)
        spec.loader.exec_module(module)
    return sys.modules["vhw_cluster"]
