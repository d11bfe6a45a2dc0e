#!/usr/bin/env python3
"""Every data-path comparison in one run: the mount against gocryptfs and the plain file, install
against `cp` + `sync`, mastering's memory. `make bench` runs this.

    .venv/bin/python tools/bench.py [--size-mib 1024] [--runs 3] [--install-sizes 1024,4096]
                                    [--out bench] [--dir DIR] [--quick]

One sitting, so the ratios compare like with like (the machine is shared and noisy: a figure from
another day is not a comparison). Set-up: a real licensing server on 127.0.0.1, a title of
``--size-mib`` MiB (one large file, and eight files of an eighth of it each for the concurrent
readers) mastered, pressed, installed on a console whose HDD is mounted; the same files plain on
ext4 and in a gocryptfs (Debian's) mount, mounted twice: with its defaults, and with
``-kernel_cache -ro`` (the page-cache policy vhw's mount has: the warm and re-read rows then compare
read paths, not cache policies). Then, ``--runs`` times, for each of the three in turn:

* seq first read: `dd bs=1M` after dropping the page cache; seq re-read: `dd` again;
* random 4 KiB, cold and warm: 20,000 `pread`s at distinct 4 KiB offsets after dropping caches, then
  the same offsets again;
* fio as an independent reader: sequential 1 MiB reads (cold); `randread` 4 KiB with 1 job and with
  8 jobs, a fixed count of reads (``MISSES`` in all, after dropping caches) over the whole title, so
  that nearly every read is a miss: at most ``MISSES`` / 2 / (title / 64 KiB) of them, about 6%
  for 1 GiB, can land in a chunk that an earlier read brought into the cache (a time-based run
  measures the page cache instead: most of its reads hit chunks read before);
* eight processes reading eight files sequentially at once (cold): aggregate GB/s.

The ceiling of the stack: the two misses-only fio rows again, in the same runs, against file
systems over the plain file that do nothing but answer: `tools/cfloor.c`, compiled, served the way
vhw's mount is (from memory; after a ``pread`` of the 4 KiB asked), and `tools/fusefloor.py`'s
pyfuse3 + trio ones, the stack vhw's mount was written in before (from memory; after a 4 KiB
``pread``; after a ``pread`` of a sealed 64 KiB chunk), so the table shows which part of a miss is
the FUSE stack's and the disk's, and which is vhw's own.

Block sizes: the same misses-only and sequential rows through the mounts of HDDs formatted with
16 KiB and 64 KiB blocks (`vhw hdd format --block-size`), the same title installed on each.

Install: for each of ``--install-sizes``, ``--runs`` installs of a fresh disc onto a fresh HDD under
GNU time (wall time, peak RSS), each beside `cp` + `sync` of the same disc image; the disc is read
once before both (``benchlib.prime``: the disk is a network volume whose own cache favoured
whichever read the image second), and the page cache dropped before each. Mastering: the
peak RSS of mastering the largest title.

Writes OUT/results.json (every run, medians, min/max, ratios to the peer, date, CPU, kernel) and
OUT/results.md (the table the README shows). Needs root to drop the page cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import MiB, dd, drop_caches, measure, prime, random_file, random_reads, vhw, vhw_command  # noqa: E402

from tests.servers import RunningServer  # noqa: E402  (the same helper the tests use)
from vhw.console.mountpoints import mount_fields  # noqa: E402

READS = 20_000
MISSES = 2_000  # random reads per fio row, over all jobs
PARTS = 8
TITLE = "BENCH-1"


# -- running things ---------------------------------------------------------------------------------


def fio(path: Path, *, rw: str, bs: str, jobs: int = 1, ios: int | None = None) -> float:
    """fio's figure: GB/s for sequential reads, IOPS for random ones."""
    cmd = [
        "fio",
        "--name=bench",
        f"--filename={path}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--numjobs={jobs}",
        "--ioengine=psync",
        "--readonly",
        "--invalidate=0",
        "--group_reporting",
        "--output-format=json",
    ]
    if ios:
        cmd += [f"--number_ios={ios}"]  # (per job)
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    read = out["jobs"][0]["read"]
    return read["bw_bytes"] / 1e9 if rw == "read" else read["iops"]


