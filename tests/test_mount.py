"""Reproduction (S31-S35) through real FUSE mounts of real HDD images, with a real server."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhw import datapath
from vhw.cli import run
from vhw.console.machine import Machine
from vhw.console.mountpoints import DEAD_MOUNT, mount_fields
from vhw.devices.hdd import HddImage
from vhw.samples import TITLES, build_samples

from .conftest import PLAY, Result, source_files, vhw_subprocess
from .servers import RunningServer, factory, publish


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server, three sample titles pressed, Alice's console with all three installed."""
    d = tmp_path_factory.mktemp("mountworld")
    srv = RunningServer.start(d / "server")
    saved_home = os.environ.get("VHW_HOME")
    os.environ["VHW_HOME"] = str(d / "home")

    def cli(*args):  # like the `cli` fixture, usable from a module-scoped fixture
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
        return Result(code, out.getvalue(), err.getvalue())

    sources = build_samples(d / "src")
    with open(sources["movie"] / "reel.bin", "wb") as f:  # a large file: reads cross many chunks
        for i in range(64):
            f.write(hashlib.sha256(b"reel %d" % i).digest() * (1024 * 1024 // 32))
    discs = {kind: publish(cli, srv, src, d, TITLES[kind], count=2) for kind, src in sources.items()}
    alice = factory(cli, srv, d / "alice")
    con = ["--console", alice["console"]]
    assert cli("console", "register", *con).code == 0
    for kind in ("game", "music", "movie"):
        assert cli("console", "insert-disc", discs[kind][0], *con).code == 0
        assert cli("console", "install", *con).code == 0, kind
        assert cli("console", "eject-disc", *con).code == 0
    bob = factory(cli, srv, d / "bob")
    assert cli("console", "register", "--console", bob["console"]).code == 0
    yield {"dir": d, "srv": srv, "sources": sources, "discs": discs, "alice": alice, "bob": bob, "cli": cli}
    srv.stop()
    if saved_home is None:
        os.environ.pop("VHW_HOME", None)
    else:
        os.environ["VHW_HOME"] = saved_home


@pytest.fixture
def mounted(world, tmp_path):
    m = Machine(world["alice"]["console"])
    where = tmp_path / "mnt"
    where.mkdir()
    m.mount(where)
    yield where
    if os.path.ismount(where):
        m.unmount(where)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_file_of_every_title_reads_back(world, mounted):
    for kind, src in world["sources"].items():
        title_dir = mounted / TITLES[kind]
        expected = source_files(src)
        got = {p.relative_to(title_dir).as_posix(): p for p in title_dir.rglob("*") if p.is_file()}
        assert sorted(got) == sorted(expected)
        for rel, path in got.items():
            assert hashlib.sha256(expected[rel]).hexdigest() == sha(path), rel
            assert path.stat().st_size == len(expected[rel])
    assert sorted(os.listdir(mounted)) == sorted(TITLES.values())


def test_random_range_reads_through_the_mount(world, mounted):
    film = mounted / TITLES["movie"] / "reel.bin"
    source = (world["sources"]["movie"] / "reel.bin").read_bytes()
    fd = os.open(film, os.O_RDONLY)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.integers(0, len(source) + 100), st.integers(0, 300_000))
    def check(offset, length):
        assert os.pread(fd, length, offset) == source[offset : offset + length]

    try:
        check()
    finally:
        os.close(fd)


def test_concurrent_random_misses_read_right(world, mounted):
    """Eight readers at once, each at random 4 KiB offsets, the kernel's cache of the file dropped
    every 50 reads: misses of several readers in flight at once, two of them often in one chunk;
    every byte must still be the file's own."""
    film = mounted / TITLES["movie"] / "reel.bin"
    source = (world["sources"]["movie"] / "reel.bin").read_bytes()
    rng = random.Random(7)
    plan = [[rng.randrange(0, len(source) - 4096) for _ in range(200)] for _ in range(8)]
    wrong: list[int] = []

    def reader(offsets: list[int]) -> None:
        fd = os.open(film, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for k, off in enumerate(offsets):
                if k % 50 == 0:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # misses again
                if os.pread(fd, 4096, off) != source[off : off + 4096]:
                    wrong.append(off)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(p,)) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_the_mount_is_read_only(mounted):
    game = mounted / TITLES["game"] / "cave.py"
    with pytest.raises(OSError) as err:
        open(game, "r+b")
    assert err.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mounted / TITLES["game"] / "new").write_text("x")


