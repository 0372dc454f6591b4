"""Config files loaded by path or name (seamless_jax.config_files), like --config=PATH:VARIANT."""

import os
import sys

import pytest

from seamless_jax import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def test_name_and_path_give_the_files_get_config():
  by_name = config_files.load("two_step", "tiny", folder=CONFIGS)
  by_path = config_files.load(os.path.join(CONFIGS, "two_step.py"), "tiny")
  assert by_name.to_dict() == by_path.to_dict()
  assert by_name.mode == "two_step" and by_name.data.resolution == 32
  assert config_files.load("vae_finetune", "sd15,v5e", folder=CONFIGS).mode == "vae_finetune"
  assert config_files.load("standard", folder=CONFIGS).mode == "standard"  # get_config()


def test_loading_leaves_sys_path_and_modules_as_they_were():
  path, modules = list(sys.path), {k for k in sys.modules if k.split(".")[0] == "configs"}
  config_files.load("standard", "tiny", folder=CONFIGS)
  assert sys.path == path
  assert {k for k in sys.modules if k.split(".")[0] == "configs"} == modules


def test_a_missing_file_is_named():
  with pytest.raises(FileNotFoundError, match=r"nope\.py.*two_step"):
    config_files.load("nope", "tiny", folder=CONFIGS)
