"""README command 1 (``pip install -e .``) pulls no PyTorch, and training/inference never import it."""

import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_STACK = ("torch", "torchvision", "diffusers", "transformers", "lpips", "pytorch-fid")
# Everything a user runs without the [test]/[eval] extras: training, inference, loading, export.
TORCH_FREE_MODULES = ("seamless_jax.main", "seamless_jax.train.loop", "seamless_jax.inpaint",
                      "seamless_jax.loading", "seamless_jax.export", "seamless_jax.convert",
                      "seamless_jax.data.prepare", "seamless_jax.data.demo",
                      "seamless_jax.metrics", "seamless_jax.diffusion.sampler",
                      "seamless_jax.aot")


def _setup_lists() -> dict:
  """The module-level list/dict literals of setup.py (INSTALL_REQUIRES, EXTRAS_REQUIRE)."""
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
          if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
          and isinstance(node.value, (ast.List, ast.Dict))}


def _name(requirement: str) -> str:
  return re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_base_install_has_no_torch_stack_and_extras_do():
  lists = _setup_lists()
  base = {_name(r) for r in lists["INSTALL_REQUIRES"]}
  assert base, "setup.py has no INSTALL_REQUIRES list"
  assert not base & set(TORCH_STACK), sorted(base & set(TORCH_STACK))
  extras = lists["EXTRAS_REQUIRE"]
  for extra in ("test", "notebooks"):
    names = {_name(r) for r in extras[extra]}
    assert {"torch", "diffusers", "transformers", "matplotlib"} <= names, (extra, names)
  # libtpu and the CUDA plugin print start-up errors in every JAX process on a CPU machine:
  # they come only with the [aot] extra, both pinned to the installed jax by jax's own extras.
  assert not base & {"libtpu", "jax-cuda12-plugin"} and "jax" in base
  assert extras["aot"] == ["jax[tpu,cuda12-local]"]


def test_training_inference_and_export_import_no_torch():
  code = (f"import sys; import {', '.join(TORCH_FREE_MODULES)}; "
          f"loaded = sorted(m for m in {TORCH_STACK!r} if m.replace('-', '_') in sys.modules); "
          "assert not loaded, loaded")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_source_folder_is_an_installed_package():
  """A folder of modules without ``__init__.py`` works from a checkout but is left out of a
  wheel by ``find_packages``."""
  from setuptools import find_packages  # pylint: disable=import-outside-toplevel
  packages = set(find_packages(ROOT, include=["seamless_jax", "seamless_jax.*"]))
  folders = {os.path.relpath(d, ROOT).replace(os.sep, ".")
             for d, _, files in os.walk(os.path.join(ROOT, "seamless_jax"))
             if any(f.endswith(".py") for f in files)}
  assert folders <= packages, sorted(folders - packages)