def test_the_mount_keeps_its_keys_in_locked_memory_and_nowhere_else(world, mounted):
    """The compiled file system holds the titles' keys in memory locked against swapping; the mount
    process got them from no command line, environment or file."""
    pid = Machine(world["alice"]["console"]).mounts.load()[str(mounted)]
    status = Path(f"/proc/{pid}/status").read_text()
    locked_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmLck:")))
    assert locked_kib >= 4 or datapath.sanitized()  # (AddressSanitizer's build ignores mlock, and says so)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    console = str(world["alice"]["console"]).encode()
    assert cmdline[1:] == [b"-m", b"vhw", b"console", b"mount", str(mounted).encode(), b"--foreground"] + [
        b"--slot",
        b"1",
        b"--console",
        console,
    ]  # (paths and flags only)
    assert not any(name.startswith(b"VHW_KEY") for name in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))


def test_play_the_game_in_scripted_mode(world):
    alice = world["alice"]
    con = ["--console", alice["console"]]
    r = vhw_subprocess("console", "play", *con, TITLES["game"], "--moves", "dddssdddwwddssss")
    assert r.code == 0, r.err
    assert "You pick up a rusty key." in r.out and "You escaped the cave in 16 moves!" in r.out
    assert "result: won after 16 moves" in r.out
    r = vhw_subprocess("console", "play", *con, TITLES["game"], "--moves", "ssss")
    assert r.code == 18 and "result: unfinished" in r.out  # the title ended on its own, unfinished
    assert "ended with status 1" in r.err and r.err.count("\n") == 1
    assert not Machine(alice["console"]).active_mount()  # play unmounted what it mounted


def test_the_album_and_the_movie_play_as_committed(world):
    """The committed samples are real media: the album's player decodes every track, the movie's
    every frame, inside the sandbox, through the mount."""
    con = ["--console", world["alice"]["console"]]
    r = vhw_subprocess("console", "play", *con, TITLES["music"])
    assert r.code == 0, r.err
    tracks = sorted(p.stem for p in (world["sources"]["music"] / "tracks").glob("*.wav"))
    assert len(tracks) >= 3 and f"{len(tracks)} tracks" in r.out and "end of album" in r.out
    assert all(f": {name}  " in r.out and "11025 Hz" in r.out for name in tracks)
    r = vhw_subprocess("console", "play", *con, TITLES["movie"])
    assert r.code == 0, r.err
    assert "film.y4m: 128x72 at 12 fps" in r.out and "played film.y4m: 60 frames, 5.0 s" in r.out
    assert r.out.count("@") + r.out.count("#") > 20  # the pictures have something in them


def test_play_reuses_a_running_mount(world, mounted):
    r = world["cli"]("console", "play", "--console", world["alice"]["console"], TITLES["music"])
    assert r.code == 0 and os.path.ismount(mounted)


def expect_refused(cli, console: Path, where: Path) -> None:
    """Neither a mount nor play gives a byte: the patent's message, exit 14, nothing mounted."""
    r = cli("console", "mount", where, "--console", console)
    assert r.code == 14 and r.err.startswith(PLAY)  # (a card without keys for it gets a hint line)
    assert not os.path.ismount(where) and os.listdir(where) == []
    r = cli("console", "play", "--console", console, TITLES["game"])
    assert r.code == 14 and r.err.startswith(PLAY)


