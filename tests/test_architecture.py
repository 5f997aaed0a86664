"""The package keeps the shape ARCHITECTURE.md draws: stages in order, no cycles, a true map.

The modules are found on the file system, so a module added or removed is checked without
editing this file; only a new subpackage or top-level module needs a place in the order below
(and in ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bayesfed"
MAP = ROOT / "ARCHITECTURE.md"

#: The stage subpackages, in the order the data flow through them: a stage may import base
#: modules and earlier stages only.
STAGES = ("inputs", "design", "modelling", "sampling", "posterior", "report", "jobs")
#: Modules any stage may import; they import no stage. ``bayesfed`` is the package itself
#: (``__version__``; its API names are imported from ``bayesfed.api`` on first use).
BASE = ("bayesfed", "bayesfed.errors", "bayesfed.store")
#: The top-level modules above every stage, lowest first.
ON_TOP = ("bayesfed.api", "bayesfed.cli", "bayesfed.__main__")


def rank(module: str) -> int | None:
    """A module's place in the order (a module may import its own place or lower); None: none."""
    if module in BASE:
        return 0
    if module in ON_TOP:
        return 1 + len(STAGES) + ON_TOP.index(module)
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "bayesfed" and parts[1] in STAGES:
        return 1 + STAGES.index(parts[1])
    return None


