"""Train step on one device: NaN batches are skipped, gradient accumulation, EMA, loss falls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seamless_jax.data import pipeline
from seamless_jax.train import loop
from seamless_jax.train import trainer as trainer_lib
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import steps as steps_lib
import tiny

pytestmark = pytest.mark.slow  # every test here compiles and runs real train steps


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data  # the session's photos (tests/conftest.py); read-only here


@pytest.fixture(scope="module")
def trainer(data_dir):
  """One tiny two_step trainer shared by the tests that only call its step (compiles once)."""
  return trainer_lib.setup(tiny.tiny_config("two_step", data_dir))


def _batches(config, n, seed=0):
  it = iter(pipeline.make_dataset(config.data, batch_size=config.batch_size, seed=seed))
  return [{k: np.asarray(v) for k, v in next(it).items() if k != "num_skipped"}
          for _ in range(n)]


def _fresh(trainer):
  """A copy of the initial state (the step donates its input state)."""
  return tiny.copy_tree(trainer.state)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def test_nonfinite_step_is_skipped_and_counted(trainer):
  config = trainer.config
  good = shd.shard_batch(_batches(config, 1)[0], trainer.mesh)
  before = _copy((trainer.state.params, trainer.state.opt_state, trainer.state.ema_params))
  state, metrics = trainer.step_fn(_fresh(trainer), tiny.nan_frozen(trainer.frozen), good)
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 1 and int(state.skipped) == 1 and int(state.nonfinite_streak) == 1
  after = _copy((state.params, state.opt_state, state.ema_params))
  for a, b in zip(_leaves(before), _leaves(after)):
    np.testing.assert_array_equal(a, b)  # nothing changed, bitwise

  state, metrics = trainer.step_fn(state, trainer.frozen, good)
  assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["loss"]))
  assert int(state.nonfinite_streak) == 0 and int(state.skipped) == 1
  changed = [not np.array_equal(a, b) for a, b in zip(_leaves(before[0]), _leaves(state.params))]
  assert any(changed)


def test_loss_falls_on_a_fixed_batch(trainer):
  config = trainer.config
  batch = shd.shard_batch(_batches(config, 1)[0], trainer.mesh)
  state, losses = _fresh(trainer), []
  for _ in range(40):
    state, metrics = trainer.step_fn(state, trainer.frozen, batch)
    losses.append(float(metrics["loss"]))
  # Timesteps/noise change every step, so compare window means.
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_grad_accumulation_matches_full_batch(trainer):
  """grad_accum_steps=2 averages 2 micro-batch gradients: the same loss and (pre-clipping)
  gradient norm as one full batch, up to float32 summation order."""
  batch = _batches(trainer.config, 1)[0]
  _, m1 = trainer.step_fn(_fresh(trainer), trainer.frozen, shd.shard_batch(batch, trainer.mesh))
  config = tiny.tiny_config("two_step", trainer.config.data.path, grad_accum_steps=2)
  accum = trainer_lib.setup(config)
  _, m2 = accum.step_fn(accum.state, accum.frozen, shd.shard_batch(batch, accum.mesh))
  assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)
  assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-4)


def test_ema_follows_params(trainer):
  d = min(trainer.config.ema_decay, 2 / 11)  # the first update: warm-up (1 + n)/(10 + n), n = 1
  old = _copy(trainer.state.ema_params)
  state, _ = trainer.step_fn(_fresh(trainer), trainer.frozen,
                             shd.shard_batch(_batches(trainer.config, 1)[0], trainer.mesh))
  for o, p, e in zip(_leaves(old), _leaves(state.params), _leaves(state.ema_params)):
    np.testing.assert_allclose(e, d * o + (1 - d) * p, rtol=1e-6, atol=1e-7)


def test_uint8_batch_trains_like_its_float_version(trainer):
  """The step converts the pipeline's uint8 image/keep itself (``transforms.model_inputs``, its
  first operation on the batch): what the models get equals the float32 batch made on the host
  by the NumPy formula x / 127.5 - 1 to 1 ulp of 1.0, and a float batch passes through unchanged. So
  both train alike, without compiling the step a second time for float inputs."""
  raw = _batches(trainer.config, 1)[0]
  assert raw["image"].dtype == raw["keep"].dtype == np.uint8
  as_float = dict(raw, image=raw["image"].astype(np.float32) / 127.5 - 1.0,
                  keep=raw["keep"].astype(np.float32))
  on_device = jax.jit(steps_lib.transforms.model_inputs)
  from_uint8, from_float = on_device(raw), on_device(as_float)
  for key in ("image", "keep"):
    assert from_uint8[key].dtype == from_float[key].dtype == jnp.float32, key
    np.testing.assert_allclose(from_uint8[key], as_float[key], rtol=0, atol=1.2e-7, err_msg=key)
    np.testing.assert_array_equal(from_float[key], as_float[key], err_msg=key)
  np.testing.assert_array_equal(from_uint8["input_ids"], raw["input_ids"])
  _, metrics = trainer.step_fn(_fresh(trainer), trainer.frozen,
                               shd.shard_batch(raw, trainer.mesh))
  assert np.isfinite(float(metrics["loss"]))


def test_bfloat16_frozen_params_halve_their_size_and_keep_the_loss(trainer, data_dir):
  """config.frozen_dtype='bfloat16': frozen VAE/text leaves are bf16 (trainable ones and the
  float32 trainer's frozen ones are not) and the first loss is within 1 % of float32's."""
  low = trainer_lib.setup(tiny.tiny_config("two_step", data_dir, frozen_dtype="bfloat16"))
  floats = lambda tree: [x.dtype for x in jax.tree_util.tree_leaves(tree)
                         if jnp.issubdtype(x.dtype, jnp.floating)]
  assert set(floats(low.frozen)) == {jnp.dtype(jnp.bfloat16)}
  assert set(floats(trainer.frozen)) == set(floats(low.state.params)) == {jnp.dtype(jnp.float32)}
  batch = shd.shard_batch(_batches(trainer.config, 1)[0], trainer.mesh)
  _, ref = trainer.step_fn(_fresh(trainer), trainer.frozen, batch)
  _, got = low.step_fn(_fresh(low), low.frozen, batch)
  assert float(got["loss"]) != float(ref["loss"])  # the rounding reached the loss
  assert float(got["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-2)


def test_vae_finetune_step_trains_decoder_only(data_dir):
  """The tiny config (the session workdir's program): the discriminator joins at step 4."""
  config = tiny.tiny_config("vae_finetune", data_dir)
  assert int(config.vae.disc_start) == 4
  trainer = trainer_lib.setup(config)
  assert set(trainer.state.params) == {"vae", "logvar", "disc"}
  assert set(trainer.state.params["vae"]) == {"decoder", "post_quant_conv"}
  assert "encoder" in trainer.frozen["vae"]
  batch = shd.shard_batch(_batches(config, 1)[0], trainer.mesh)
  old = _copy(trainer.state.params)
  state = trainer.state
  for _ in range(5):  # steps 0-4
    state, metrics = trainer.step_fn(state, trainer.frozen, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["skipped"]) == 0
  assert float(metrics["g_loss"]) != 0.0  # the discriminator is active from step 4
  for name in ("decoder", "disc"):
    assert any(not np.array_equal(a, b)
               for a, b in zip(_leaves(old[name] if name == "disc" else old["vae"][name]),
                               _leaves(state.params[name] if name == "disc"
                                       else state.params["vae"][name])))


class _PoisonFrozenAfter:
  """A training hook: after step ``step`` it puts a NaN into the frozen VAE encoder's
  ``conv_in`` bias, in place (the loop hands every step the same ``frozen`` dict), so every
  later latent and loss is NaN. The compiled step stays the tiny config's."""

  def __init__(self, step: int):
    self.step = step

  def due(self, step: int) -> bool:
    return step == self.step

  def __call__(self, ema_params, frozen, step):
    del ema_params, step
    conv_in = frozen["vae"]["encoder"]["conv_in"]
    conv_in["bias"] = conv_in["bias"].at[0].set(jnp.nan)


def test_nonfinite_streak_stops_run_keeping_last_good_checkpoint(data_dir, tmp_path):
  config = tiny.tiny_config("two_step", data_dir, total_steps=20, checkpoint_every=2,
                            log_every=1, max_nonfinite_steps=3)
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteError, match="3 non-finite steps in a row.*step 4"):
    loop.train(config, workdir, make_hooks=lambda *_: [_PoisonFrozenAfter(4)])
  from seamless_jax.train import checkpoint as ckpt_lib
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2, 4]  # none saved during the streak
