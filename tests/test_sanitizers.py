"""The compiled data path built with AddressSanitizer and UndefinedBehaviorSanitizer (``VHW_SANITIZE=1
setup.py``), and the data-path, mount and install tests run against that build: a copy of the
repository with the sanitized ``_core`` built in it, the ASan runtime preloaded into every process
(the tests' own and the mounts they start), any report fatal (``abort_on_error``,
``-fno-sanitize-recover``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_datapath.py", "tests/test_mount.py", "tests/test_install.py"]

pytestmark = pytest.mark.slow


def runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"gcc has no {name} (Debian's gcc brings it; tools/setup.sh installs gcc)")
    return path


def test_data_path_mount_and_install_tests_pass_under_asan_and_ubsan(tmp_path):
    copy = tmp_path / "vhw"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp", str(tmp_path / "obj")],
        cwd=copy,
        env={**os.environ, "VHW_SANITIZE": "1"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),  # (before the editable install's path: every vhw process loads the copy)
        "LD_PRELOAD": runtime("libasan.so"),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:print_summary=1",  # (CPython keeps memory at exit)
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import vhw.datapath as d; print(d.sanitized(), d._core.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split()[:1] == ["True"] and str(copy) in probe.stdout, probe.stdout + probe.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    report = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in report and "runtime error:" not in report, report
