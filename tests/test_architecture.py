"""The package's layers, read from its imports: no circles, and no module imports a layer above its own
(methods never reach the reporting stack; measurement never reaches a method)."""
import ast

from tests.conftest import REPO

PKG = REPO / "src" / "gcompress_bench"
# lowest first; a module may import its own layer and the ones below
LAYERS = [
    {"gcompress_bench", "gcompress_bench.fmt", "gcompress_bench.cache", "gcompress_bench.corpus",
     "gcompress_bench.dimtable", "gcompress_bench.registry"},
    {"gcompress_bench.models"},
    {"gcompress_bench.measure"},
    {"gcompress_bench.results.store", "gcompress_bench.results.stats", "gcompress_bench.results.plots"},   # primitives
    {"gcompress_bench.methods"},
    {"gcompress_bench.suites"},
    {"gcompress_bench.results"},
    {"gcompress_bench.config"},
    {"gcompress_bench.cli", "gcompress_bench.llm_run", "gcompress_bench.llm_eval", "gcompress_bench.__main__"},
]


def module_name(path):
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module):
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "gcompress_bench"):
            return i
    assert module == "gcompress_bench", module
    return 0


def imports(path, lazy=True):
    """gcompress_bench modules a file imports: at any depth of its code, or (lazy=False) as it loads."""
    out = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gcompress_bench"):
            assert node.level == 0, f"{path}: relative import"
            for a in node.names:   # `from gcompress_bench.x import y`: y may itself be a module
                full = f"{node.module}.{a.name}"
                out.add(full if (PKG.parent / full.replace(".", "/")).with_suffix(".py").exists()
                        or (PKG.parent / full.replace(".", "/")).is_dir() else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gcompress_bench")}
    return out


def graph(lazy=True):
    return {module_name(p): imports(p, lazy) for p in PKG.rglob("*.py")}


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                    for m, deps in graph().items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_the_package_has_no_import_circles():
    """As modules load; an import inside a function runs after both modules are loaded."""
    g = graph(lazy=False)
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(d_ for d_ in g[m] if d_ in g):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_methods_never_import_the_reporting_stack():
    g = graph()
    offending = sorted(f"{m} imports {d}" for m, deps in g.items() if m.startswith("gcompress_bench.methods")
                       for d in deps if d.startswith(("gcompress_bench.results", "gcompress_bench.suites")))
    assert offending == []