def test_refusals(world, tmp_path):
    cli, alice, bob = world["cli"], world["alice"], world["bob"]
    where = tmp_path / "mnt"
    where.mkdir()
    # no card
    assert cli("console", "eject-card", "--console", alice["console"]).code == 0
    try:
        expect_refused(cli, alice["console"], where)
        # another user's card in this console
        assert cli("console", "eject-card", "--console", bob["console"]).code == 0
        assert cli("console", "insert-card", bob["card"], "--console", alice["console"]).code == 0
        expect_refused(cli, alice["console"], where)
        assert cli("console", "eject-card", "--console", alice["console"]).code == 0
        # Alice's card lent to Bob's console
        assert cli("console", "insert-card", alice["card"], "--console", bob["console"]).code == 0
        expect_refused(cli, bob["console"], where)
        # Alice's card and HDD lent together to Bob's console
        lent = tmp_path / "bob-with-alices-hdd"
        assert cli("console", "setup", lent, "--rom", bob["rom"], "--hdd", alice["hdd"]).code == 0
        assert cli("console", "eject-card", "--console", bob["console"]).code == 0
        assert cli("console", "insert-card", alice["card"], "--console", lent).code == 0
        expect_refused(cli, lent, where)
        assert cli("console", "eject-card", "--console", lent).code == 0
    finally:
        cli("console", "eject-card", "--console", bob["console"])
        assert cli("console", "insert-card", bob["card"], "--console", bob["console"]).code == 0
        assert cli("console", "insert-card", alice["card"], "--console", alice["console"]).code == 0


def test_another_cards_titles_on_a_shared_hdd_are_listed_not_readable(world, tmp_path):
    """Carol shares Alice's console and HDD with her own card: each reads only their own titles."""
    cli, srv, alice = world["cli"], world["srv"], world["alice"]
    carol = factory(cli, srv, tmp_path / "carol")
    shared = tmp_path / "shared"
    assert cli("console", "setup", shared, "--rom", alice["rom"], "--hdd", alice["hdd"]).code == 0
    assert cli("console", "insert-card", carol["card"], "--console", shared).code == 0
    assert cli("console", "register", "--console", shared).code == 0
    src = world["sources"]["game"]
    [disc] = publish(cli, srv, src, tmp_path, "CAROL-1")
    assert cli("console", "insert-disc", disc, "--console", shared).code == 0
    assert cli("console", "install", "--console", shared).code == 0
    where = tmp_path / "mnt"
    where.mkdir()
    m = Machine(shared)
    m.mount(where)
    try:
        assert sorted(os.listdir(where)) == sorted([*TITLES.values(), "CAROL-1"])
        assert (where / "CAROL-1" / "cave.py").read_bytes() == (src / "cave.py").read_bytes()
        for title, entry in zip(TITLES.values(), ("cave.py", "player.py", "play.py"), strict=True):
            with pytest.raises(PermissionError):
                os.listdir(where / title)
            with pytest.raises(PermissionError):
                open(where / title / entry, "rb")
    finally:
        m.unmount(where)
    with HddImage.open(alice["hdd"], write=True) as img:  # leave Alice's HDD as the others expect
        ops, vol = img.volume.remove("CAROL-1")
        img.apply(ops, vol)


