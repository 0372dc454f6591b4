"""The package's layers (docs/architecture.md): imports only point down, no circles, lazy
imports only for optional extras, and nothing under seamless_jax/ imports the checkout's
``configs/`` or ``tests/`` (setup.py ships only ``seamless_jax*``)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "seamless_jax"
CHECKOUT_ONLY = ("configs", "tests", "tiny", "benchmarks")

# Bottom to top; a module may import its own layer (without circles) and the layers below.
LAYERS = (
    ("foundation", ("console", "models", "data", "diffusion", "runtime", "metrics",
                    "pictures")),
    ("model folders", ("convert",)),
    ("neutral", ("objectives", "build", "workdir", "config_files")),
    ("loading", ("loading",)),
    ("training", ("train",)),
    ("applications", ("inpaint", "export", "eval", "aot", "main", "app")),
    ("experiments", ("experiments",)),
)
# Imported inside functions on purpose: optional extras (by top-level name), and what must load
# late: the TPU Pallas kernels and topology descriptions (only when a TPU target asks for them),
# and jax itself in the two modules the command-line tools import before the environment that
# jax reads at import (JAX_PLATFORMS, libtpu settings) is set.
LAZY_OPTIONAL = {
    "torch", "torchvision", "transformers", "diffusers", "pytorch_fid",  # [eval] / [test]
    "matplotlib",                                                         # [experiments]
    "cv2",                                                                # [eval] (Poisson)
    "gradio",                                                             # [app]
    "tensorflow_datasets",                                                # data.source='tfds'
    "tqdm", "ftfy", "sklearn",                                            # used when installed
}
LAZY_LATE = {"jax.experimental.pallas.ops.tpu", "jax.experimental.topologies",
             "tensorboardX"}  # tensorboardX imports torch when it is installed
LATE_JAX_IMPORTERS = ("seamless_jax.console", "seamless_jax.runtime.hardware")  # plain `import jax`


def _modules() -> dict[str, str]:
  """``{'seamless_jax.x.y': path}`` for every module of the package."""
  found = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
  return found


def _imports(path: str, modules) -> list[tuple[str, bool]]:
  """``(imported name, lazy)`` for each import in the file; ``from a import b`` names ``a.b``
  (outside the package, or a submodule of it), else the package module ``a``."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  lazy_nodes = {id(sub) for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                for sub in ast.walk(node)}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [f"{node.module}.{alias.name}"
               if f"{node.module}.{alias.name}" in modules or not node.module.startswith(PACKAGE)
               else node.module for alias in node.names]
    else:
      continue
    found += [(name, id(node) in lazy_nodes) for name in names]
  return found


def _layer(module: str) -> int:
  top = module.split(".")[1] if module.count(".") else ""
  for index, (_, members) in enumerate(LAYERS):
    if top in members:
      return index
  raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: {name for name, _ in _imports(p, modules) if name in modules and name != m}
          for m, p in modules.items()}


def test_package_imports_nothing_from_the_checkout():
  modules = _modules()
  offenders = [f"{module}: {name}" for module, path in modules.items()
               for name, _ in _imports(path, modules) if name.split(".")[0] in CHECKOUT_ONLY]
  assert not offenders, offenders


def _upward(graph: dict[str, set[str]]) -> list[str]:
  return [f"{module} ({LAYERS[_layer(module)][0]}) imports {name} ({LAYERS[_layer(name)][0]})"
          for module, imported in graph.items() if module != PACKAGE
          for name in sorted(imported) if name != PACKAGE and _layer(name) > _layer(module)]


def test_no_module_imports_a_higher_layer():
  offenders = _upward(_graph())
  assert not offenders, "\n".join(offenders)


def test_no_import_cycles():
  graph = _graph()
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done

  def visit(module: str, path: list[str]):
    state[module] = 1
    for name in sorted(graph[module]):
      if state.get(name) == 1:
        cycle = path[path.index(name):] + [name] if name in path else [module, name]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if name not in state:
        visit(name, path + [name])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])


def test_lazy_imports_are_only_optional_extras():
  modules = _modules()
  offenders = [f"{module}: {name}" for module, path in modules.items()
               for name, lazy in _imports(path, modules)
               if lazy and name.split(".")[0] not in LAZY_OPTIONAL
               and not any(name == late or name.startswith(late + ".") for late in LAZY_LATE)
               and not (name == "jax" and module in LATE_JAX_IMPORTERS)]
  assert not offenders, "\n".join(sorted(set(offenders)))


def test_the_layer_check_fails_on_an_upward_import():
  upward = {f"{PACKAGE}.loading": {f"{PACKAGE}.train.loop", f"{PACKAGE}.build"}}
  assert _upward(upward) == [f"{PACKAGE}.loading (loading) imports {PACKAGE}.train.loop "
                             "(training)"]
