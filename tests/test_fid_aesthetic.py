"""FID (pytorch-fid Inception, user-given weights) and LAION Aesthetic Score with random weights."""

from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import skimage.transform

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_fid")
transformers = pytest.importorskip("transformers")

from seamless_jax.eval import aesthetic, fid  # noqa: E402


def _photos(n=6, size=64):
  """n different uint8 (size, size, 3) crops of skimage photos."""
  sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
  crops = []
  for i in range(n):
    src = sources[i % len(sources)]
    y, x = 40 * (i // len(sources)), 30 * (i // len(sources))
    crop = skimage.transform.resize(src[y:y + 200, x:x + 200], (size, size), anti_aliasing=True)
    crops.append((crop * 255).round().astype(np.uint8))
  return np.stack(crops)


def _scipy_fid(a, b):
  """The textbook formula with scipy's sqrtm, written out here."""
  mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
  mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
  return (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("n_a,n_b", [(12, 20), (200, 300)])  # N < D and N > D branches
def test_fid_from_features_matches_scipy_and_pytorch_fid(n_a, n_b):
  rng = np.random.default_rng(n_a)
  dim = 16
  a = rng.standard_normal((n_a, dim))
  b = rng.standard_normal((n_b, dim)) @ rng.standard_normal((dim, dim)) + 0.5
  expected = _scipy_fid(a, b)
  assert fid.fid_from_features(a, b) == pytest.approx(expected, rel=1e-7)
  # the package's implementation on the same statistics
  assert fid.frechet_distance(*fid.feature_statistics(a), *fid.feature_statistics(b)) == \
      pytest.approx(expected, rel=1e-7)
  # Tr((S1 S2)^½) = Σ sqrt(eigenvalues of S1 S2): a second route by hand
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  eig = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
  by_eig = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(eig)))
  assert fid.fid_from_features(a, b) == pytest.approx(by_eig, rel=1e-7)
  assert fid.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
  assert fid.fid_from_features(a, a + 1.0) == pytest.approx(dim, rel=1e-9)  # ‖Δmu‖² only
  with pytest.raises(ValueError, match="N >= 2"):
    fid.feature_statistics(a[:1])
  with pytest.raises(ValueError, match="dims differ"):
    fid.fid_from_features(a, b[:, :3])


def _random_inception_file(path):
  """A state dict with the FID Inception's exact keys/shapes and random values (seeded)."""
  from pytorch_fid import inception as fid_inception
  torch.manual_seed(0)
  with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
       mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
    network = fid_inception.fid_inception_v3()
  torch.save(network.state_dict(), path)


@pytest.mark.slow
def test_fid_random_inception_zero_on_same_set_and_grows_with_shift(tmp_path):
  path = str(tmp_path / "pt_inception-random.pth")
  _random_inception_file(path)
  model = fid.load_inception(path)
  images = _photos(4)
  shifted = lambda d: np.clip(images.astype(int) + d, 0, 255).astype(np.uint8)
  feats = fid.inception_features(model, images, batch_size=3)
  assert feats.shape == (4, fid.FEATURE_DIM)
  assert np.isfinite(feats).all() and feats.std() > 0
  same = fid.fid_from_features(feats, fid.inception_features(model, list(images)))
  small = fid.fid_from_features(feats, fid.inception_features(model, shifted(30)))
  large = fid.compute_fid(images, shifted(120), path)  # the one-call API
  assert abs(same) < 1e-9 * large
  assert 0 < small < large


def test_fid_weights_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
    fid.load_inception(str(tmp_path / "missing.pth"))
  wrong = str(tmp_path / "wrong.pth")
  torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
  with pytest.raises(RuntimeError, match="state_dict"):
    fid.load_inception(wrong)
  with pytest.raises(ValueError, match="uint8 RGB"):
    fid.inception_features(None, np.zeros((2, 8, 8, 3), np.float32))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """A random tiny CLIP vision tower (safetensors folder) and a random Linear(8, 1) head file."""
  folder = tmp_path_factory.mktemp("clip")
  config = transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, projection_dim=8)
  torch.manual_seed(0)
  transformers.CLIPVisionModelWithProjection(config).save_pretrained(str(folder))
  head = torch.nn.Linear(8, 1)
  head_path = str(folder / "head.pth")
  torch.save(head.state_dict(), head_path)
  return str(folder), head_path, head


def test_aesthetic_score_is_head_of_normalised_clip_embedding(tiny_clip):
  folder, head_path, head = tiny_clip
  scorer = aesthetic.AestheticScorer(folder, head_path)
  images = _photos(3, size=48)
  scores = scorer(images, batch_size=2)
  assert scores.shape == (3,)
  # by hand: OpenAI CLIP preprocessing, projection embedding, L2-normalise, linear head
  model = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
  processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                              crop_size={"height": 32, "width": 32})
  with torch.no_grad():
    embeds = model(**processor(images=list(images), return_tensors="pt")).image_embeds
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    expected = head(embeds)[:, 0].double().numpy()
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(scorer.embed(images), axis=-1), 1.0, rtol=1e-6)
  assert len(set(np.round(scores, 6))) == 3  # different images, different scores


def test_aesthetic_file_errors(tiny_clip, tmp_path):
  folder, head_path, _ = tiny_clip
  bad_head = str(tmp_path / "bad.pth")
  torch.save(torch.nn.Linear(768, 1).state_dict(), bad_head)
  with pytest.raises(ValueError, match=r"Linear\(8, 1\)"):
    aesthetic.AestheticScorer(folder, bad_head)
  with pytest.raises(FileNotFoundError, match="not a transformers CLIP folder"):
    aesthetic.AestheticScorer(str(tmp_path), head_path)
  with pytest.raises(FileNotFoundError, match="sa_0_4_vit_l_14_linear"):
    aesthetic.AestheticScorer(folder, str(tmp_path / "none.pth"))
