"""Imports run only downward: each module imports modules of layers below its own, never above.

The layers, from the bottom (a module may import its own layer's siblings in its own package, and
anything below):

    0  errors, ids, roles, plans                          words and plans
    1  crypto, pki, protocol                              pure: primitives and messages
    2  formats                                            pure: bytes in, objects out
    3  bindings, saves, stores, samples                   pure: what keys and plans mean
    4  devices, datapath, lifetime                        device files: handles, locks, writes; the
                                                          compiled data path; children that end
                                                          with their parent
    5  httpapi, client, console.decisions,                I/O shells and pure decisions of each side
       console.sandbox, server.store, server.records,
       server.context, server.audit, server.metrics,
       server.logs, publisher.keystore, broker.config,
       webconsole.sessions, webconsole.charts
    6  console.install, console.mountpoints,              what each side does, over its stores
       console.fuseloop, console.slots,
       console.processes, console.media, console.modem,
       publisher.mastering, server.queries,
       server.auditlog, server.registration,
       server.acquisition, server.repairs,
       server.licensing, server.credentials,
       server.masterkey, server.identity, broker.records,
       broker.payments, broker.logins, broker.ledger
    7  console.mount, console.savefs, console.copying,    what composes those
       console.playing, console.machine, server.home,
       server.endpoints, server.batcher, broker.service
    8  server.app, server.backups, server.hosts,          the servers and their homes
       server.workers,
       broker.home, broker.app, webconsole.web,
       webconsole.downloads
    9  webconsole.casework, webconsole.repair,            composed onto the apps from above;
       webconsole.desk, demo                              the story `vhw demo` tells
    10 cli, __main__                                      the top: the command line

Also: no module uses another package's private names (``from x import _y``). A test walks the
import graph (function-local imports included) with ``ast`` and fails on an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "vhw"

LAYERS = {
    0: ["vhw", "vhw.errors", "vhw.ids", "vhw.roles", "vhw.plans"],
    1: ["vhw.crypto", "vhw.pki", "vhw.protocol"],
    2: ["vhw.formats"],
    3: ["vhw.bindings", "vhw.saves", "vhw.stores", "vhw.samples"],
    4: ["vhw.devices", "vhw.datapath", "vhw.lifetime"],
    5: [
        "vhw.httpapi",
        "vhw.client",
        "vhw.console.decisions",
        "vhw.console.sandbox",
        "vhw.server.store",
        "vhw.server.records",
        "vhw.server.context",
        "vhw.broker.config",
        "vhw.server.audit",
        "vhw.server.metrics",
        "vhw.server.logs",
        "vhw.publisher.keystore",
        "vhw.webconsole.sessions",
        "vhw.webconsole.charts",
        "vhw.console",
        "vhw.server",
        "vhw.broker",
        "vhw.publisher",
        "vhw.webconsole",
    ],
    6: [
        "vhw.console.install",
        "vhw.console.mountpoints",
        "vhw.console.fuseloop",
        "vhw.console.slots",
        "vhw.console.processes",
        "vhw.console.media",
        "vhw.console.modem",
        "vhw.publisher.mastering",
        "vhw.server.queries",
        "vhw.server.auditlog",
        "vhw.server.registration",
        "vhw.server.acquisition",
        "vhw.server.repairs",
        "vhw.server.licensing",
        "vhw.server.credentials",
        "vhw.server.masterkey",
        "vhw.server.identity",
        "vhw.broker.records",
        "vhw.broker.payments",
        "vhw.broker.logins",
        "vhw.broker.ledger",
    ],
    7: [
        "vhw.console.mount",
        "vhw.console.savefs",
        "vhw.console.copying",
        "vhw.console.playing",
        "vhw.console.machine",
        "vhw.server.home",
        "vhw.server.endpoints",
        "vhw.server.batcher",
        "vhw.broker.service",
    ],
    8: [
        "vhw.server.app",
        "vhw.server.backups",
        "vhw.server.hosts",
        "vhw.server.workers",
        "vhw.broker.home",
        "vhw.broker.app",
        "vhw.webconsole.web",
        "vhw.webconsole.downloads",
    ],
    9: ["vhw.webconsole.casework", "vhw.webconsole.repair", "vhw.webconsole.desk", "vhw.demo"],
    10: ["vhw.cli", "vhw.__main__"],
}
RANK = {name: layer for layer, names in LAYERS.items() for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rank(module: str) -> int:
    """A module's layer: its own entry, or its package's (``vhw.formats.disc`` is ``vhw.formats``)."""
    name = module
    while name not in RANK:
        if "." not in name:
            raise AssertionError(f"{module} is in no layer: add it to LAYERS")
        name = name.rsplit(".", 1)[0]
    return RANK[name]


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported vhw module, names) of every import in a module, function-local ones too."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("vhw"):
                continue
            names = [a.name for a in node.names]
            for name in names:  # `from . import decisions` imports the module vhw.console.decisions
                sub = f"{target}.{name}"
                is_module = (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    ROOT.parent / Path(*sub.split("."))
                ).is_dir()
                out.append((node.lineno, sub if is_module else target, [] if is_module else [name]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("vhw")]
    return out


def edges() -> list[tuple[str, int, str, list[str]]]:
    return [
        (module_name(p), line, target, names) for p in sorted(ROOT.rglob("*.py")) for line, target, names in imports(p)
    ]


def same_package(a: str, b: str) -> bool:
    """``b`` is a sibling of ``a`` in its package, or the package itself."""
    package = a.rsplit(".", 1)[0]
    return b.rsplit(".", 1)[0] == package or b == package


def test_every_module_has_a_layer():
    for p in ROOT.rglob("*.py"):
        rank(module_name(p))


def test_imports_run_only_downward():
    upward = []
    for module, line, target, _ in edges():
        if target == module or target == "vhw":
            continue
        mine, theirs = rank(module), rank(target)
        if theirs > mine or (theirs == mine and not same_package(module, target) and not target.startswith(module)):
            upward.append(f"{module}:{line} imports {target} (layer {theirs} from layer {mine})")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(upward)


def test_no_private_names_of_another_package():
    crossing = []
    for module, line, target, names in edges():
        for name in names:
            if (
                name.startswith("_")
                and not name.startswith("__")
                and not same_package(module, target + ".x")
                and target != module
            ):
                crossing.append(f"{module}:{line} imports {target}.{name}")
    assert not crossing, "private names used across packages:\n" + "\n".join(crossing)
