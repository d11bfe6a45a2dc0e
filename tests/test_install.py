"""Install (S21-S28) end to end: a real server, the CLI, real image files, real processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vhw.console.install import read_title
from vhw.devices import card as card_dev
from vhw.devices.hdd import HddImage

from .conftest import file_sha256, make_title, source_files
from .servers import RunningServer, factory, match_of, publish


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("server") / "home")
    yield server
    server.stop()


def installed_files(dev: dict, title_id: str) -> dict[str, bytes]:
    """A title's files as the HDD holds them, decrypted with the keys on the user's card."""
    binding = match_of(dev).binding
    with HddImage.open(dev["hdd"]) as img:
        return read_title(img, img.volume.catalog.title(title_id), binding)


def ready_console(cli, srv, tmp_path: Path, name: str, **kw) -> tuple[dict, list[str]]:
    dev = factory(cli, srv, tmp_path / name, **kw)
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    return dev, con


def test_install_two_titles(cli, srv, tmp_path):
    src1, src2 = make_title(tmp_path / "s1", seed=1), make_title(tmp_path / "s2", seed=2, big=700_000)
    [d1] = publish(cli, srv, src1, tmp_path, "TWO-1")
    [d2] = publish(cli, srv, src2, tmp_path, "TWO-2")
    dev, con = ready_console(cli, srv, tmp_path, "alice")
    for disc in (d1, d2):
        assert cli("console", "insert-disc", disc, *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == 0 and "installed" in r.out, r
        assert cli("console", "eject-disc", *con).code == 0
    r = cli("hdd", "ls", *con)
    assert "TWO-1" in r.out and "TWO-2" in r.out and r.out.count("complete") == 2
    assert installed_files(dev, "TWO-1") == source_files(src1)
    assert installed_files(dev, "TWO-2") == source_files(src2)
    card = card_dev.load(dev["card"])
    assert len(card.licenses) == 2 and not any(lic.content_key for lic in card.licenses)
    assert cli("hdd", "fsck", dev["hdd"], "--deep").code == 0
    # installing again from the same disc: the title is there already
    assert cli("console", "insert-disc", d1, *con).code == 0
    r = cli("console", "install", *con)
    assert r.code == 9 and "already installed" in r.err
    # removed, it comes back from its disc onto the owner's own HDD (that copies nothing to anyone
    # else), and plays; the disc installs for no one else
    assert cli("hdd", "rm", "two-1", "--yes", *con).code == 0
    r = cli("console", "install", *con)
    assert r.code == 0 and "installed" in r.out, r
    assert installed_files(dev, "TWO-1") == source_files(src1)
    other, con_o = ready_console(cli, srv, tmp_path, "other")
    assert cli("console", "insert-disc", d1, *con_o).code == 0
    r = cli("console", "install", *con_o)
    assert (r.code, r.err) == (12, "CONTENT CANNOT BE COPIED FROM THIS MEDIA\n")


def test_lent_card_and_other_hdd_are_not_permitted(cli, srv, tmp_path):
    src = make_title(tmp_path / "s", seed=5)
    [disc] = publish(cli, srv, src, tmp_path, "LEND-1")
    alice, con_a = ready_console(cli, srv, tmp_path, "alice")
    bob, con_b = ready_console(cli, srv, tmp_path, "bob")
    assert cli("console", "insert-disc", disc, *con_a).code == 0
    assert cli("console", "acquire", *con_a).code == 0  # the keys are on alice's card now
    # alice lends card and disc to bob's console
    assert cli("console", "eject-card", *con_a).code == 0
    assert cli("console", "insert-card", alice["card"], "--slot", "2", *con_b).code == 0
    assert cli("console", "insert-disc", disc, *con_b).code == 0
    before = file_sha256(bob["hdd"])
    r = cli("console", "install", "--slot", "2", *con_b)
    assert (r.code, r.err) == (13, "COPY IS NOT PERMITTED\n")
    assert file_sha256(bob["hdd"]) == before
    # the right card in the right console, but another HDD attached
    other_hdd = tmp_path / "other.hdd"
    assert (
        cli(
            "hdd",
            "format",
            other_hdd,
            "--size",
            "64M",
            "--credential",
            srv.credential("manufacturer"),
            "--server",
            srv.url,
        ).code
        == 0
    )
    assert cli("console", "setup", tmp_path / "alice2", "--rom", alice["rom"], "--hdd", other_hdd).code == 0
    con_a2 = ["--console", tmp_path / "alice2"]
    assert cli("console", "insert-card", alice["card"], *con_a2).code == 0
    assert cli("console", "insert-disc", disc, *con_a2).code == 0
    before = file_sha256(other_hdd)
    r = cli("console", "install", *con_a2)
    assert (r.code, r.err) == (13, "COPY IS NOT PERMITTED\n")
    assert file_sha256(other_hdd) == before
    # and home again, it installs
    r = cli("console", "insert-card", alice["card"], *con_a)
    assert cli("console", "install", *con_a).code == 0
    assert installed_files(alice, "LEND-1") == source_files(src)


def test_full_hdd_refuses_cleanly_and_the_license_stays_usable(cli, srv, tmp_path):
    small = make_title(tmp_path / "small", seed=7, big=600_000)
    big = make_title(tmp_path / "big", seed=8, big=700_000)
    [d_small] = publish(cli, srv, small, tmp_path, "FULL-1")
    [d_big] = publish(cli, srv, big, tmp_path, "FULL-2")
    dev = factory(cli, srv, tmp_path / "tiny", hdd_size="1200K")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", d_small, *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", d_big, *con).code == 0
    before = file_sha256(dev["hdd"])
    r = cli("console", "install", *con)
    assert r.code == 8 and "not enough space on the HDD for FULL-2" in r.err, r
    assert file_sha256(dev["hdd"]) == before
    assert cli("hdd", "fsck", dev["hdd"], "--deep").code == 0
    # nothing was flagged: once room is made, the same disc installs
    assert cli("hdd", "rm", "FULL-1", "--yes", *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert installed_files(dev, "FULL-2") == source_files(big)


def run_install(env: dict, console: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vhw", "console", "install", "--console", str(console), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def hold_lock(hdd: Path, seconds: float) -> subprocess.Popen:
    """Another process writing the HDD: it holds the image's write lock for a while."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time; from vhw.devices.hdd import HddImage\n"
                f"img = HddImage.open({str(hdd)!r}, write=True)\nprint('locked', flush=True)\ntime.sleep({seconds})"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_two_installs_on_one_hdd(cli, srv, tmp_path, vhw_home):
    """Two consoles share one HDD image: installs run one after the other, or are refused as busy."""
    srcs = [make_title(tmp_path / f"s{i}", seed=20 + i, big=3_000_000) for i in range(4)]
    discs = [publish(cli, srv, s, tmp_path, f"BUSY-{i}")[0] for i, s in enumerate(srcs)]
    a = factory(cli, srv, tmp_path / "a", hdd_size="200M")
    b = factory(cli, srv, tmp_path / "b")
    assert cli("console", "setup", tmp_path / "b2", "--rom", b["rom"], "--hdd", a["hdd"]).code == 0
    b["console"], b["hdd"] = tmp_path / "b2", a["hdd"]
    assert cli("console", "insert-card", b["card"], "--console", b["console"]).code == 0
    for dev in (a, b):
        assert cli("console", "register", "--console", dev["console"]).code == 0
    env = {**os.environ, "VHW_HOME": str(vhw_home)}
    # both at once: one waits for the other, both complete
    assert cli("console", "insert-disc", discs[0], "--console", a["console"]).code == 0
    assert cli("console", "insert-disc", discs[1], "--console", b["console"]).code == 0
    both = [run_install(env, a["console"], "--wait"), run_install(env, b["console"], "--wait")]
    for proc in both:
        assert proc.wait(120) == 0, proc.stderr.read()
    # another writer holds the HDD: --wait says so and waits, then installs
    for dev, disc in ((a, discs[2]), (b, discs[3])):
        assert cli("console", "eject-disc", "--console", dev["console"]).code == 0
        assert cli("console", "insert-disc", disc, "--console", dev["console"]).code == 0
    holder = hold_lock(a["hdd"], 1.5)
    waiting = run_install(env, a["console"], "--wait")
    assert waiting.wait(60) == 0
    told = waiting.stderr.read()
    assert f"in use by another vhw process ({holder.args[0].rsplit('/', 1)[-1]} -c, PID {holder.pid})" in told, told
    assert "; waiting for it" in told
    holder.wait()
    # without --wait, the second is told the HDD is busy, and nothing of it is written
    holder = hold_lock(a["hdd"], 30)
    try:
        before = file_sha256(a["hdd"])
        r = cli("console", "install", "--console", b["console"])
        assert r.code == 7 and "in use by another vhw process" in r.err, r
        assert file_sha256(a["hdd"]) == before
    finally:
        holder.kill()
        holder.wait()
    assert cli("hdd", "fsck", a["hdd"], "--deep").code == 0
    r = cli("hdd", "ls", a["hdd"])
    assert all(f"BUSY-{i}" in r.out for i in range(3)) and "BUSY-3" not in r.out
    assert cli("console", "install", "--console", b["console"]).code == 0  # the license is intact
    assert installed_files(b, "BUSY-3") == source_files(srcs[3])


