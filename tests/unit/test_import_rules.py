"""Import rules between the package's modules, read from the source with ``ast``.

Every import counts, at any nesting level (a function-level import is still a
dependency the moment the function runs):

- ``product``: the product (every riverdelta module outside ``embedded/`` and
  ``bench/`` but the CLI, plus dags/, plugins/ and spark_apps/) never imports from
  ``embedded/`` or ``bench/``: those run the local broker, Airflow, Spark cluster,
  demo and benchmarks and are not installed on a real deployment's path.
- ``spark-driver``: code that runs in a Spark driver never imports ``airflow``: the
  driver's image need not carry it, and importing it is seconds of start-up. What
  runs there is computed from the AST, not listed: spark_apps/*.py, then
  transitively every riverdelta module they import (its import-time code) and
  every function or class of it they use (``reached_code``). Module by module the
  closure would be nearly the whole package (the driver parses offsets with
  ``backfill.parse_offsets``, and ``backfill`` also submits replays through the
  Airflow Spark hook), so a function the driver never reaches may use Airflow.
- ``private``: no module imports another module's ``_private`` name
  (``from riverdelta.x import _y``) or reaches one through the module
  (``x._y`` on an imported riverdelta module).

Each violation names the file, the line and the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "riverdelta"

# The local stack, demo and benchmarks: not product code (folders of the package).
EMBEDDED = frozenset({f"{PACKAGE}.embedded", f"{PACKAGE}.bench"})
# The entry point wires everything together and may import anything.
ENTRY_POINTS = frozenset({f"{PACKAGE}.cli"})
# Every module name seen by ``sources`` (a reference ``riverdelta.a.b.c`` is cut to the
# longest of these it starts with).
_KNOWN: set[str] = set()


@dataclass(frozen=True)
class Source:
    path: Path
    module: str | None  # "riverdelta.x" for package modules, None for dags/plugins/spark_apps
    tree: ast.Module

    def rel(self, root: Path) -> str:
        return str(self.path.relative_to(root))


@dataclass(frozen=True)
class Ref:
    """One import: the module it loads and, for ``from m import n``, the name."""

    line: int
    module: str
    name: str | None = None


def sources(root: Path) -> list[Source]:
    base = root / "include"
    paths = sorted((base / PACKAGE).rglob("*.py"))
    found = [Source(p, _module_name(p, base), ast.parse(p.read_text(), str(p))) for p in paths]
    _KNOWN.update(s.module for s in found if s.module)
    for folder in ("dags", "plugins", "spark_apps"):
        for p in sorted((root / folder).glob("*.py")):
            found.append(Source(p, None, ast.parse(p.read_text(), str(p))))
    return found


def _module_name(path: Path, base: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, with whether it sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        under = type_checking
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            under = True
        yield child, under
        yield from _walk(child, under)


def _absolute(src: Source, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    if src.module is None:  # a relative import outside the package: leave it as written
        return "." * node.level + (node.module or "")
    base = src.module.split(".")[: -node.level]  # (a package's __init__ is not used so)
    return ".".join([*base, node.module] if node.module else base)


def refs_of_node(src: Source, node: ast.AST, package_modules: frozenset[str]) -> list[Ref]:
    """The imports one node makes (``importlib.import_module("...")`` with a literal too)."""
    if isinstance(node, ast.Import):
        return [Ref(node.lineno, a.name) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        mod = _absolute(src, node)
        out = []
        for a in node.names:
            if f"{mod}.{a.name}" in package_modules:
                out.append(Ref(node.lineno, f"{mod}.{a.name}"))
            else:
                out.append(Ref(node.lineno, mod, a.name))
        return out
    if (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [Ref(node.lineno, node.args[0].value)]
    return []


def refs(src: Source, package_modules: frozenset[str]) -> list[Ref]:
    """Every import of ``src``, at any nesting level (``if TYPE_CHECKING:`` ones too)."""
    return [ref for node, _ in _walk(src.tree) for ref in refs_of_node(src, node, package_modules)]


def _package_module(module: str) -> str | None:
    """``riverdelta.x.y`` of a reference to ``riverdelta.x.y[.anything]`` (a module, not
    the package or one of its folders' ``__init__``)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        head = ".".join(parts[:n])
        if head in _KNOWN:
            return head
    return None


def _embedded(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in EMBEDDED)


def _is_product(src: Source) -> bool:
    if src.module is None:
        return True
    return not _embedded(src.module) and src.module not in ENTRY_POINTS


def check_product(root: Path, srcs: list[Source], package_modules: frozenset[str]) -> list[str]:
    out = []
    for src in srcs:
        if not _is_product(src):
            continue
        for ref in refs(src, package_modules):
            mod = _package_module(ref.module)
            if mod and _embedded(mod):
                out.append(
                    f"{src.rel(root)}:{ref.line}: [product] imports the embedded module {mod}; "
                    "move what the product needs into a product module"
                )
    return out


MODULE_LEVEL = "<module>"


def _units(src: Source) -> dict[str, list[ast.AST]]:
    """The file cut into what runs together: each top-level def or class (whole), and the
    rest of the module (``<module>``: what runs at import, decorators and defaults too)."""
    units: dict[str, list[ast.AST]] = {MODULE_LEVEL: []}
    for stmt in src.tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            units[stmt.name] = [stmt]
            units[MODULE_LEVEL] += stmt.decorator_list
            if not isinstance(stmt, ast.ClassDef):
                units[MODULE_LEVEL] += [
                    d for d in (*stmt.args.defaults, *stmt.args.kw_defaults) if d
                ]
        else:
            units[MODULE_LEVEL].append(stmt)
    return units


def _bindings(src: Source, package_modules: frozenset[str]) -> dict[str, tuple[str, str | None]]:
    """Names the file binds by importing from riverdelta: name -> (module, attribute or None)."""
    bound: dict[str, tuple[str, str | None]] = {}
    for node, _ in _walk(src.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _package_module(a.name) and a.asname:
                    bound[a.asname] = (a.name, None)
        elif isinstance(node, ast.ImportFrom):
            mod = _absolute(src, node)
            for a in node.names:
                if f"{mod}.{a.name}" in package_modules:
                    bound[a.asname or a.name] = (f"{mod}.{a.name}", None)
                elif _package_module(mod):
                    bound[a.asname or a.name] = (mod, a.name)
    return bound


def reached_code(srcs: list[Source], package_modules: frozenset[str]) -> dict[tuple[str, str], str]:
    """What a Spark driver can run: (module, top-level name) -> the unit that reaches it.

    From every line of spark_apps/*.py, follow the imports (at any nesting level) and
    the names used: ``from riverdelta.x import f`` then ``f``, ``x.f`` on an imported
    module, a same-module ``f``. Importing a module runs its ``<module>`` unit; using a
    class takes all of it. A function the driver never reaches may import what the
    driver does not have (``submit.build_command`` uses Airflow's Spark hook; the
    driver only parses its arguments with ``submit``).
    """
    by_module = {s.module: s for s in srcs if s.module}
    units = {s.module: _units(s) for s in srcs if s.module}
    bindings = {s.module: _bindings(s, package_modules) for s in srcs if s.module}
    reached: dict[tuple[str, str], str] = {}
    todo: list[tuple[Source, list[ast.AST], str]] = []

    def reach(module: str, name: str, why: str) -> None:
        if module not in by_module:
            return
        for _ in range(5):  # a name re-exported by ``from riverdelta.y import name``
            if name in units[module] or name not in bindings[module]:
                break
            target, attr = bindings[module][name]
            reach(module, MODULE_LEVEL, why)
            module, name = (target, attr or MODULE_LEVEL)
            if module not in by_module:
                return
        if name not in units[module]:
            name = MODULE_LEVEL  # a constant or something defined at import
        for key in ((module, MODULE_LEVEL), (module, name)):
            if key not in reached:
                reached[key] = why
                todo.append((by_module[module], units[module][key[1]], f"{module}.{key[1]}"))

    for src in srcs:
        if src.path.parent.name == "spark_apps":
            todo.append((src, [src.tree], src.path.name))
    while todo:
        src, nodes, why = todo.pop()
        own = src.module
        bound = _bindings(src, package_modules)
        for top in nodes:
            for node, tc in [(top, False), *_walk(top)]:
                if tc:
                    continue
                if isinstance(node, ast.Import | ast.ImportFrom):
                    for ref in refs_of_node(src, node, package_modules):
                        if mod := _package_module(ref.module):
                            reach(mod, ref.name or MODULE_LEVEL, why)
                elif isinstance(node, ast.Name):
                    if own and node.id in units[own]:
                        reach(own, node.id, why)
                    elif node.id in bound:
                        target, attr = bound[node.id]
                        reach(target, attr or MODULE_LEVEL, why)
                elif isinstance(node, ast.Attribute):
                    target = _dotted(node.value)
                    if target in bound and bound[target][1] is None:
                        reach(bound[target][0], node.attr, why)
                    elif target and _package_module(target) == target:
                        reach(target, node.attr, why)
    return reached


def driver_modules(srcs: list[Source], package_modules: frozenset[str]) -> dict[str, str]:
    """Package modules a Spark driver imports (module -> what first pulls it in)."""
    return {
        m: why
        for (m, name), why in reached_code(srcs, package_modules).items()
        if name == MODULE_LEVEL
    }


def check_spark_driver(
    root: Path, srcs: list[Source], package_modules: frozenset[str]
) -> list[str]:
    reached = reached_code(srcs, package_modules)
    out = []
    for src in srcs:
        if src.path.parent.name == "spark_apps":
            checked = [(src.tree, src.path.name, "")]
        elif src.module:
            units = _units(src)
            checked = [
                (node, f"{src.module}.{name}", f" (reached from {reached[(src.module, name)]})")
                for name, nodes in units.items()
                if (src.module, name) in reached
                for node in nodes
            ]
        else:
            continue
        for top, where, via in checked:
            for node, tc in [(top, False), *_walk(top)]:
                if tc or not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
                    continue
                for ref in refs_of_node(src, node, package_modules):
                    if ref.module == "airflow" or ref.module.startswith("airflow."):
                        out.append(
                            f"{src.rel(root)}:{ref.line}: [spark-driver] {where} imports "
                            f"{ref.module} and runs in a Spark driver{via}"
                        )
    return out


def check_private(root: Path, srcs: list[Source], package_modules: frozenset[str]) -> list[str]:
    out = []
    for src in srcs:
        # Names bound to riverdelta modules in this file -> the module.
        bound: dict[str, str] = {}
        for node, _ in _walk(src.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _package_module(a.name) and a.asname:
                        bound[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                mod = _absolute(src, node)
                for a in node.names:
                    if f"{mod}.{a.name}" in package_modules:
                        bound[a.asname or a.name] = f"{mod}.{a.name}"
        for ref in refs(src, package_modules):
            mod = _package_module(ref.module)
            if not mod or mod == src.module:
                continue
            private = ref.name if ref.name and _private(ref.name) else None
            if private is None and _private(ref.module.split(".")[-1]):
                private = ref.module.split(".")[-1]
            if private:
                out.append(
                    f"{src.rel(root)}:{ref.line}: [private] imports {private} from {mod}; "
                    "give it a public name in its module"
                )
        for node, _ in _walk(src.tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            target = _dotted(node.value)
            mod = bound.get(target) if target else None
            if mod is None and target and _package_module(target) == target:
                mod = target  # riverdelta.x._y after ``import riverdelta.x``
            if mod and mod != src.module:
                out.append(
                    f"{src.rel(root)}:{node.lineno}: [private] uses {target}.{node.attr}, "
                    f"a private name of {mod}; give it a public name in its module"
                )
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def violations(root: Path) -> list[str]:
    srcs = sources(root)
    package_modules = frozenset(s.module for s in srcs if s.module)
    return [
        *check_product(root, srcs, package_modules),
        *check_spark_driver(root, srcs, package_modules),
        *check_private(root, srcs, package_modules),
    ]


# --------------------------------------------------------------------------- the tests


def test_the_sources_keep_the_import_rules():
    srcs = sources(ROOT)
    assert len(srcs) > 20, f"found only {len(srcs)} sources under {ROOT}: the walk is wrong"
    found = violations(ROOT)
    assert not found, "import rules broken:\n" + "\n".join(found)


def test_the_spark_driver_set_is_computed_from_the_imports():
    srcs = sources(ROOT)
    pulled = driver_modules(srcs, frozenset(s.module for s in srcs if s.module))
    # spark_apps/ingest.py runs riverdelta.stream.ingest; if the walk finds nothing it checks nothing.
    assert "riverdelta.stream.ingest" in pulled and "riverdelta.launch.submit" in pulled, sorted(
        pulled
    )


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_catches_each_rule(tmp_path):
    """A synthetic tree with one violation of each kind: the checker must name them all."""
    pkg = f"include/{PACKAGE}"
    for folder in ("", "/embedded", "/ops"):
        _write(tmp_path, f"{pkg}{folder}/__init__.py", "")
    _write(tmp_path, f"{pkg}/embedded/kafka_broker.py", "def create_topics(): ...\n")
    _write(tmp_path, f"{pkg}/cli.py", "from riverdelta.embedded import kafka_broker\n")  # allowed
    _write(
        tmp_path,
        f"{pkg}/ops/control.py",
        "def _stop_deployment(): ...\n\ndef stop():\n    return _stop_deployment()\n",
    )
    _write(
        tmp_path,
        f"{pkg}/product.py",
        "from __future__ import annotations\n"
        "\n"
        "\n"
        "def topics():\n"
        "    from riverdelta.embedded import kafka_broker\n"  # line 5: product -> embedded
        "\n"
        "    return kafka_broker.create_topics()\n",
    )
    _write(
        tmp_path,
        f"{pkg}/helper.py",
        "from riverdelta.ops import control\n"
        "from riverdelta.ops.control import _stop_deployment\n"  # line 2: private import
        "\n"
        "\n"
        "def run():\n"
        "    import airflow.sdk\n"  # line 6: airflow in the driver (helper <- driver)
        "\n"
        "    control._stop_deployment()\n"  # line 8: private attribute
        "    return _stop_deployment, airflow.sdk\n"
        "\n"
        "\n"
        "def for_airflow_only():\n"
        "    import airflow\n"  # line 13: the driver never reaches this function
        "\n"
        "    return airflow\n",
    )
    _write(tmp_path, "spark_apps/app.py", "def main():\n    from riverdelta.helper import run\n")
    _write(tmp_path, "dags/topics.py", "import riverdelta.embedded.kafka_broker as kb\n")

    found = violations(tmp_path)
    expected = {
        f"{pkg}/product.py:5: [product]",
        "dags/topics.py:1: [product]",
        f"{pkg}/helper.py:6: [spark-driver]",
        f"{pkg}/helper.py:2: [private]",
        f"{pkg}/helper.py:8: [private]",
    }
    heads = {v.split("] ")[0] + "]" for v in found}
    assert heads == expected, "\n".join(found)
    # The driver set came from the imports: product.py is not in it, helper.py is, but
    # not helper.for_airflow_only, which nothing the driver runs calls.
    srcs = sources(tmp_path)
    pulled = driver_modules(srcs, frozenset(s.module for s in srcs if s.module))
    assert set(pulled) == {"riverdelta.helper", "riverdelta.ops.control"}
    reached = reached_code(srcs, frozenset(s.module for s in srcs if s.module))
    assert ("riverdelta.helper", "run") in reached
    assert ("riverdelta.helper", "for_airflow_only") not in reached
