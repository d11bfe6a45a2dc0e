"""Code health the suite keeps: one job per class (sizes within limits), SQL only in the stores'
modules, rows read by name, one writer of the audit log, package docstrings that name their
modules as they are.

Each test reports the worst offenders first, with the limit it broke."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "vhw"

#: One job per class: past these, a class or function is doing several things (trio's and h11's
#: largest classes stay well within them).
CLASS_LINES = 250
CLASS_METHODS = 20
FUNCTION_LINES = 60

#: The modules that may hold SQL: the engines and schemas, and each side's statements by meaning.
STORE_MODULES = {
    "server/store.py",  # the engines (SQLite, PostgreSQL), the schema's migrations
    "server/records.py",  # the licensing service's statements
    "server/queries.py",  # the operators' read model
    "broker/records.py",  # the broker's schema and statements
}
SQL = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE)\b", re.I
)


def sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(ROOT)), ast.parse(p.read_text())) for p in sorted(ROOT.rglob("*.py"))]


def lines(node: ast.AST) -> int:
    return int(node.end_lineno or 0) - int(getattr(node, "lineno", 0)) + 1


def test_no_class_or_function_is_too_big():
    found = []
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(x, ast.FunctionDef | ast.AsyncFunctionDef) for x in node.body)
                if _protocol_table(node):  # a FUSE file system answers the protocol's operations
                    methods = sum(not _handler(x) for x in node.body)
                if lines(node) > CLASS_LINES or methods > CLASS_METHODS:
                    found.append((lines(node), f"class {path}:{node.name}: {lines(node)} lines, {methods} methods"))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines(node) > FUNCTION_LINES:
                found.append((lines(node), f"function {path}:{node.name}: {lines(node)} lines"))
    found.sort(reverse=True)
    limits = f"(limits: a class {CLASS_LINES} lines and {CLASS_METHODS} methods, a function {FUNCTION_LINES} lines)"
    assert not found, f"too big {limits}:\n" + "\n".join(text for _, text in found)


def _protocol_table(node: ast.ClassDef) -> bool:
    """A class whose methods are a protocol's table of handlers (pyfuse3.Operations): each
    operation one method, by the protocol's names; its own helpers still count."""
    return any(ast.unparse(base) == "pyfuse3.Operations" for base in node.bases)


def _handler(node: ast.stmt) -> bool:
    return isinstance(node, ast.AsyncFunctionDef) and any(ast.unparse(d) == "fuse_errors" for d in node.decorator_list)


def _strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def _joined(tree: ast.Module) -> list[tuple[int, str]]:
    """Every string a module writes, with f-strings' literal parts joined (``f"SELECT {x} FROM"``)."""
    out = [(n.lineno, n.value) for n in _strings(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
    return out


def test_sql_only_in_the_stores_modules():
    found = [
        f"{path}:{line}: {text[:60]!r}"
        for path, tree in sources()
        if path not in STORE_MODULES
        for line, text in _joined(tree)
        if SQL.match(text)
    ]
    assert not found, "SQL outside the stores' modules (write it in a records module, by meaning):\n" + "\n".join(found)


def test_the_sql_check_finds_sql():
    """The control: the check above finds each kind of statement where it stands."""
    source = '"""SELECT in a docstring"""\nx = "SELECT a FROM t"\ny = f"UPDATE {t} SET a = ?"\nz = "DELETE FROM t"'
    tree = ast.parse(source)
    assert sorted({line for line, text in _joined(tree) if SQL.match(text)}) == [2, 3, 4]


def test_rows_are_read_by_name_outside_the_store():
    """No ``row[0]``: a statement names its columns and the code reads them by name."""
    pattern = re.compile(r"\b(row|rows?\[\d+\]|r|entry|found)\[[0-9]")
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sorted(ROOT.rglob("*.py"))
        if str(p.relative_to(ROOT)) != "server/store.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "rows read by position:\n" + "\n".join(found)


def test_one_writer_of_the_audit_log():
    writers = [
        f"{path}:{line}"
        for path, tree in sources()
        for line, text in _joined(tree)
        if re.match(r"\s*INSERT\s+INTO\s+audit\b", text, re.I)
    ]
    assert len(writers) == 1 and writers[0].startswith("server/store.py:"), writers


# -- package docstrings ------------------------------------------------------------------------------

NAMED = re.compile(r":mod:`(\.?[\w.]+)`")


def _package_modules(package: Path) -> set[str]:
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


def _dotted(package: Path) -> str:
    return ".".join(package.relative_to(ROOT.parent).parts)


def _exists(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_package_docstrings_name_their_modules_as_they_are():
    problems = []
    for init in sorted(ROOT.rglob("__init__.py")):
        package = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        named = NAMED.findall(doc)
        here = _dotted(package)
        for name in named:
            dotted = here + name if name.startswith(".") else name
            if not _exists(dotted):
                problems.append(f"{here}: names {name}, which does not exist")
        local = {n[1:].split(".")[0] for n in named if n.startswith(".")}
        local |= {n.split(".")[len(here.split("."))] for n in named if n.startswith(here + ".")}
        for module in sorted(_package_modules(package) - local - {"__main__", "_core"}):
            problems.append(f"{here}: its docstring does not name its module {module}")
    assert not problems, "\n".join(problems)
