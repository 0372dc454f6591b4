"""Flax LPIPS (VGG16) vs the `lpips` package with random weights; converter and loader."""

import importlib.util
import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from seamless_jax.models import lpips as flax_lpips

lpips_pkg = pytest.importorskip("lpips")
torch = pytest.importorskip("torch")

_TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "convert_lpips.py")
_spec = importlib.util.spec_from_file_location("convert_lpips", _TOOL)
convert_lpips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_lpips)


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  # pretrained=False: no lin weights loaded; pnet_rand=True: torchvision VGG with weights=None.
  # Nothing is downloaded or read from disk.
  model = lpips_pkg.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
  with torch.no_grad():  # random positive heads, like the trained ones (|init| would do too)
    for k in range(5):
      getattr(model, f"lin{k}").model[1].weight.uniform_(0.0, 0.1)
  return model


def test_parity_with_lpips_package(torch_model):
  flat = convert_lpips.convert([torch_model.state_dict()])
  variables = flax_lpips.unflatten_params(flat)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 24, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  to_t = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    ref = torch_model(to_t(x), to_t(y)).numpy().reshape(-1)
  module = flax_lpips.LPIPS(precision=jax.lax.Precision.HIGHEST)
  apply = jax.jit(module.apply)  # op by op, LPIPS compiles ~80 tiny programs
  ours = np.asarray(apply(variables, jnp.asarray(x), jnp.asarray(y)))
  err = np.max(np.abs(ours - ref))
  print(f"LPIPS parity: max abs err {err:.2e}, values {ref}")
  # Measured max abs error ≈ 5e-9 (values ≈ 1.5e-2); target ≤ 1e-4.
  assert ours.shape == (2,) and err <= 1e-4, (err, ours, ref)
  assert np.all(ref > 0)
  same = apply(variables, jnp.asarray(x), jnp.asarray(x))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_converter_cli_roundtrip_and_loader_errors(torch_model, tmp_path):
  sd = torch_model.state_dict()
  vgg = {k.replace(k.split(".")[0] + "." + k.split(".")[1], "features", 1): v
         for k, v in sd.items() if k.startswith("net.")}
  vgg["classifier.0.weight"] = torch.zeros(3, 3)  # ignored, like a real torchvision file
  lin = {k: v for k, v in sd.items() if k.startswith("lin")}
  assert "features.28.weight" in vgg and "lin4.model.1.weight" in lin
  torch.save(vgg, tmp_path / "vgg16.pth")
  torch.save(lin, tmp_path / "vgg.pth")
  out = str(tmp_path / "lpips_vgg.safetensors")
  convert_lpips.main(["--vgg", str(tmp_path / "vgg16.pth"), "--lin", str(tmp_path / "vgg.pth"),
                      "--out", out])
  module, variables = flax_lpips.load_lpips(out)
  direct = flax_lpips.unflatten_params(convert_lpips.convert([sd]))
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(direct)):
    np.testing.assert_array_equal(a, b)
  # Shapes agree with what the module itself initialises.
  init = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                        jnp.zeros((1, 16, 16, 3)))
  assert (jax.tree_util.tree_map(lambda a: a.shape, init)
          == jax.tree_util.tree_map(jnp.shape, variables))

  from safetensors.numpy import load_file, save_file
  flat = load_file(out)
  bad = dict(flat)
  del bad["lin2/kernel"]
  bad["extra/kernel"] = np.zeros(1, np.float32)
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(KeyError, match="lin2/kernel.*extra/kernel"):
    flax_lpips.load_lpips(str(tmp_path / "bad.safetensors"))
  with pytest.raises(FileNotFoundError):
    flax_lpips.load_lpips(str(tmp_path / "missing.safetensors"))
  with pytest.raises(KeyError, match="missing"):
    convert_lpips.convert([lin])  # no VGG weights


@pytest.mark.slow  # ~10 s: compiles the VGG backward pass on CPU
def test_lpips_fn_gradients_reach_inputs_only(torch_model):
  variables = flax_lpips.unflatten_params(convert_lpips.convert([torch_model.state_dict()]))
  fn = flax_lpips.lpips_fn(flax_lpips.LPIPS(), variables)
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 16, 16, 3), minval=-1, maxval=1)
  g = jax.jit(jax.grad(lambda y: fn(x, y).sum()))(x * 0.5)  # one program, not ~240
  assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0
