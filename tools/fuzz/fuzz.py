#!/usr/bin/env python3
"""Coverage-guided fuzzing of every device format and API message, with atheris (libFuzzer).

    .venv/bin/python tools/fuzz/fuzz.py TARGET [--runs N] [--seconds S]
    .venv/bin/python tools/fuzz/fuzz.py all [--image-runs 1000000] [--api-runs 100000]
    .venv/bin/python tools/fuzz/fuzz.py list

Targets are those of tests/fuzz_targets.py: raw device files, their bodies past the checksums,
and request bodies run through JSON, the message declarations and the licensing service. Each
input must end normally or with one of the project's own clear errors; anything else is a failure:
it is counted, its input saved under tools/fuzz/failures/TARGET/, and the run goes on. The corpus
(seeded with valid inputs) is kept in tools/fuzz/corpus/TARGET/ between runs. Prints, per target,
the inputs tried and the failures; exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def fuzz_one(name: str, runs: int, seconds: int, stats: Path) -> None:
    """In a child process (atheris.Fuzz() does not return): one target, instrumented."""
    import atheris

    with atheris.instrument_imports(include=["vhw"]):
        from tests import fuzz_targets as ft
    target = ft.TARGETS[name]
    corpus = HERE / "corpus" / name
    failures = HERE / "failures" / name
    if not corpus.exists() or not any(corpus.iterdir()):
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in ft.seeds(Path(tempfile.mkdtemp(prefix="vhw-fuzz-seed-")))[name]:
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    counts = {"inputs": 0, "failures": 0}

    def save_stats() -> None:
        stats.write_text(f"{counts['inputs']} {counts['failures']}\n")

    def one(data: bytes) -> None:
        counts["inputs"] += 1
        try:
            target(data)
        except ft.ALLOWED:
            pass
        except Exception as exc:  # a bug: keep the input, go on
            counts["failures"] += 1
            failures.mkdir(parents=True, exist_ok=True)
            (failures / hashlib.sha1(data).hexdigest()).write_bytes(data)
            if counts["failures"] <= 5:
                print(f"FAILURE in {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if counts["inputs"] % 1000 == 0:
            save_stats()

    atexit.register(save_stats)
    max_len = max((p.stat().st_size for p in corpus.iterdir()), default=4096) + 4096
    args = [sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1", "-rss_limit_mb=4096"]
    if seconds:
        args.append(f"-max_total_time={seconds}")
    atheris.Setup(args + [str(corpus)], one)
    atheris.Fuzz()


def run_target(name: str, runs: int, seconds: int) -> tuple[int, int, float, str]:
    """Fuzz one target in a child process; (inputs, failures, seconds, its output)."""
    stats = Path(tempfile.mkstemp(prefix=f"vhw-fuzz-{name}-")[1])
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            name,
            "--runs",
            str(runs),
            "--seconds",
            str(seconds),
            "--stats",
            str(stats),
        ],
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - started
    try:
        inputs, failures = map(int, stats.read_text().split())
    except (OSError, ValueError):
        inputs, failures = 0, 1
    stats.unlink(missing_ok=True)
    # libFuzzer's own count of the runs it made, when it printed one
    done = [line for line in proc.stderr.splitlines() if line.startswith("Done ") and " runs in " in line]
    if done:
        inputs = max(inputs, int(done[-1].split()[1]))
    if proc.returncode and not failures:
        failures = 1  # it died: count that as a failure
    return inputs, failures, took, proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="a target name, `all`, or `list`")
    ap.add_argument("--runs", type=int, default=100_000, help="inputs for one target")
    ap.add_argument("--seconds", type=int, default=0, help="stop a target after this long (0: no limit)")
    ap.add_argument("--image-runs", type=int, default=1_000_000, help="with `all`: inputs per device-format target")
    ap.add_argument("--api-runs", type=int, default=100_000, help="with `all`: inputs per API message")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # import nothing of vhw before the instrumentation
        fuzz_one(args.target, args.runs, args.seconds, args.stats)
        return 0
    from tests import fuzz_targets as ft

    if args.target == "list":
        print("\n".join(sorted(ft.TARGETS)))
        return 0
    names = sorted(ft.TARGETS) if args.target == "all" else [args.target]
    if not set(names) <= set(ft.TARGETS):
        print(f"unknown target {args.target!r}; `list` names them", file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        runs = args.runs if args.target != "all" else args.api_runs if name.startswith("api_") else args.image_runs
        inputs, failures, took, err = run_target(name, runs, args.seconds)
        print(f"{name:<20} {inputs:>10,} inputs tried  {failures} failures  ({took:.0f} s)", flush=True)
        if failures:
            worst = 1
            sys.stderr.write("\n".join(err.splitlines()[-30:]) + "\n")
    return worst


if __name__ == "__main__":
    sys.exit(main())