def concurrent_dd(paths: list[Path]) -> float:
    """Read every path with its own dd at once; aggregate GB/s over the wall time."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["dd", f"if={p}", "of=/dev/null", "bs=1M"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for p in paths
    ]
    for p in procs:
        if p.wait():
            raise SystemExit("a concurrent dd failed")
    return sum(os.path.getsize(p) for p in paths) / (time.perf_counter() - start) / 1e9


READERS = {
    "seq_cold": ("seq first read", "GB/s"),
    "seq_warm": ("seq re-read", "GB/s"),
    "rand_cold": ("random 4 KiB, cold", "reads/s"),
    "rand_warm": ("random 4 KiB, warm", "reads/s"),
    "fio_seq": ("fio seq 1 MiB, cold", "GB/s"),
    "fio_misses_1": (f"fio randread 4 KiB, misses only, 1 job ({MISSES:,} reads)", "IOPS"),
    "fio_misses_8": (f"fio randread 4 KiB, misses only, 8 jobs ({MISSES:,} reads)", "IOPS"),
    "concurrent_seq": ("8 sequential readers at once, cold", "GB/s"),
}


def block_figures(folder: Path) -> dict[str, float]:
    """The rows the block size changes: misses with 1 and 8 readers, a sequential first read."""
    big = folder / "movie.bin"
    out = {}
    drop_caches()
    out["fio_misses_1"] = fio(big, rw="randread", bs="4k", ios=MISSES)
    drop_caches()
    out["fio_misses_8"] = fio(big, rw="randread", bs="4k", jobs=8, ios=MISSES // 8)
    drop_caches()
    out["fio_seq"] = fio(big, rw="read", bs="1M")
    return out


def read_figures(folder: Path, seed: int) -> dict[str, float]:
    big = folder / "movie.bin"
    parts = [folder / f"part-{i}.bin" for i in range(PARTS)]
    out = {}
    drop_caches()
    out["seq_cold"] = dd(big)
    out["seq_warm"] = dd(big)
    drop_caches()
    out["rand_cold"] = random_reads(big, READS, seed)
    out["rand_warm"] = random_reads(big, READS, seed)
    drop_caches()
    out["fio_seq"] = fio(big, rw="read", bs="1M")
    drop_caches()
    out["fio_misses_1"] = fio(big, rw="randread", bs="4k", ios=MISSES)
    drop_caches()
    out["fio_misses_8"] = fio(big, rw="randread", bs="4k", jobs=8, ios=MISSES // 8)
    drop_caches()
    out["concurrent_seq"] = concurrent_dd(parts)
    return out


FLOORS = {
    "c-memory": "compiled, answered from memory",
    "c-pread": "compiled + a 4 KiB pread",
    "memory": "pyfuse3 + trio, from memory",
    "pread-4k": "pyfuse3 + trio + a 4 KiB pread",
    "pread-chunk": "pyfuse3 + trio + a 64 KiB chunk pread",
}
FLOOR_ROWS = ("fio_misses_1", "fio_misses_8")
BLOCKS = ("16K", "64K")  # HDD block sizes measured besides the default 4 KiB
BLOCK_ROWS = ("fio_misses_1", "fio_misses_8", "fio_seq")


def build_cfloor(tmp: Path) -> Path:
    """tools/cfloor.c, compiled (with the flags pkg-config gives for libfuse3)."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=True)
    out = tmp / "cfloor"
    source = Path(__file__).with_name("cfloor.c")
    subprocess.run(["gcc", "-O2", str(source), *flags.stdout.split(), "-lpthread", "-o", str(out)], check=True)
    return out


def floor_command(mode: str, backing: Path, mnt: Path, cfloor: Path) -> list[str]:
    if mode.startswith("c-"):
        return [str(cfloor), mode.removeprefix("c-"), str(backing), str(mnt)]
    return [sys.executable, str(Path(__file__).with_name("fusefloor.py")), mode, str(backing), str(mnt)]


