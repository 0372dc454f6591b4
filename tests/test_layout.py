"""The installed package stands alone: nothing under seamless_jax/ imports the checkout's
``configs/`` or ``tests/`` (setup.py ships only ``seamless_jax*``)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_ONLY = ("configs", "tests", "tiny", "benchmarks")


def _imported_modules(path: str):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_package_imports_nothing_from_the_checkout():
  offenders = []
  for folder, _, files in os.walk(os.path.join(ROOT, "seamless_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        offenders += [f"{os.path.relpath(path, ROOT)}: {module}"
                      for module in _imported_modules(path)
                      if module.split(".")[0] in CHECKOUT_ONLY]
  assert not offenders, offenders
