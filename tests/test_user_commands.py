"""What a new user meets first: every command's --help (named as it is run, each option
described with its default, the training command's without absl's noise) and the folders
README suggests kept out of git (issue 19 §2.5-6)."""

import argparse
import os
import subprocess

import pytest

from seamless_jax import app
from seamless_jax import export
from seamless_jax import inpaint
from seamless_jax import main as main_lib
from seamless_jax.data import prepare
from seamless_jax.eval import brushbench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {"seamless_jax.inpaint": inpaint.build_parser, "seamless_jax.app": app.build_parser,
           "seamless_jax.export": export.build_parser,
           "seamless_jax.eval.brushbench": brushbench.build_parser,
           "seamless_jax.data.prepare": prepare.build_parser}


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
  """Options without a description, or with a default their description does not state."""
  missing = []
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
      continue
    name = "/".join(action.option_strings)
    if not action.help:
      missing.append(f"{name}: no description")
    elif (not action.required and action.default is not None and action.default is not False
          and "default" not in action.help.lower()):
      missing.append(f"{name}: default {action.default!r} not stated")
  return missing


@pytest.mark.parametrize("module", sorted(PARSERS))
def test_every_option_says_what_it_does_and_its_default(module):
  parser = PARSERS[module]()
  assert parser.prog == f"python -m {module}"
  assert not _undocumented(parser), _undocumented(parser)


def test_the_check_catches_a_bare_option():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0, help="random seed")
  assert _undocumented(parser) == ["--steps: no description", "--seed: default 0 not stated"]


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_training_help_has_no_absl_noise(flag, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main_lib.parse_flags(["main.py", flag])
  assert exit_info.value.code in (0, None)
  text = capsys.readouterr().out
  assert "main.py:" not in text and "(default: 'None')" not in text
  for needed in ("--config=PATH[:VARIANT]", "--workdir=DIR", "--config.<field>=<value>",
                 "configs/two_step.py", ":demo"):
    assert needed in text


def test_the_folders_readme_writes_to_are_git_ignored():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  paths = ["runs/demo/x", "outputs/result.png", "exports/seamless_sd15/model_index.json"]
  assert all(path.split("/")[0] + "/" in readme for path in paths)
  proc = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  assert proc.stdout.split() == paths, proc.stdout + proc.stderr