def floor_figures(mode: str, backing: Path, mnt: Path, cfloor: Path) -> dict[str, float]:
    """fio's misses-only rows through the ceiling file system ``mode`` over ``backing``, mounted at ``mnt``."""
    proc = subprocess.Popen(floor_command(mode, backing, mnt, cfloor), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while mount_fields(mnt) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{mode} did not mount: {(proc.stderr.read() if proc.stderr else '').strip()}")
            time.sleep(0.05)
        big = mnt / "f.bin"
        drop_caches()
        one = fio(big, rw="randread", bs="4k", ios=MISSES)
        drop_caches()
        eight = fio(big, rw="randread", bs="4k", jobs=8, ios=MISSES // 8)
        return {"fio_misses_1": one, "fio_misses_8": eight}
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(timeout=20)


# -- set-up ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {**os.environ, "VHW_HOME": str(tmp / "home")}
        self.srv = RunningServer.start(tmp / "server", env=self.env)
        self.man = ["--credential", self.srv.credential("manufacturer"), "--server", self.srv.url]
        self.pub = ["--credential", self.srv.credential("publisher"), "--server", self.srv.url]
        self.consoles = 0

    def title(self, name: str, size_mib: int, *, parts: bool) -> Path:
        """Source files of a title: movie.bin of ``size_mib`` MiB (and PARTS parts of 1/PARTS each)."""
        src = self.tmp / f"src-{name}"
        src.mkdir()
        random_file(src / "movie.bin", size_mib * MiB)
        if parts:
            for i in range(PARTS):
                random_file(src / f"part-{i}.bin", size_mib * MiB // PARTS)
        (src / "vhw-title.json").write_text('{"name": "Bench", "kind": "movie", "entry": "movie.bin"}')
        return src

    def master(self, src: Path, title_id: str, discs: int) -> tuple[list[Path], int]:
        """Master and press; returns the discs and mastering's peak RSS."""
        _, rss, _ = measure(
            [
                *vhw_command(),
                "disc",
                "master",
                str(src),
                "-o",
                str(self.tmp / f"{title_id}.master"),
                "--title-id",
                title_id,
                *map(str, self.pub),
            ],
            env=self.env,
        )
        out = self.tmp / f"discs-{title_id}"
        vhw("disc", "press", self.tmp / f"{title_id}.master", "--count", discs, "-o", out, *self.pub, env=self.env)
        (self.tmp / f"{title_id}.master").unlink()
        return sorted(out.iterdir()), rss

    def console(self, disc: Path, hdd_size: str = "40G", block_size: str = "4K") -> list:
        self.consoles += 1
        d = self.tmp / f"console-{self.consoles}"
        d.mkdir()
        vhw("console", "rom", d / "r.rom", *self.man, env=self.env)
        vhw("hdd", "format", d / "h.hdd", "--size", hdd_size, "--block-size", block_size, *self.man, env=self.env)
        vhw("card", "format", d / "c.card", *self.man, env=self.env)
        vhw("console", "setup", d / "con", "--rom", d / "r.rom", "--hdd", d / "h.hdd", env=self.env)
        con = ["--console", d / "con"]
        vhw("console", "insert-card", d / "c.card", *con, env=self.env)
        vhw("console", "insert-disc", disc, *con, env=self.env)
        vhw("console", "register", *con, env=self.env)
        return con

    def install(self, con: list) -> tuple[float, int]:
        wall, rss, _ = measure([*vhw_command(), "console", "install", *map(str, con)], env=self.env)
        return wall, rss

    def forget_hdd(self, con: list) -> None:
        """Free the space of an HDD image that is no longer needed (a 4 GiB title, three times)."""
        hdd = Path(con[1]).parent / "h.hdd"
        hdd.unlink()


def gocryptfs_copy(tmp: Path, src: Path) -> tuple[Path, Path]:
    """The files of ``src`` in a gocryptfs; two mounts of it: (defaults, ``-kernel_cache -ro``)."""
    cipher, mnt, cached, pw = (tmp / f"gocrypt.{x}" for x in ("cipher", "mnt", "cached", "pw"))
    cipher.mkdir()
    mnt.mkdir()
    cached.mkdir()
    pw.write_text("benchmark password\n")
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(pw), str(cipher)], check=True)
    subprocess.run(["gocryptfs", "-q", "-passfile", str(pw), str(cipher), str(mnt)], check=True)
    for f in src.glob("*.bin"):
        shutil.copyfile(f, mnt / f.name)
    subprocess.run(["sync"], check=True)
    subprocess.run(
        ["gocryptfs", "-q", "-ro", "-kernel_cache", "-passfile", str(pw), str(cipher), str(cached)], check=True
    )
    return mnt, cached


def cp_sync(disc: Path, dst: Path) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["cp", disc, dst], check=True)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - start
    dst.unlink()
    return wall


# -- statistics ---------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    return {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "gocryptfs": _version(["gocryptfs", "-version"]),
        "fio": _version(["fio", "--version"]),
    }


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "not installed"


def fmt(value: float, unit: str) -> str:
    return f"{value:.2f}" if unit == "GB/s" else f"{value:,.0f}"


def spread(s: dict, unit: str) -> str:
    return f"{fmt(s['median'], unit)} ({fmt(s['min'], unit)}–{fmt(s['max'], unit)})"