def test_a_damaged_block_gives_eio_for_that_read_only(world, tmp_path):
    cli, alice = world["cli"], world["alice"]
    damaged = tmp_path / "damaged.hdd"
    subprocess.run(["cp", "--sparse=always", alice["hdd"], damaged], check=True)
    with HddImage.open(damaged) as img:
        [film] = [f for f in img.volume.catalog.title(TITLES["movie"]).files if f.path == "reel.bin"]
        assert film.block_size == 4096
        where = film.locate(film.layout.sealed_offset(1600)) + 1000  # a byte of block 1600
    with open(damaged, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x40]))
    con = tmp_path / "console"
    assert cli("console", "setup", con, "--rom", alice["rom"], "--hdd", damaged).code == 0
    assert cli("console", "eject-card", "--console", alice["console"]).code == 0
    try:
        assert cli("console", "insert-card", alice["card"], "--console", con).code == 0
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        m = Machine(con)
        m.mount(mnt)
        try:
            source = (world["sources"]["movie"] / "reel.bin").read_bytes()
            fd = os.open(mnt / TITLES["movie"] / "reel.bin", os.O_RDONLY)
            try:
                block = 4096
                with pytest.raises(OSError) as err:
                    os.pread(fd, 4096, 1600 * block + 10)
                assert err.value.errno == errno.EIO
                for neighbour in (1599, 1601):  # the blocks on either side read (and decrypt) as they are
                    at = neighbour * block
                    assert os.pread(fd, 4096, at) == source[at : at + 4096]
            finally:
                os.close(fd)
            assert (mnt / TITLES["game"] / "cave.py").read_bytes() == (
                world["sources"]["game"] / "cave.py"
            ).read_bytes()
            assert os.path.ismount(mnt)
        finally:
            m.unmount(mnt)
        log = (con / "mount.log").read_text()
        assert f"title {TITLES['movie']}, file reel.bin: block 1600 failed authentication" in log
    finally:
        cli("console", "eject-card", "--console", con)
        assert cli("console", "insert-card", alice["card"], "--console", alice["console"]).code == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_unmount_cleanly(world, tmp_path, sig):
    where = tmp_path / "mnt"
    where.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vhw",
            "console",
            "mount",
            str(where),
            "--foreground",
            "--console",
            str(world["alice"]["console"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("mounted")
    assert os.path.ismount(where)
    proc.send_signal(sig)
    assert proc.wait(15) == 0
    assert not os.path.ismount(where)


def test_a_killed_mount_leaves_nothing_that_blocks_the_next(world, tmp_path):
    m = Machine(world["alice"]["console"])
    where = tmp_path / "mnt"
    where.mkdir()
    pid = m.mount(where)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.statvfs(where)  # (never answered from the kernel's cache, unlike a stat)
        except OSError as exc:
            assert exc.errno in DEAD_MOUNT
            break
        assert time.monotonic() < deadline, "the mount did not die"
        time.sleep(0.05)
    m.mount(where)  # the stale mount is lifted, the HDD lock died with its process
    try:
        assert (where / TITLES["game"] / "cave.py").exists()
    finally:
        m.unmount(where)
    with HddImage.open(world["alice"]["hdd"], write=True):  # and nobody holds the HDD any more
        pass


def test_a_second_console_folder_using_the_same_hdd_is_refused_at_once(world, mounted, tmp_path, cli):
    """Alice's console has her HDD mounted; another console folder set up with the same ROM, HDD
    and card is refused at once, naming Alice's console folder and what holds the HDD there."""
    alice = world["alice"]
    second = tmp_path / "second"
    assert cli("console", "setup", second, "--rom", alice["rom"], "--hdd", alice["hdd"]).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", second).code == 0
    (tmp_path / "mnt2").mkdir()
    for command in (
        ["console", "mount", tmp_path / "mnt2", "--console", second],
        ["console", "play", "--console", second, TITLES["game"]],
        ["hdd", "rm", TITLES["music"], "--yes", "--console", second],
    ):
        start = time.monotonic()
        r = cli(*command)
        assert time.monotonic() - start < 1.0
        assert r.code == 7, (command, r)
        assert f"in use by the console in {Path(alice['console']).resolve()}" in r.err, r
        assert "vhw console mount, PID " in r.err, r
    assert not in_mount_table(tmp_path / "mnt2")


def test_a_wait_for_a_lock_names_who_holds_it_and_a_killed_parent_leaves_no_mount(world, tmp_path):
    """The HDD is held by another process (here, this test: an install elsewhere would): `console
    mount` says at once what it waits for and who holds it; killed while it waits, it leaves no
    mount process behind (the mount dies with it until it has mounted)."""
    where = tmp_path / "mnt"
    where.mkdir()
    with HddImage.open(world["alice"]["hdd"], write=True):
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhw", "console", "mount", str(where), "--console", str(world["alice"]["console"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stderr.readline()  # (after two interpreters start: the parent and the mount)
            assert "HDD image is in use by another vhw process" in line and f"PID {os.getpid()}" in line, line
            assert "waiting for it" in line
            children = psutil.Process(proc.pid).children()
            assert len(children) == 1
            proc.kill()  # the parent, hard: no chance to clean up
            proc.wait()
            wait_until(lambda: not psutil.pid_exists(children[0].pid) or children[0].status() == psutil.STATUS_ZOMBIE)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not in_mount_table(where)


def wait_until(cond, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def in_mount_table(where: Path) -> bool:
    """Whether the kernel still lists a mount at ``where``. (Not ``os.path.ismount``: it says no
    while a stat of the mount point fails, as it does with ENOTCONN in the moment between libfuse
    closing its connection and lifting the mount.)"""
    return mount_fields(where) is not None


@pytest.mark.parametrize("how", ["eject", "move", "replace"])
def test_keys_leave_with_the_card(world, tmp_path, how):
    """Ejected, moved away, or replaced by another card: within a second the mount drops every key
    and the kernel's cached pages; a file held open reads nothing more, one opened afterwards
    reads nothing in the clear."""
    alice, cli = world["alice"], world["cli"]
    m = Machine(alice["console"])
    where = tmp_path / "mnt"
    where.mkdir()
    m.mount(where)
    card = alice["card"]
    moved = tmp_path / "elsewhere.card"
    film = where / TITLES["movie"] / "reel.bin"
    music = next(p for p in (where / TITLES["music"]).rglob("*") if p.is_file())
    source = (world["sources"]["movie"] / "reel.bin").read_bytes()
    held = os.open(film, os.O_RDONLY)
    try:
        assert os.pread(held, 1 << 20, 0) == source[: 1 << 20]  # read (and cached by the kernel)
        if how == "eject":
            assert cli("console", "eject-card", "--console", alice["console"]).code == 0
        elif how == "move":
            os.rename(card, moved)
        else:
            os.rename(card, moved)
            assert (
                cli(
                    "card",
                    "format",
                    card,
                    "--credential",
                    world["srv"].credential("manufacturer"),
                    "--server",
                    world["srv"].url,
                ).code
                == 0
            )
        took = wait_until(lambda: not in_mount_table(where))
        assert took < 1.5
        with pytest.raises(OSError):
            os.pread(held, 4096, 0)  # the pages it read before are gone too
        with pytest.raises(OSError):
            os.pread(held, 4096, 8 << 20)
        assert not (where / TITLES["movie"]).exists() or not os.access(music, os.R_OK)
        with pytest.raises(OSError):
            music.read_bytes()
        log = (Path(alice["console"]) / "mount.log").read_text()
        assert "every key is dropped" in log
    finally:
        with contextlib.suppress(OSError):  # (ENOTCONN: its mount is gone)
            os.close(held)
        if how == "eject":
            assert cli("console", "insert-card", card, "--console", alice["console"]).code == 0
        else:
            if how == "replace":
                card.unlink()
            os.rename(moved, card)
    # the card back in: the titles mount and read again
    m.mount(where)
    try:
        assert sha(film) == hashlib.sha256(source).hexdigest()
    finally:
        m.unmount(where)


@pytest.mark.parametrize("mode", ["pread-4k", "pread-chunk", "memory"])
def test_the_benchmark_ceiling_mount_answers_what_it_is_asked(tmp_path, mode):
    """tools/fusefloor.py, the ceiling `make bench` compares the mount with, is a real FUSE mount
    that answers each read with the size asked (and, reading the file, with its bytes): its
    figures are of reads that happened."""
    backing = tmp_path / "plain.bin"
    data = random.Random(7).randbytes(3 << 20)
    backing.write_bytes(data)
    where = tmp_path / "floor"
    where.mkdir()
    tool = Path(__file__).resolve().parent.parent / "tools" / "fusefloor.py"
    proc = subprocess.Popen([sys.executable, str(tool), mode, str(backing), str(where)], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: in_mount_table(where))
        with open(where / "f.bin", "rb") as f:
            assert os.fstat(f.fileno()).st_size == len(data)
            for off in (0, 4096 * 77, (3 << 20) - 4096, 65536 - 100):
                got = os.pread(f.fileno(), 4096, off)
                assert len(got) == min(4096, len(data) - off)
                if mode == "pread-4k":
                    assert got == data[off : off + 4096]
    finally:
        subprocess.run(["fusermount3", "-u", str(where)], capture_output=True)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"request sizes" in err