def film(folder: Path, mib: int, seed: int) -> Path:
    folder.mkdir()
    with open(folder / "film.bin", "wb") as f:
        for i in range(mib):
            f.write(hashlib.sha256(f"{seed}/{i}".encode()).digest() * (1024 * 1024 // 32))
    return folder


@pytest.mark.slow
def test_sigkill_at_10_moments_of_a_384_mib_install(cli, srv, tmp_path, vhw_home, capsys):
    early = make_title(tmp_path / "early", seed=30)
    [d_early] = publish(cli, srv, early, tmp_path, "KILL-0")
    [d_cal] = publish(cli, srv, film(tmp_path / "cal", 384, 1), tmp_path, "KILL-CAL")
    movie = film(tmp_path / "movie", 384, 2)
    [d_movie] = publish(cli, srv, movie, tmp_path, "KILL-1")
    dev, con = ready_console(cli, srv, tmp_path, "k", hdd_size="1600M")
    assert cli("console", "insert-disc", d_early, *con).code == 0
    assert cli("console", "install", *con).code == 0
    env = {**os.environ, "VHW_HOME": str(vhw_home)}
    # calibrate: how long one whole install of 384 MiB takes here, start-up included
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", d_cal, *con).code == 0
    started = time.monotonic()
    assert run_install(env, dev["console"]).wait() == 0
    duration = time.monotonic() - started
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", d_movie, *con).code == 0
    snapshot = tmp_path / "snapshot.hdd"
    subprocess.run(["cp", "--sparse=always", dev["hdd"], snapshot], check=True)
    # 10 kills, each of a fresh install of the movie, at moments spread over start-up, key
    # acquisition, reservation, the copy and its progress commits, up to 80% of the calibration
    # run (start-up takes much of it on this machine). A kill after the confirm is fine too: the
    # owner may install the disc again onto this HDD. A run that finished before its kill counts
    # as "finished" (later runs are faster: caches warm).
    moments = [0.25 + (0.8 * duration - 0.25) * i / 9 for i in range(10)]
    states = []
    for at in moments:
        subprocess.run(["cp", "--sparse=always", snapshot, dev["hdd"]], check=True)
        proc = run_install(env, dev["console"])
        time.sleep(at)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with HddImage.open(dev["hdd"]) as img:
            assert img.check() == []
            title = img.volume.catalog.title("KILL-1")
            # (progress counts plaintext bytes: a complete title's is its size, whatever its tags)
            state = "absent" if title is None else "100%" if title.complete else f"{title.share_done}%"
            states.append("finished" if finished else state)
        assert installed_files(dev, "KILL-0") == source_files(early)
    with capsys.disabled():
        print(f"\nrun {duration:.2f}s; kills at {moments[0]:.2f}..{moments[-1]:.2f}s; title after each: {states}")
    assert len(set(states)) >= 3, states  # the kills fell in different phases of the install
    r = cli("console", "install", *con)  # running install again finishes the title
    if r.code != 0:  # (only when the last run got to its end before its kill: nothing to finish)
        assert states[-1] in ("finished", "100%") and r.code == 9 and "already installed" in r.err, (r, states)
    assert installed_files(dev, "KILL-1")["film.bin"] == (movie / "film.bin").read_bytes()
    assert cli("hdd", "fsck", dev["hdd"], "--deep").code == 0
    assert not any(lic.content_key for lic in card_dev.load(dev["card"]).licenses)


def test_ctrl_c_says_how_to_resume_and_the_resume_says_from_where(cli, srv, tmp_path, vhw_home):
    """Ctrl-C during an install: one line saying that running the same command again resumes it;
    that run says how much was already on the HDD, and finishes the title."""
    movie = film(tmp_path / "movie", 192, 3)
    [disc] = publish(cli, srv, movie, tmp_path, "CTRLC-1")
    dev, con = ready_console(cli, srv, tmp_path, "c", hdd_size="600M")
    assert cli("console", "insert-disc", disc, *con).code == 0
    env = {**os.environ, "VHW_HOME": str(vhw_home)}
    proc = run_install(env, dev["console"])
    deadline = time.monotonic() + 60
    while os.stat(dev["hdd"]).st_blocks * 512 < 48 * 1024 * 1024 and proc.poll() is None:  # past checkpoints
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the install finished before the interrupt reached it")
    assert proc.returncode == 130, (out, err)
    last = err.strip().splitlines()[-1]
    assert last == "vhw: interrupted: run the same command again to resume the install where it stopped", err
    assert "Traceback" not in err
    r = cli("console", "install", *con)
    assert r.code == 0 and "resumed and installed" in r.out, r
    assert "resuming the install of CTRLC-1: " in r.err and "% of it was already on the HDD" in r.err, r
    assert installed_files(dev, "CTRLC-1")["film.bin"] == (movie / "film.bin").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_disc_damaged_mid_title_stops_the_install_in_one_line(cli, srv, tmp_path, damage):
    """A disc whose data is damaged two thirds of the way in, once it is in the slot (one bit
    flipped, or the rest cut off): the install (its disc read in order by one thread while two
    seal) stops with one line naming the disc; the HDD stays consistent, and the good disc then
    installs the title as it is. (A disc cut short is refused at insert-disc too.)"""
    movie = film(tmp_path / "movie", 24, 4)
    [disc] = publish(cli, srv, movie, tmp_path, f"HURT-{damage.upper()}")
    dev, con = ready_console(cli, srv, tmp_path, "h", hdd_size="200M")
    hurt = tmp_path / "hurt.disc"
    data = bytearray(disc.read_bytes())
    at = len(data) * 2 // 3
    if damage == "flip":
        data[at] ^= 0x10
    else:
        del data[at:]
    hurt.write_bytes(disc.read_bytes())
    assert cli("console", "insert-disc", hurt, *con).code == 0
    hurt.write_bytes(data)  # (the slot holds the file, as a drive holds a disc)
    r = cli("console", "install", *con)
    assert r.code == 3 and r.err.count("\n") == 1 and str(hurt) in r.err, r
    assert ("damaged disc" if damage == "flip" else "truncated") in r.err, r
    assert cli("hdd", "fsck", dev["hdd"], "--deep").code == 0
    assert cli("console", "eject-disc", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    r = cli("console", "install", *con)
    assert r.code == 0, r
    assert installed_files(dev, f"HURT-{damage.upper()}")["film.bin"] == (movie / "film.bin").read_bytes()
