"""fedlab's modules import in one direction: a graph built from the source, function-local imports included."""

import ast
import pathlib

import fedlab

PACKAGE = pathlib.Path(fedlab.__file__).parent

# Bottom to top. A module may import modules of its own layer or below, never above;
# and, whatever the layers, never in a circle.
LAYERS = [
    {"validation", "registry", "runtime", "ports", "array_files", "plots", "certs", "tls_proxy", "stats",
     "encryption", "wire"},  # foundations, no fedlab imports above
    {"storage", "data", "partition", "models", "accounting", "attacks", "fedprox", "fedopt", "array_training",
     "seeded", "tensorboard", "distributed", "systems", "secagg", "secure_rounds", "split_rounds", "scaffold", "personal", "qffl",
     "ckks", "homomorphic_rounds", "asynchronous", "buffered_rounds",
     "robust", "finetune", "tasks", "survival", "site_data"},                                       # components
    {"algorithms", "aggregation", "evaluation"},                           # components built on components
    {"config"},                                                            # the experiment, validated
    {"clients", "sampling", "sites", "site_rounds"},                       # who holds what, who trains
    {"processes"},                                                         # built TFF processes
    {"runner", "site_service"},                                            # the round loop; a site's
    {"sweeps", "privacy", "crosssilo", "tcga", "analysis", "catalog", "participation", "comparison", "report"},           # studies made of runs
    {"widgets", "reproduce"},                                              # notebooks
    {"__main__", "__init__"},                                              # entry points
]
LAYER = {module: i for i, layer in enumerate(LAYERS) for module in layer}


def imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(imported fedlab module, names taken from it) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.append((node.module.split(".")[0], [a.name for a in node.names]))
            elif node.level == 1:
                found += [(a.name, []) for a in node.names]
            elif node.module and node.module.split(".")[0] == "fedlab":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.append((parts[1], [a.name for a in node.names]))
                else:
                    found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fedlab" and len(parts) > 1:
                    found.append((parts[1], []))
    return found


def graph() -> dict[str, list[tuple[str, list[str]]]]:
    return {p.stem: imports(p) for p in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer():
    assert set(graph()) == set(LAYER), "add new modules to LAYERS (and think about where they belong)"


def test_no_module_imports_another_in_a_circle():
    edges = {m: {t for t, _ in deps if t in LAYER and t != m} for m, deps in graph().items()}
    edges["__init__"] = set()  # the package's entry point imports everything; nothing imports it back
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_imports_point_down_the_layers():
    upward = [f"{m} (layer {LAYER[m]}) imports {t} (layer {LAYER[t]})"
              for m, deps in graph().items() for t, _ in deps
              if t in LAYER and t != m and m != "__init__" and LAYER[t] > LAYER[m]]
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = [f"{m} imports {t}.{name}" for m, deps in graph().items() for t, names in deps
               for name in names if name.startswith("_") and t != m]
    assert not private, "\n".join(private)


def test_the_test_sees_function_local_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from .runner import _secret\n    import fedlab.config\n")
    assert imports(source) == [("runner", ["_secret"]), ("config", [])]
