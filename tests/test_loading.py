"""seamless_jax.loading: training workdirs and diffusers folders as model sources."""

import os

import jax
import numpy as np
import pytest

from seamless_jax import convert
from seamless_jax import loading
from seamless_jax import workdir as workdir_lib
from seamless_jax.train import checkpoint as ckpt_lib
from seamless_jax.train import trainer as trainer_lib
import tiny



def _saved_state(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt = ckpt_lib.Checkpointer(workdir)
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  ckpt.close()
  return restored["state"]


def test_two_step_workdir_loads_its_checkpoint_and_the_frozen_models_training_used(tiny_workdirs):
  workdir = tiny_workdirs["two_step"]
  pipe = loading.load_pipeline(workdir)
  assert pipe.info == {"source": workdir, "kind": "workdir", "mode": "two_step", "step": 2,
                       "ema": True}
  assert pipe.scheduler_config["prediction_type"] == "v_prediction"
  saved = _saved_state(workdir, 2)
  tiny.assert_same_params(pipe.unet_params, saved["ema_params"])
  raw = loading.restore_workdir(workdir, step=1, ema=False)
  assert raw.step == 1 and not raw.ema
  tiny.assert_same_params(raw.params, _saved_state(workdir, 1)["params"])
  # The frozen (never checkpointed) tiny VAE and text encoder are rebuilt bit-for-bit.
  config = tiny.tiny_config("two_step", tiny_workdirs["data"])
  trainer = trainer_lib.setup(config)
  tiny.assert_same_params(pipe.vae_params, trainer.frozen["vae"])
  tiny.assert_same_params(pipe.text_encoder_params, trainer.frozen["text"])
  assert pipe.tokenizer.vocab_size == trainer.tokenizer.vocab_size


def test_bfloat16_frozen_training_loads_its_frozen_models_in_float32(tiny_workdirs, tmp_path):
  """``frozen_dtype='bfloat16'`` is a training-memory setting: loading such a workdir rebuilds the
  frozen VAE/text encoder unrounded, the same arrays as a float32 run's."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "bf16_frozen")
  shutil.copytree(tiny_workdirs["two_step"], workdir)
  path = os.path.join(workdir, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  config["frozen_dtype"] = "bfloat16"
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  bf16_run = loading.restore_workdir(workdir)
  float32_run = loading.restore_workdir(tiny_workdirs["two_step"])
  assert {x.dtype for x in jax.tree_util.tree_leaves(bf16_run.frozen)} == {np.dtype(np.float32)}
  tiny.assert_same_params(bf16_run.frozen, float32_run.frozen)


def test_vae_source_gives_the_decoder_and_keeps_the_base_encoder(tiny_workdirs):
  base = loading.load_pipeline(tiny_workdirs["two_step"])
  full = loading.load_pipeline(tiny_workdirs["two_step"], vae=tiny_workdirs["vae_finetune"])
  _, finetuned = loading.load_vae(tiny_workdirs["vae_finetune"])
  trained = _saved_state(tiny_workdirs["vae_finetune"], 2)["ema_params"]["vae"]
  assert sorted(trained) == sorted(loading.VAE_DECODER_PARTS)
  for name in loading.VAE_DECODER_PARTS:
    tiny.assert_same_params(full.vae_params[name], trained[name])
    tiny.assert_same_params(finetuned[name], trained[name])
  for name in set(base.vae_params) - set(loading.VAE_DECODER_PARTS):
    tiny.assert_same_params(full.vae_params[name], base.vae_params[name])
  changed = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                         full.vae_params["decoder"], base.vae_params["decoder"])
  assert max(jax.tree.leaves(changed)) > 0  # two steps of fine-tuning moved the decoder
  assert full.info["vae"] == tiny_workdirs["vae_finetune"]


def test_vae_pretrained_config_field_puts_that_vae_into_training(tiny_workdirs):
  config = tiny.tiny_config("two_step", tiny_workdirs["data"],
                               vae_pretrained=tiny_workdirs["vae_finetune"])
  models = loading.build_models(config, vocab_size=1000)
  _, finetuned = loading.load_vae(tiny_workdirs["vae_finetune"])
  tiny.assert_same_params(models.vae_params, finetuned)


def test_diffusers_folder_round_trip(tiny_workdirs, tmp_path):
  pipe = loading.load_pipeline(tiny_workdirs["two_step"])
  folder = str(tmp_path / "sd")
  convert.write_pipeline(pipe, folder, tokenizer_folder=os.path.join(tiny_workdirs["data"],
                                                                    "tokenizer"),
                        scheduler_overrides={"prediction_type": "v_prediction"})
  again = loading.load_pipeline(folder)
  assert again.info == {"source": folder, "kind": "diffusers"}
  tiny.assert_same_params(again.unet_params, pipe.unet_params)
  assert again.scheduler_config["prediction_type"] == "v_prediction"
  vae, vae_params = loading.load_vae(folder)
  tiny.assert_same_params(vae_params, pipe.vae_params)


def test_clear_errors_name_the_source(tiny_workdirs, tmp_path):
  with pytest.raises(loading.SourceError, match="no checkpoint for step 7; saved steps: 1, 2"):
    loading.load_pipeline(tiny_workdirs["two_step"], step=7)
  with pytest.raises(loading.SourceError, match="is a vae_finetune workdir"):
    loading.load_pipeline(tiny_workdirs["vae_finetune"])
  with pytest.raises(loading.SourceError, match="does not exist"):
    loading.load_pipeline(str(tmp_path / "nowhere"))
  with pytest.raises(loading.SourceError, match="neither a diffusers pipeline folder"):
    loading.load_pipeline(str(tmp_path))
  broken = tmp_path / "broken"
  (broken / "checkpoints" / "3" / "state").mkdir(parents=True)
  (broken / "config.json").write_text(open(os.path.join(tiny_workdirs["two_step"],
                                                        "config.json")).read())
  with pytest.raises(loading.SourceError, match="damaged or unreadable"):
    loading.load_pipeline(str(broken))


def test_reading_a_checkpoint_prints_no_orbax_warnings(tiny_workdirs, caplog):
  with caplog.at_level("INFO"):
    arrays = workdir_lib.restore_arrays(tiny_workdirs["two_step"], 1, ("step",))
  assert int(arrays["step"]) == 1
  assert not [r for r in caplog.records if "orbax" in r.pathname], caplog.text
