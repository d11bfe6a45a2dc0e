"""The compiled part of vhw: vhw.datapath._core, the mount's read path and the install's crypto, in C
on libfuse3's low-level API and OpenSSL's libcrypto (Debian: libfuse3-dev, libssl-dev, pkg-config;
tools/setup.sh installs them). Everything else is in pyproject.toml.

Built with hardening flags and warnings as errors. ``VHW_SANITIZE=1`` builds it with
AddressSanitizer and UndefinedBehaviorSanitizer instead (the suite's sanitizer run,
tests/test_sanitizers.py; such a build needs ``LD_PRELOAD`` of the ASan runtime in the process).
"""

from __future__ import annotations

import os
import subprocess

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3", "libcrypto"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            "vhw needs libfuse3 and OpenSSL's headers to build (Debian: apt-get install pkg-config libfuse3-dev"
            f" libssl-dev, or run tools/setup.sh): pkg-config says {getattr(exc, 'stderr', exc)!s}".strip()
        ) from None
    return out.stdout.split()


WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wformat=2", "-Wvla"]
HARDENING = [
    "-U_FORTIFY_SOURCE",  # (Python's own flags may set another level)
    "-D_FORTIFY_SOURCE=3",
    "-fstack-protector-strong",
    "-fstack-clash-protection",
    "-fcf-protection",
    "-O2",
]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-O1", "-g"]
sanitize = os.environ.get("VHW_SANITIZE") == "1"

core = Extension(
    "vhw.datapath._core",
    sources=[f"vhw/datapath/{name}.c" for name in ("module", "blocks", "mount")],
    depends=["vhw/datapath/core.h"],
    extra_compile_args=["-std=gnu11", *WARNINGS, *(SANITIZERS if sanitize else HARDENING), *pkg_config("--cflags")],
    extra_link_args=[
        *pkg_config("--libs"),
        "-Wl,-z,relro,-z,now",
        *(["-fsanitize=address,undefined"] if sanitize else []),
    ],
)

setup(ext_modules=[core])