def place(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in STAGES:
        return f"stage {parts[1]!r}"
    return "base module" if module in BASE else "top-level module"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if "__pycache__" in relative.parts:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def subpackages() -> list[str]:
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def lazy_api_names() -> set[str]:
    """The names ``bayesfed`` imports from ``bayesfed.api`` on first use (its ``_API``)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_API" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    top_level: bool  # runs when the importer is imported (not in a function, not TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


def is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def statements(body: list[ast.stmt], top_level: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement below ``body``, with whether it runs at import time."""
    for node in body:
        yield node, top_level
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from statements(node.body, False)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from statements(node.body, False)
            yield from statements(node.orelse, top_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, None) or []:
                    if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                        yield from statements(child.body, top_level)
                    elif isinstance(child, ast.stmt):
                        yield from statements([child], top_level)


def imports_of(module: str, path: Path, modules: dict[str, Path],
               lazy: set[str]) -> list[Import]:
    """The bayesfed modules ``module`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, top_level in statements(tree.body, True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    targets.append(f"{base}.{alias.name}")
                elif base == "bayesfed" and alias.name in lazy:
                    targets.append("bayesfed.api")
                else:
                    targets.append(base)
        for target in targets:
            if target == "bayesfed" or target.startswith("bayesfed."):
                found.append(Import(module, target, node.lineno, top_level))
    return found


def all_imports() -> list[Import]:
    modules = module_files()
    lazy = lazy_api_names()
    return [imp for module, path in modules.items()
            for imp in imports_of(module, path, modules, lazy)]


def test_no_stage_imports_a_later_one():
    unplaced = [m for m in module_files() if rank(m) is None]
    assert not unplaced, (
        "modules outside the import order: " + ", ".join(unplaced) + ". Put a new subpackage "
        "in STAGES (or a top-level module in BASE or ON_TOP) of tests/test_architecture.py, "
        "and in ARCHITECTURE.md's import rule.")
    offending = []
    for imp in all_imports():
        own, other = rank(imp.importer), rank(imp.imported)
        if other is None:
            offending.append(f"{imp}: {imp.imported} is no module of the import order")
        elif other > own:
            offending.append(f"{imp}: the {place(imp.importer)} may not import the "
                             f"{place(imp.imported)}")
    assert not offending, (
        f"imports against the order base < {' < '.join(STAGES)} < api < cli "
        "(ARCHITECTURE.md, 'Import rule'); move the shared code down into the earlier stage "
        "or a base module, or pass it in as an argument:\n  " + "\n  ".join(offending))


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` (module -> imported module -> line), as its edges; None: none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, {})):
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                return [f"{a} -> {b} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == [
        "a -> b (line 1)", "b -> c (line 2)", "c -> a (line 3)"]


def test_no_import_cycles():
    graph: dict[str, dict[str, int]] = {}
    for imp in all_imports():
        if imp.top_level and imp.imported != imp.importer:
            graph.setdefault(imp.importer, {}).setdefault(imp.imported, imp.line)
    cycle = find_cycle(graph)
    assert cycle is None, (
        "modules import each other at import time:\n  " + "\n  ".join(cycle) + "\nbreak the "
        "cycle: move what both need into the lower module (or an earlier stage).")


PATH_IN_TEXT = re.compile(r"(?<![\w./-])bayesfed/(?:\w+/)*\w+\.py\b")
HEADING = re.compile(r"^#+\s")
SUBPACKAGE_IN_HEADING = re.compile(r"`bayesfed/(\w+)/`")
FIRST_CELL = re.compile(r"^\|\s*`(\w+\.py)`\s*\|")


def paths_named(text: str) -> set[str]:
    """Module paths ARCHITECTURE.md names: written out, or as a table row's first cell
    (`read.py`) under a heading that names its subpackage (`bayesfed/inputs/`)."""
    named = set(PATH_IN_TEXT.findall(text))
    subpackage = None
    for line in text.splitlines():
        if HEADING.match(line):
            match = SUBPACKAGE_IN_HEADING.search(line)
            subpackage = match.group(1) if match else None
        elif subpackage and (match := FIRST_CELL.match(line)):
            named.add(f"bayesfed/{subpackage}/{match.group(1)}")
    return named


def test_architecture_md_names_every_module():
    existing = {path.relative_to(ROOT).as_posix() for path in module_files().values()}
    named = paths_named(MAP.read_text(encoding="utf-8"))
    missing = sorted(existing - named)
    assert not missing, (
        "ARCHITECTURE.md's map does not name " + ", ".join(missing) + ": add a row with the "
        "path and one line of what the module holds.")
    stale = sorted(named - existing)
    assert not stale, (
        "ARCHITECTURE.md names modules that do not exist: " + ", ".join(stale) + ". Rename "
        "or remove them there.")
    problems = []
    for name in subpackages():
        init = PACKAGE / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")), clean=False)
        if not doc or not doc.strip():
            problems.append(f"bayesfed/{name}/__init__.py has no docstring")
        elif "\n" in doc.strip() or doc != doc.strip():
            problems.append(f"bayesfed/{name}/__init__.py's docstring is not one line")
        elif len(doc) > 100:
            problems.append(f"bayesfed/{name}/__init__.py's docstring has {len(doc)} characters")
    assert not problems, (
        "each subpackage's docstring states its import rule in one line of at most 100 "
        "characters:\n  " + "\n  ".join(problems))


def test_tests_mirror_the_package():
    packages = set(subpackages())
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")}
    strays = sorted(folders - packages)
    assert not strays, (
        "folders under tests/ that are no subpackage of bayesfed: " + ", ".join(strays)
        + ". tests/<name>/ holds the tests of bayesfed/<name>/: move their files there "
        "(or to tests/ itself for tests of the whole package).")
    untested = sorted(set(STAGES) - folders)
    assert not untested, (
        "stages without a tests folder: " + ", ".join(untested) + ". Create tests/<stage>/ "
        "for the tests of bayesfed/<stage>/.")


def test_importing_the_package_has_no_side_effects():
    """Every module imported in a fresh process leaves the process as it was: the umask is
    not reset (store.py reads it at the first write) and no matplotlib backend is chosen
    (report/plots.py draws on Figure objects; ArviZ, imported by some modules, loads pyplot
    but chooses no backend either)."""
    code = (
        "import importlib, os, pkgutil, sys\n"
        "os.umask(0o027)\n"
        "import bayesfed\n"
        "for m in pkgutil.walk_packages(bayesfed.__path__, 'bayesfed.'):\n"
        "    if '_shipped' not in m.name and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "mask = os.umask(0o022)\n"
        "import matplotlib\n"
        "print(oct(mask), matplotlib.rcParams._get_backend_or_none())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "MPLBACKEND": ""}).stdout.split()
    assert out == ["0o27", "None"], out


def test_no_module_changes_process_state_at_import():
    """No statement run at import calls what changes the process for everyone: ``os.umask``
    (even read-and-restore is a window other threads see), ``matplotlib.use``,
    ``os.environ`` assignments or ``warnings.filterwarnings``."""
    forbidden = {"umask", "use", "filterwarnings", "simplefilter", "putenv", "setdefault"}
    found = []
    for module, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pending = [n for n in tree.body if not isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        while pending:
            node = pending.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in forbidden):
                found.append(f"{module}:{node.lineno} calls .{node.func.attr}()")
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and "environ" in ast.unparse(t.value)
                    for t in node.targets):
                found.append(f"{module}:{node.lineno} sets os.environ")
            pending.extend(ast.iter_child_nodes(node))
    assert not found, ("module-level side effects (move them into the function that needs "
                       "them): " + "; ".join(found))


def test_api_reference_has_every_module():
    """docs/api.md renders every module's docstring (``.. automodule::``), stage by stage."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"\.\. automodule:: ([\w.]+)", page))
    documented |= {"bayesfed.api", "bayesfed.cli"}  # their own pages: python.md, cli.md
    wanted = {m for m, path in module_files().items()
              if path.name not in ("__init__.py", "__main__.py")}
    missing = sorted(wanted - documented)
    assert not missing, "docs/api.md has no `.. automodule::` for " + ", ".join(missing)
