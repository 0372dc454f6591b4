"""Training config files by path or name, loaded the way ``--config=PATH:VARIANT`` loads them.

The config files live in the checkout's top-level ``configs/`` (``configs/two_step.py``, ...),
which the installed package does not ship; the mode configs import their shared base as
``from configs import default``. :func:`load` executes a file by path (as ml_collections'
``config_flags`` does) with ``configs`` importable as that folder for the duration of the call
only: ``sys.path`` is not touched and ``sys.modules`` is restored afterwards.

  load("two_step", "tiny")                    # configs/two_step.py:tiny of the checkout
  load("configs/vae_finetune.py", "sd15,v5e")   # a path, as given to --config
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import ml_collections

PACKAGE = "configs"  # the name the mode configs import their base under
BASE_FILE = "default.py"


def configs_dir() -> str | None:
  """The checkout's ``configs/`` (under the working directory, else beside the package); None
  when neither exists (an installed package run outside the checkout)."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for folder in (os.path.join(os.getcwd(), PACKAGE), os.path.join(checkout, PACKAGE)):
    if os.path.isfile(os.path.join(folder, BASE_FILE)):
      return folder
  return None


def config_path(path_or_name: str, folder: str | None = None) -> str:
  """``two_step`` -> ``<folder or configs_dir()>/two_step.py``; a path (with a separator or
  ``.py``) is returned as given. Raises ``FileNotFoundError`` when no configs folder exists."""
  if os.sep in path_or_name or "/" in path_or_name or path_or_name.endswith(".py"):
    return path_or_name
  folder = folder or configs_dir()
  if folder is None:
    raise FileNotFoundError(f"config {path_or_name!r}: no {PACKAGE}/ folder (run from the "
                            "repository checkout or pass the config file's path)")
  return os.path.join(folder, f"{path_or_name}.py")


def load(path_or_name: str, variant: str | None = None, *,
         folder: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(variant)`` of a config file (``get_config()`` when ``variant`` is None).

  Args:
    path_or_name: a file path (``configs/two_step.py``) or a mode name (``two_step``) looked up
      in ``folder`` (default: :func:`configs_dir`).
    variant: the part after ``:`` in ``--config=PATH:VARIANT`` (``tiny``, ``sd15,v5e``, ...).
    folder: the configs folder for names and for ``from configs import ...`` inside the file.
  Raises:
    FileNotFoundError: naming the file when it does not exist.
  """
  path = config_path(path_or_name, folder)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found{_listing(os.path.dirname(path))}")
  base = folder or _base_folder(path)
  name = "_config_" + os.path.splitext(os.path.basename(path))[0]
  with _importable_as_configs(base):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if variant is None else module.get_config(variant)


def _listing(folder: str) -> str:
  """`` (configs there: a, b)`` for an error message; empty when ``folder`` has none."""
  folder = folder or "."
  if not os.path.isdir(folder):
    return ""
  names = sorted(name[:-3] for name in os.listdir(folder)
                 if name.endswith(".py") and not name.startswith("_"))
  return f" (configs there: {', '.join(names)})" if names else ""


def _base_folder(path: str) -> str | None:
  """The folder ``configs`` means for ``path``: its own if it holds ``default.py``, else the
  checkout's."""
  own = os.path.dirname(os.path.abspath(path))
  return own if os.path.isfile(os.path.join(own, BASE_FILE)) else configs_dir()


@contextlib.contextmanager
def _importable_as_configs(folder: str | None):
  """``import configs.<x>`` finds ``folder/<x>.py`` inside the block; ``sys.modules`` entries
  named ``configs*`` are put back as they were afterwards."""
  if folder is None:
    yield
    return
  owned = lambda key: key == PACKAGE or key.startswith(PACKAGE + ".")
  saved = {key: module for key, module in sys.modules.items() if owned(key)}
  for key in saved:
    del sys.modules[key]
  package = types.ModuleType(PACKAGE)
  package.__path__ = [os.path.abspath(folder)]
  sys.modules[PACKAGE] = package
  try:
    yield
  finally:
    for key in [key for key in sys.modules if owned(key)]:
      del sys.modules[key]
    sys.modules.update(saved)
