"""Titles run sandboxed, and play runs only the title: a hostile title tries every escape.

A rogue publisher's title is installed and played through the CLI like any other. It is handed
(as arguments) everything an attacker who knows the layout would aim at: the console folder and
its console.json, the ROM, the card, the HDD, another title in the same mount, the licensing
server's address, a file beside the console, the mount process's PID. It reports, as JSON, what
each try got; every one must fail. Then the HDD catalog is edited (as a second user of a shared
HDD can) to point the title's entry outside the title, and play refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from vhw.console import sandbox
from vhw.console.machine import Machine
from vhw.devices.hdd import HddImage

from .conftest import make_title
from .servers import RunningServer, factory, publish

HOSTILE = r"""
import json, os, signal, socket, sys
a = json.loads(sys.argv[1])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "GOT IN"
    except Exception as exc:
        out[name] = type(exc).__name__
def read(path):
    with open(path, "rb") as f:
        f.read(1)
for key in ("console_json", "rom", "card", "hdd", "console_dir_file", "other_title_file"):
    attempt("read " + key, lambda p=a[key]: read(p))
attempt("list console folder", lambda: os.listdir(a["console_dir"]))
attempt("read other title via ..", lambda: read("/title/../" + a["other_title_rel"]))
attempt("list the mount", lambda: os.listdir(os.path.dirname(a["other_title_dir"])))
def connect():
    s = socket.create_connection((a["host"], a["port"]), timeout=2)
    s.close()
attempt("connect to the server", connect)
def outside():
    with open(a["outside"], "w") as f:
        f.write("escaped")
attempt("write beside the console", outside)
def in_title():
    with open("/title/planted.py", "w") as f:
        f.write("x")
attempt("write into the title", in_title)
def root():
    with open("/planted", "w") as f:
        f.write("x")
attempt("write to the root", root)
attempt("signal the mount", lambda: os.kill(a["mount_pid"], signal.SIGTERM if a["sandboxed"] else 0))
attempt("read the mount's memory", lambda: read(f"/proc/{a['mount_pid']}/mem"))
attempt("read /dev of the host", lambda: read(a["block_device"]) if a["block_device"] else read("/dev/nonexistent"))
out["env"] = sorted(os.environ)
out["uid"] = os.getuid()
out["pid"] = os.getpid()
def saves():
    with open(os.path.join(os.environ["VHW_SAVE_DIR"], "hostile.sav"), "w") as f:
        f.write("a save is fine")
attempt("write a save", saves)
print("REPORT " + json.dumps(out))
"""


PROBE = r"""
import ctypes, errno, json, os, socket, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.json")) as f:
    a = json.load(f)  # (not on its command line: it would show there)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
def call(name, nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in args])
    out[name] = "GOT IN" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
if a["what"] == "host":
    found = []
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            found += [f"{pid}/{part}: {m}" for m in a["markers"] if m.encode() in data]
    out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    out["found"] = found