def table(results: dict) -> str:
    m, r = results["machine"], results
    lines = [
        f"Measured by `{r['command']}` on {r['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB,"
        f" kernel {m['kernel']}, Python {m['python']}; {m['gocryptfs']}; {m['fio']}.",
        f"Medians of {r['runs']} runs (min–max); the ratio is vhw's median over the peer's, in the same run.",
        "",
        f"Reading a {r['size_mib']} MiB installed title (and {PARTS} files of {r['size_mib'] // PARTS} MiB for the"
        " concurrent readers):",
        "",
        "| what | vhw mount | gocryptfs | gocryptfs -kernel_cache | plain ext4 | vhw / gocryptfs"
        " | vhw / gocryptfs -kernel_cache |",
        "|---|---|---|---|---|---|---|",
    ]
    cached_rows = 0
    for key, (label, unit) in READERS.items():
        row = r["read"][key]
        cache = row["vhw"]["median"] > row["plain"]["median"]  # faster than the file it is read from
        cached_rows += cache
        lines.append(
            f"| {label} ({unit}){' †' if cache else ''} | {spread(row['vhw'], unit)} | {spread(row['gocryptfs'], unit)}"
            f" | {spread(row['gocryptfs_kc'], unit)} | {spread(row['plain'], unit)} | {row['ratio']:.2f}×"
            f" | {row['ratio_kc']:.2f}× |"
        )
    if cached_rows:
        lines += [
            "",
            "† cache-dominated: vhw beat the plain file it reads from, so the page cache, not the read"
            " path, made the figure.",
        ]
    if "floor" in r:
        lines += [
            "",
            "The ceiling of the stack: the same misses, in the same runs, through file systems over the"
            " plain file that only answer: `tools/cfloor.c`, compiled and served as vhw's mount is (from"
            " memory; after a `pread` of the 4 KiB asked), and `tools/fusefloor.py`'s pyfuse3 + trio ones,"
            " the stack of vhw's earlier mount (from memory; after a 4 KiB `pread`; after a `pread` of a"
            " sealed 64 KiB chunk, not decrypted):",
            "",
            "| misses only (IOPS) | " + " | ".join(FLOORS.values()) + " | vhw mount | gocryptfs | plain ext4 |",
            "|---|" + "---|" * (len(FLOORS) + 3),
        ]
        for key in FLOOR_ROWS:
            row, floor = r["read"][key], r["floor"][key]
            cells = [spread(floor[m], "IOPS") for m in FLOORS]
            cells += [spread(row[t], "IOPS") for t in ("vhw", "gocryptfs", "plain")]
            lines.append(
                f"| {READERS[key][0].removeprefix('fio randread 4 KiB, misses only, ')} | " + " | ".join(cells) + " |"
            )
    if "blocks" in r:
        lines += [
            "",
            "Block sizes: the same title on HDDs formatted with each block size (`vhw hdd format --block-size`),"
            " in the same runs:",
            "",
            "| block size | " + " | ".join(READERS[k][0] + f" ({READERS[k][1]})" for k in BLOCK_ROWS) + " |",
            "|---|" + "---|" * len(BLOCK_ROWS),
        ]
        sizes = {"4K": {k: r["read"][k]["vhw"] for k in BLOCK_ROWS}, **r["blocks"]}
        for size, row in sizes.items():
            cells = [spread(row[k], READERS[k][1]) for k in BLOCK_ROWS]
            lines.append(f"| {size[:-1]} KiB | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Install (fresh disc onto a fresh HDD, fsync at every commit) against `cp` + `sync` of the disc"
        " image, each after the page cache was dropped (the disc read once before both, so that the"
        " network volume's own cache favours neither):",
        "",
        "| title | vhw install MB/s | cp + sync MB/s | ratio | install peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for size, row in r["install"].items():
        lines.append(
            f"| {size} MiB | {spread(row['install_mbs'], 'MB/s')} | {spread(row['cp_mbs'], 'MB/s')} |"
            f" {row['ratio']:.2f}× | {row['rss_mib']['max']:.1f} (max) |"
        )
    lines += ["", f"Mastering the {r['master']['size_mib']} MiB title: peak RSS {r['master']['rss_mib']:.1f} MiB."]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="the title read through the mount")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--install-sizes", default="1024,4096", help="MiB, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("bench"))
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="one run, a 256 MiB title, no 4 GiB install (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.runs, args.install_sizes = 256, 1, "256"
    if os.geteuid() != 0:
        raise SystemExit("tools/bench.py drops the page cache: run it as root (`make bench` does)")
    for tool in ("gocryptfs", "fio", "dd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (`make bench` installs it)")
    sizes = [int(x) for x in args.install_sizes.split(",") if x]
    results: dict = {
        "command": "make bench" if os.environ.get("VHW_BENCH_MAKE") else " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "runs": args.runs,
        "size_mib": args.size_mib,
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vhw-bench-") as tmp:
        tmp = Path(tmp)
        b = Bench(tmp)
        mounts: list[Path] = []
        goc = goc_kc = None
        try:
            print(f"setting up a {args.size_mib} MiB title ...", flush=True)
            src = b.title("read", args.size_mib, parts=True)
            discs, master_rss = b.master(src, TITLE, 1 + len(BLOCKS))
            results["master"] = {"size_mib": args.size_mib * 2, "rss_mib": master_rss / MiB}
            for disc, size in zip(discs, ("4K", *BLOCKS), strict=True):
                con = b.console(disc, block_size=size)
                b.install(con)
                mounts.append(tmp / f"mnt-{size}")
                mounts[-1].mkdir()
                vhw("console", "mount", mounts[-1], *con, env=b.env)
            goc, goc_kc = gocryptfs_copy(tmp, src)
            where = {"vhw": mounts[0] / TITLE, "gocryptfs": goc, "gocryptfs_kc": goc_kc, "plain": src}
            runs: dict = {k: {t: [] for t in where} for k in READERS}
            floors: dict = {k: {m: [] for m in FLOORS} for k in FLOOR_ROWS}
            blocks: dict = {size: {k: [] for k in BLOCK_ROWS} for size in BLOCKS}
            floor_mnt = tmp / "floor"
            floor_mnt.mkdir()
            cfloor = build_cfloor(tmp)
            for i in range(args.runs):
                for target, folder in where.items():
                    print(f"run {i + 1}/{args.runs}: reading {target} ...", flush=True)
                    for k, v in read_figures(folder, seed=i).items():
                        runs[k][target].append(v)
                for mode in FLOORS:
                    print(f"run {i + 1}/{args.runs}: misses through the ceiling file system {mode} ...", flush=True)
                    for k, v in floor_figures(mode, src / "movie.bin", floor_mnt, cfloor).items():
                        floors[k][mode].append(v)
                for size, mnt in zip(BLOCKS, mounts[1:], strict=True):
                    print(f"run {i + 1}/{args.runs}: reading the mount of {size} blocks ...", flush=True)
                    for k, v in block_figures(mnt / TITLE).items():
                        blocks[size][k].append(v)
            results["floor"] = {k: {m: summary(v) for m, v in row.items()} for k, row in floors.items()}
            results["blocks"] = {size: {k: summary(v) for k, v in row.items()} for size, row in blocks.items()}
            results["read"] = {
                k: {
                    **{t: summary(v) for t, v in row.items()},
                    "ratio": statistics.median(row["vhw"]) / statistics.median(row["gocryptfs"]),
                    "ratio_kc": statistics.median(row["vhw"]) / statistics.median(row["gocryptfs_kc"]),
                }
                for k, row in runs.items()
            }
        finally:
            for mnt in mounts:
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            for m in (goc_kc, goc):
                if m:
                    subprocess.run(["fusermount", "-u", str(m)], capture_output=True)
        shutil.rmtree(tmp / "src-read", ignore_errors=True)
        results["install"] = {}
        for size in sizes:
            print(f"install: a {size} MiB title, {args.runs} times ...", flush=True)
            src = b.title(f"install-{size}", size, parts=False)
            discs, rss = b.master(src, f"INST-{size}", args.runs)
            shutil.rmtree(src)
            results["master"] = max(
                results["master"], {"size_mib": size, "rss_mib": rss / MiB}, key=lambda m: m["size_mib"]
            )
            walls, rsses, cps = [], [], []
            for disc in discs:
                con = b.console(disc)
                prime(disc)  # (both read it after the volume's cache had it: not whoever came second)
                drop_caches()
                wall, rss = b.install(con)
                walls.append(wall)
                rsses.append(rss)
                cps.append(cp_sync(disc, tmp / "copy.disc"))
                b.forget_hdd(con)
                disc.unlink()
            mbs = [size * MiB / w / 1e6 for w in walls]
            cp_mbs = [size * MiB / w / 1e6 for w in cps]
            results["install"][str(size)] = {
                "install_mbs": summary(mbs),
                "cp_mbs": summary(cp_mbs),
                "rss_mib": summary([r / MiB for r in rsses]),
                "ratio": statistics.median(mbs) / statistics.median(cp_mbs),
            }
        b.srv.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
