"""fedlab's modules import in one direction: a graph built from the source, function-local imports included."""

import ast
import pathlib

import fedlab

PACKAGE = pathlib.Path(fedlab.__file__).parent

# Folders, bottom to top: a module imports modules of its own folder or of folders below, never above.
FOLDERS = ["reporting", "core", "workers", "data", "models", "systems", "protection", "rounds", "algorithms",
           "aggregators", "experiment", "studies", "notebook", ""]  # "": the package's entry points
FOLDER_RANK = {folder: i for i, folder in enumerate(FOLDERS)}

# Modules, bottom to top. A module may import modules of its own layer or below, never above;
# and, whatever the layers, never in a circle.
LAYERS = [
    {"validation", "registry", "runtime", "ports", "array_files", "plots", "certs", "tls_proxy", "stats",
     "stateless_keys", "tff_speedups",
     "encryption", "wire", "profiling", "spawning", "recent", "quiet_periods", "scratch"},  # foundations, no fedlab imports above
    {"storage", "data", "partition", "models", "accounting", "attacks", "fedprox", "fedopt", "array_training",
     "distributed_dp", "skellam_shares",
     "seeded", "tensorboard", "distributed", "systems", "secagg", "secure_rounds", "split_rounds", "scaffold",
     "personal", "qffl", "ckks", "homomorphic_rounds", "asynchronous", "buffered_rounds",
     "robust", "finetune", "tasks", "survival", "site_data"},                                       # components
    {"algorithms", "aggregation", "evaluation"},                           # components built on components
    {"config"},                                                            # the experiment, validated
    {"clients", "sampling", "sites", "site_rounds"},                       # who holds what, who trains
    {"processes"},                                                         # built TFF processes
    {"runner", "site_service"},                                            # the round loop; a site's
    {"pool"},                                                              # runs spread over the cores
    {"sweeps", "privacy", "crosssilo", "tcga", "analysis", "catalog", "participation", "comparison", "report"},
    {"widgets", "reproduce"},                                              # notebooks
    {"__main__", "__init__"},                                              # entry points
]
LAYER = {module: i for i, layer in enumerate(LAYERS) for module in layer}


def modules() -> dict[str, pathlib.Path]:
    """Every module by its name (names are unique across folders; a folder's ``__init__`` only describes it)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (path.name == "__init__.py" and path.parent != PACKAGE) or any(
                part.startswith(".") for part in path.relative_to(PACKAGE).parts):
            continue
        assert path.stem not in found, f"two modules named {path.stem}: {found.get(path.stem)} and {path}"
        found[path.stem] = path
    return found


def folder_of(path: pathlib.Path) -> str:
    return "" if path.parent == PACKAGE else path.parent.relative_to(PACKAGE).as_posix()


def imports(path: pathlib.Path, package: tuple = ("fedlab",)) -> list[tuple[str, list[str]]]:
    """(imported fedlab module, names taken from it) for every import in the file, at any depth; ``package`` is
    the file's package, for relative imports."""
    found = []

    def add(parts: list[str], names: list[str]) -> None:
        if parts[:1] != ["fedlab"]:
            return
        inner = parts[1:]
        if len(inner) >= 2 or (len(inner) == 1 and inner[0] not in FOLDER_RANK):
            found.append((inner[-1], names))  # a module: fedlab.folder.module, or a name at the top
        else:
            found.extend((name, []) for name in names)  # from fedlab.folder import module, ...

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                add(base + (node.module.split(".") if node.module else []), names)
            elif node.module:
                add(node.module.split("."), names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fedlab" and "." in alias.name:
                    add(alias.name.split("."), [])
    return found


def graph() -> dict[str, list[tuple[str, list[str]]]]:
    return {m: imports(p, ("fedlab", *filter(None, [folder_of(p)]))) for m, p in modules().items()}


def test_every_module_is_in_a_folder_and_a_layer():
    found = modules()
    assert {folder_of(p) for p in found.values()} <= set(FOLDER_RANK), "add new folders to FOLDERS"
    assert set(found) == set(LAYER), "add new modules to LAYERS (and think about where they belong)"


def test_folders_import_down():
    found = modules()
    upward = sorted({f"{folder_of(found[m])}/{m} imports {folder_of(found[t])}/{t}"
                     for m, deps in graph().items() for t, _ in deps if t in found and m != "__init__"
                     and FOLDER_RANK[folder_of(found[t])] > FOLDER_RANK[folder_of(found[m])]})
    assert not upward, "\n".join(upward)


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
    source.write_text("def f():\n    from .runner import _secret\n    import fedlab.experiment.config\n"
                      "    from ..core import runtime, ports\n    from fedlab.core.storage import code_version\n")
    assert sorted(imports(source, ("fedlab", "experiment"))) == sorted([
        ("runner", ["_secret"]), ("config", []), ("runtime", []), ("ports", []), ("storage", ["code_version"])])


def test_fedlabs_own_components_count_as_built_in_from_every_folder():
    # registry.FEDLAB_PACKAGE must be the package, not the folder registry.py sits in
    for registry, name in ((fedlab.ALGORITHMS, "fedavg"), (fedlab.DATASETS, "digits"), (fedlab.MODELS, "2nn"),
                           (fedlab.AGGREGATORS, "secagg"), (fedlab.PARTITIONERS, "dirichlet"), (fedlab.TASKS,
                                                                                                 "classification")):
        assert registry.entry(name).builtin, f"{registry.kind} {name!r} is fedlab's own"