elif a["what"] == "calls":
    attr = (ctypes.c_uint32 * 32)(1, 128, 0)  # perf_event_attr: PERF_TYPE_SOFTWARE, size 128, CPU clock
    attr[10] = 0b1100000  # exclude_kernel, exclude_hv
    call("perf_event_open", 298, ctypes.addressof(attr), 0, -1, -1, 0)
    call("keyctl", 250, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
    call("io_uring_setup", 425, 1, ctypes.addressof((ctypes.c_uint32 * 30)()))
    call("personality ADDR_NO_RANDOMIZE", 135, 0x0040000)
    call("userfaultfd", 323, 0)
    call("bpf", 321, 0, ctypes.addressof((ctypes.c_uint32 * 32)(2, 4, 4, 1)), 128)  # a one-entry array map
    call("ptrace", 101, 0, 0, 0, 0)  # PTRACE_TRACEME
    call("mount", 165, 0, 0, 0, 0, 0)
    call("unshare", 272, 0x00020000)  # CLONE_NEWNS
    call("init_module", 175, 0, 0, 0)
elif a["what"] == "userns":
    call("unshare CLONE_NEWUSER", 272, 0x10000000)
    out["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    def abstract():
        s = socket.socket(socket.AF_UNIX)
        s.connect("\0" + a["abstract"])
        s.close()
    try:
        abstract()
        out["abstract socket of the host"] = "GOT IN"
    except OSError as exc:
        out["abstract socket of the host"] = type(exc).__name__
print("REPORT " + json.dumps(out))
"""


def probe(capfd, tmp_path: Path, what: str, *, sandboxed: bool, seccomp: bool = True, **extra) -> dict:
    """PROBE's report, run in the sandbox a title gets (``seccomp=False``: the same sandbox without
    the filter), or outside it (the control, in this process's environment)."""
    title = tmp_path / f"probe-{what}"
    title.mkdir(exist_ok=True)
    (title / "probe.py").write_text(PROBE)
    (title / "probe.json").write_text(json.dumps({"what": what, **extra}))
    box = sandbox.command(title_dir=title, entry="probe.py", args=[], saves=None, title_id="PROBE-1", kind="game")
    capfd.readouterr()
    if not sandboxed:
        code = subprocess.call([sys.executable, str(title / "probe.py")])
    elif seccomp:
        code = sandbox.run(box, bwrap_path=sandbox.bwrap())  # as `play` runs a title
    else:
        code = subprocess.call([sandbox.bwrap(), *box.args], env=box.env)
    out, err = capfd.readouterr()
    assert code == 0 and "REPORT " in out, err
    return json.loads(out.split("REPORT ", 1)[1])


def test_nothing_of_the_host_shows_in_any_process_of_the_sandbox(capfd, tmp_path, monkeypatch):
    """Every process a title can see (bubblewrap itself is PID 1 there): its environment and command
    line hold none of the user's variables and none of the host's paths. The control: the same code
    outside finds them at once."""
    secret = "vhw-test-" + os.urandom(8).hex()
    monkeypatch.setenv("VHW_TEST_TOKEN", secret)
    # the token, the user's HOME variable (its value may be a prefix of the interpreter's path,
    # which the title's own command line names), and the host's paths of the title and the test
    markers = [secret, f"HOME={os.environ.get('HOME', '/root')}", str(tmp_path)]
    inside = probe(capfd, tmp_path, "host", sandboxed=True, markers=markers)
    assert 1 in inside["pids"] and len(inside["pids"]) >= 2  # bubblewrap (1) and the title
    assert inside["found"] == []
    outside = probe(capfd, tmp_path, "host", sandboxed=False, markers=markers)
    assert any(secret in f for f in outside["found"]) and any(str(tmp_path) in f for f in outside["found"])


def test_the_seccomp_filter_refuses_what_a_title_never_needs(capfd, tmp_path):
    """Each call the filter refuses is EPERM in the sandbox; the control: in the same sandbox without
    the filter, those an unprivileged process may make succeed (the others fail there for want of
    capabilities: the filter is a second wall)."""
    inside = probe(capfd, tmp_path, "calls", sandboxed=True)
    assert inside == dict.fromkeys(inside, "EPERM") and len(inside) == 10
    without = probe(capfd, tmp_path, "calls", sandboxed=True, seccomp=False)
    for name in ("perf_event_open", "keyctl", "io_uring_setup", "personality ADDR_NO_RANDOMIZE", "ptrace"):
        assert without[name] == "GOT IN", (name, without)
    assert all(without[name] != "GOT IN" for name in ("mount", "unshare", "init_module"))


def test_no_user_namespace_and_no_network_but_its_own_loopback(capfd, tmp_path):
    """A title makes no user namespace and sees only a loopback of its own: an abstract socket the
    host listens on (per network namespace) is out of reach. The control: outside, both work."""
    name = "vhw-test-" + os.urandom(6).hex()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind("\0" + name)
    listener.listen()
    try:
        for seccomp in (True, False):  # (--disable-userns holds without the filter too)
            inside = probe(capfd, tmp_path, "userns", sandboxed=True, seccomp=seccomp, abstract=name)
            assert inside["unshare CLONE_NEWUSER"] != "GOT IN"
            assert inside["interfaces"] == ["lo"]
            assert inside["abstract socket of the host"] != "GOT IN"
        outside = probe(capfd, tmp_path, "userns", sandboxed=False, abstract=name)
        assert outside["unshare CLONE_NEWUSER"] == "GOT IN"
        assert outside["abstract socket of the host"] == "GOT IN"
        assert len(outside["interfaces"]) > 1
    finally:
        listener.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("sandbox") / "home")
    yield server
    server.stop()


_made = iter(range(1, 1000))


@pytest.fixture
def hostile(cli, srv, tmp_path):
    n = next(_made)
    src = tmp_path / "hostile-src"
    src.mkdir()
    (src / "main.py").write_text(HOSTILE)
    (src / "vhw-title.json").write_text(json.dumps({"name": "Hostile", "kind": "game", "entry": "main.py"}))
    [disc] = publish(cli, srv, src, tmp_path, f"HOSTILE-{n}")
    [other] = publish(cli, srv, make_title(tmp_path / "other-src", seed=9), tmp_path, f"OTHER-{n}")
    dev = factory(cli, srv, tmp_path / "victim")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    for d in (disc, other):
        assert cli("console", "insert-disc", d, *con).code == 0
        assert cli("console", "install", *con).code == 0
        assert cli("console", "eject-disc", *con).code == 0
    return {**dev, "title": f"HOSTILE-{n}", "other": f"OTHER-{n}"}


def readable(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def test_a_hostile_title_escapes_nothing(hostile, srv, tmp_path):
    dev = hostile
    m = Machine(dev["console"])
    where = tmp_path / "mnt"
    where.mkdir()
    mount_pid = m.mount(where)
    try:
        other_dir = where / dev["other"]
        other_file = next(p for p in other_dir.rglob("*") if p.is_file())
        url = urlparse(srv.url)
        block = next((f"/dev/{d}" for d in ("vda", "sda", "nvme0n1", "xvda") if Path(f"/dev/{d}").exists()), "")
        outside = tmp_path / "escaped.txt"
        args = {
            "console_dir": str(dev["console"]),
            "console_json": str(Path(dev["console"]) / "console.json"),
            "console_dir_file": str(Path(dev["console"]) / "mount.log"),
            "rom": str(dev["rom"]),
            "card": str(dev["card"]),
            "hdd": str(dev["hdd"]),
            "other_title_dir": str(other_dir),
            "other_title_file": str(other_file),
            "other_title_rel": f"{dev['other']}/{other_file.relative_to(other_dir)}",
            "host": url.hostname,
            "port": url.port,
            "outside": str(outside),
            "mount_pid": mount_pid,
            "block_device": block,
        }
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "vhw",
                "console",
                "play",
                "--console",
                str(dev["console"]),
                dev["title"],
                json.dumps({**args, "sandboxed": True}),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.split("REPORT ", 1)[1])
        assert not outside.exists()
        # the control: the same code, run by the user outside any sandbox, gets each of the host's
        # files, the server, the mount process and the block device (as root here)
        (tmp_path / "hostile.py").write_text(HOSTILE)
        control = subprocess.run(
            [sys.executable, str(tmp_path / "hostile.py"), json.dumps({**args, "sandboxed": False})],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "VHW_SAVE_DIR": str(tmp_path)},
        )
        escaped = json.loads(control.stdout.split("REPORT ", 1)[1])
        host_tries = [
            "read " + k for k in ("console_json", "rom", "card", "hdd", "console_dir_file", "other_title_file")
        ]
        host_tries += ["list console folder", "connect to the server", "write beside the console", "signal the mount"]
        host_tries += ["read /dev of the host"] if block and readable(block) else []
        assert {k: escaped[k] for k in host_tries} == dict.fromkeys(host_tries, "GOT IN")
        outside.unlink()
        tries = {k: v for k, v in report.items() if k not in ("env", "uid", "pid", "write a save")}
        assert len(tries) == 16
        assert all(v != "GOT IN" for v in tries.values()), tries
        assert report["write a save"] == "GOT IN"  # its own save folder works
        assert set(report["env"]) <= {
            "PATH",
            "PWD",
            "HOME",
            "LANG",
            "PYTHONDONTWRITEBYTECODE",
            "VHW_TITLE_ID",
            "VHW_TITLE_KIND",
            "VHW_SAVE_DIR",
            "VHW_SAVE_ON",
        }
        assert report["uid"] != 0 and report["pid"] < 10  # its own user and PID namespaces
        assert os.path.ismount(where)  # the mount it tried to signal is still serving
        assert not (where / dev["title"] / "planted.py").exists()
    finally:
        m.unmount(where)
    # the files it aimed at are the owner's alone on the host too
    for path in (dev["rom"], dev["card"], dev["hdd"], Path(dev["console"]) / "console.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(Path(dev["console"]).stat().st_mode) == 0o700


def test_a_catalog_entry_pointing_outside_the_title_is_refused(hostile, cli, tmp_path):
    """A second user of a shared HDD rewrites the catalog (its checksum is no secret): the entry
    of the title names a program elsewhere, then another file of the title. Play refuses both
    before it runs anything."""
    from dataclasses import replace

    dev = hostile
    name = dev["title"]
    evil = tmp_path / "evil.py"
    marker = tmp_path / "ran.txt"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for entry in (f"../../../../../../..{evil}", str(evil), f"../{dev['other']}/x.py", "vhw-title.json"):
        with HddImage.open(dev["hdd"], write=True) as img:
            vol = img.volume
            title = vol.catalog.title(name)
            cat = replace(
                vol.catalog,
                titles=tuple(replace(t, entry=entry) if t.title_id == name else t for t in vol.catalog.titles),
            )
            ops, new = vol.commit(cat)
            img.apply(ops, new)
        r = cli("console", "play", "--console", dev["console"], name)
        assert r.code == 3 and f"catalog entry of {name} was modified" in r.err, (entry, r)
        assert not marker.exists()
        with HddImage.open(dev["hdd"], write=True) as img:  # put it back
            vol = img.volume
            cat = replace(vol.catalog, titles=tuple(title if t.title_id == name else t for t in vol.catalog.titles))
            ops, new = vol.commit(cat)
            img.apply(ops, new)
    # even the entry tag recomputed with everything the HDD's holder knows does not help: the tag
    # needs the title key (card + console + HDD); a forged tag of zeros is refused the same way
    with HddImage.open(dev["hdd"], write=True) as img:
        vol = img.volume
        cat = replace(
            vol.catalog,
            titles=tuple(
                replace(t, entry_tag=hashlib.sha256(b"x").digest()) if t.title_id == name else t
                for t in vol.catalog.titles
            ),
        )
        ops, new = vol.commit(cat)
        img.apply(ops, new)
    r = cli("console", "play", "--console", dev["console"], name)
    assert r.code == 3 and "was modified" in r.err


def test_a_read_error_of_the_entry_fails_the_play(hostile, cli, tmp_path):
    """A block of the entry that fails authentication: play says so and exits non-zero."""
    dev = hostile
    with HddImage.open(dev["hdd"]) as img:
        f = img.volume.catalog.title(dev["title"]).files[0]
        where = f.extents[0].offset + 100
    with open(dev["hdd"], "r+b") as fh:
        fh.seek(where)
        byte = fh.read(1)
        fh.seek(where)
        fh.write(bytes([byte[0] ^ 0x40]))
    r = cli("console", "play", "--console", dev["console"], dev["title"], "{}")
    assert r.code != 0
    assert "failed authentication" in r.err and dev["title"] in r.err, r
