"""The error tree in vhw/errors.py's docstring is the package's: every error that can reach a person
is in it, under its base, with the exit code it ends the command with; and the bases that say too
little refuse to be raised."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import vhw
from vhw import errors

#: Exceptions of the package that are not for a person: each is caught and turned into a VhwError
#: (or an HTTP answer, or a FUSE errno) where it is raised, so it never reaches the CLI's handler.
INTERNAL = {
    "vhw.server.store.Conflict": "the store's conflict: the service retries or refuses by meaning",
    "vhw.server.store.Unavailable": "the database went away: the service retries, then answers 503",
    "vhw.protocol.ProtocolError": "a malformed message: the server answers 400, the client an error",
    "vhw.httpapi.ApiError": "an answer of the HTTP API: the server's handler sends it",
    "vhw.datapath.DiscChunkInvalid": "the install turns it into an IntegrityError naming the disc",
    "vhw.console.savefs.SaveError": "the save folder turns it into an errno for the title",
}

TREE_LINE = re.compile(r"^\s{4}[│ ]*(?:[├└]── )?(?P<name>[A-Za-z_.]+)\s+(?:exit (?P<code>\d+))?")


def all_modules() -> list[str]:
    names = ["vhw"]
    for info in pkgutil.walk_packages(vhw.__path__, "vhw."):
        if info.name != "vhw.__main__":
            names.append(info.name)
    return names


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in all_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def tree() -> list[tuple[int, str, int | None]]:
    """(depth, name as written, exit code or None) for each line of the docstring's tree."""
    doc = errors.__doc__ or ""
    rows: list[tuple[int, str, int | None]] = []
    for line in doc.splitlines():
        if not (line.startswith("    VhwError") or "── " in line):
            continue
        match = TREE_LINE.match(line)
        assert match, line
        depth = 0 if line.startswith("    VhwError") else line.index("── ") // 4
        code = match["code"]
        rows.append((depth, match["name"], int(code) if code else None))
    return rows


def resolve(written: str) -> str:
    return f"vhw.{written}" if "." in written else f"vhw.errors.{written}"


def test_every_error_for_a_person_is_in_the_tree_with_its_code_and_base():
    found = defined_exceptions()
    rows = tree()
    named = {resolve(name) for _, name, _ in rows}
    people = {name for name, cls in found.items() if issubclass(cls, errors.VhwError)}
    assert people - named == set(), "errors missing from the tree in vhw/errors.py"
    assert named - people == set(), "the tree names errors that do not exist"
    parents: list[str] = []
    for depth, name, code in rows:
        cls = found[resolve(name)]
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (found[resolve(parents[-1])],), f"{name} is not under {parents[-1]}"
        parents.append(name)
        if code is not None:
            assert cls.exit_code == code, f"{name} exits {cls.exit_code}, the tree says {code}"
        else:
            assert cls in (errors.PathError, errors.Refusal), f"{name} has no exit code in the tree"


def test_every_other_exception_is_caught_where_it_is_raised():
    found = defined_exceptions()
    others = {name for name, cls in found.items() if not issubclass(cls, errors.VhwError)}
    assert others == set(INTERNAL), "an exception not in the tree: say where it is turned into one that is"


@pytest.mark.parametrize(
    "make",
    [
        lambda: errors.VhwError("something"),
        lambda: errors.PathError("/a/file", "is wrong"),
        lambda: errors.Refusal(),
    ],
    ids=["VhwError", "PathError", "Refusal"],
)
def test_the_bases_refuse_to_be_raised(make):
    with pytest.raises(TypeError, match="never raised itself"):
        make()


def test_their_subclasses_are_raised():
    """The control: the same construction of a subclass works."""
    assert str(errors.StateError("no disc")) == "no disc"
    assert str(errors.FileError("/a/file", "is wrong")) == "/a/file: is wrong"
    assert str(errors.MediaRefused()) == errors.MediaRefused.text


def test_the_tables_codes_are_the_trees():
    codes = {code for _, _, code in tree() if code is not None}
    assert codes <= {code for code, _ in errors.EXIT_CODES}
