"""Faces: each subpackage says which of its modules other packages may use (``__all__`` in its
``__init__.py``, as trio's says its public names), each of those modules says its public names
(its ``__all__``), and other packages use nothing else: no module off the face, no name off a
module's ``__all__``, whether imported (``from vhw.server.store import Store``) or reached through
a module (``store.Store`` after ``from vhw.server import store``).

What a package's own modules share among themselves is its business: the test looks only at
imports from one package into another (the top-level modules, ``vhw.crypto`` and the like, are
everyone's)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "vhw"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(dotted: str) -> bool:
    return ROOT.parent.joinpath(*dotted.split("."), "__init__.py").exists()


def is_module(dotted: str) -> bool:
    return ROOT.parent.joinpath(*dotted.split(".")).with_suffix(".py").exists() or is_package(dotted)


def package_of(dotted: str) -> str:
    """A module's subpackage (``vhw.server``), or ``vhw`` for the top-level modules."""
    parts = dotted.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and is_package(".".join(parts[:2])) else "vhw"


def _absolute(me: str, package_init: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = me.split(".")
    if not package_init:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def uses(path: Path) -> list[tuple[int, str, str | None]]:
    return uses_in(module_name(path), path.name == "__init__.py", path.read_text())


def uses_in(me: str, package_init: bool, text: str) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for each module the source of module ``me`` imports and each name it
    takes from one: ``from M import n``, ``from P import M`` (then ``M.n``), ``import M``."""
    tree = ast.parse(text)
    out: list[tuple[int, str, str | None]] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(me, package_init, node)
            if not module.startswith("vhw"):
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if is_module(full):
                    aliases[alias.asname or alias.name] = full
                    out.append((node.lineno, full, None))
                else:
                    out.append((node.lineno, module, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vhw"):
                    out.append((node.lineno, alias.name, None))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            out.append((node.lineno, aliases[node.value.id], node.attr))
    return out


def faces() -> dict[str, list[str]]:
    return {
        module_name(init.parent): list(getattr(importlib.import_module(module_name(init.parent)), "__all__", []))
        for init in ROOT.glob("*/__init__.py")
    }


def test_other_packages_use_only_each_packages_face():
    face = faces()
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        me = module_name(path)
        for line, module, name in uses(path):
            theirs = package_of(module)
            if theirs == "vhw" or theirs == package_of(me):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if module == theirs:  # a name of the package itself (vhw.datapath's, vhw.cli's)
                if name is not None and name not in face[theirs]:
                    problems.append(f"{where}: {theirs}.{name} is not in {theirs}.__all__")
                continue
            if module.split(".")[2] not in face[theirs]:
                problems.append(f"{where}: {module} is not in {theirs}.__all__ (its face)")
                continue
            public = getattr(importlib.import_module(module), "__all__", None)
            if public is None:
                problems.append(f"{where}: {module} has no __all__")
            elif name is not None and name not in public:
                problems.append(f"{where}: {module}.{name} is not in its __all__")
    assert not problems, "\n".join(sorted(set(problems)))


def test_every_package_has_a_face_and_every_name_on_it_exists():
    for package, names in faces().items():
        assert names, f"{package} has no __all__"
        pkg = importlib.import_module(package)
        for name in names:
            target = f"{package}.{name}"
            if is_module(target):
                module = importlib.import_module(target)
                for public in getattr(module, "__all__", []):
                    assert hasattr(module, public), f"{target}.__all__ names {public}, which it does not define"
            else:
                assert hasattr(pkg, name), f"{package}.__all__ names {name}, which does not exist"


def test_the_face_check_sees_a_name_reached_through_a_module():
    """The control: an attribute reached through an imported module is a use, as an import is."""
    text = "from ..server import store\nfrom ..server.store import Tx\nstore.Store\n"
    found = {(module, name) for _, module, name in uses_in("vhw.console.x", False, text)}
    assert ("vhw.server.store", "Store") in found and ("vhw.server.store", "Tx") in found
