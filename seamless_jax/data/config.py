"""Data config: ``get_data_config()`` is embedded by ``configs/*.py`` as ``config.data``.

The global batch size is NOT here: the training loop passes the per-host batch
(``config.batch_size // jax.process_count()``) to ``make_dataset(..., batch_size=...)``.
"""

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
  """Every field ``seamless_jax.data.pipeline.make_dataset`` reads, with defaults."""
  c = ml_collections.ConfigDict()
  # --- where the examples come from
  c.source = "folder"          # 'folder' | 'arrayrecord' | 'tfds'
  c.path = ""                  # folder root, or ArrayRecord dir / file / glob
  c.tfds_name = ""             # e.g. 'coco_captions' (source='tfds')
  c.tfds_data_dir = ""
  c.image_feature = "image"    # TFDS feature names ('a/b' for nested)
  c.text_feature = "caption"
  # --- images
  c.resolution = 512           # output H = W
  c.center_crop = False        # False: random crop (train); True: centre crop
  c.random_flip = True         # horizontal flip with p = 0.5
  c.min_side = 256             # shorter side below this: skipped as too small (0 = off)
  c.shuffle = True
  # --- text
  c.tokenizer_dir = ""         # HF CLIP tokenizer folder (vocab.json, merges.txt)
  c.max_length = 77
  c.caption_dropout = 0.1      # probability of an empty caption (for classifier-free guidance)
  # --- masks (see data/masks.py)
  c.masks = ml_collections.ConfigDict()
  c.masks.inpaint_prob = 0.5
  c.masks.outpaint_prob = 0.5
  c.masks.area_range = (0.1, 0.4)        # fraction of the image to generate
  c.masks.inpaint_shapes = ("strokes", "boxes", "blobs")
  c.masks.saliency_threshold = 0.5       # for saliency maps shipped with the data (U2Net)
  c.masks.saliency_margin = 8            # px kept free between a hole and salient pixels
  c.masks.use_builtin_saliency = True    # estimate saliency when the data has none
  c.masks.outpaint_sides = (4, 4)        # min/max number of sides with a border: (4, 4) =
                                         # the paper's "retaining only the central portion";
                                         # (1, 4) also trains 1-3-sided extensions
  # --- throughput
  c.worker_count = 8           # Grain worker processes (0 = in-process)
  c.worker_buffer_size = 2     # batches prefetched per worker
  c.read_threads = 8           # threads reading+decoding elements (per process)
  c.prefetch_buffer_size = 64  # elements read ahead per process
  # --- bad data
  c.max_bad_fraction = 0.05    # more skipped than this fraction (per process) raises
  c.bad_check_min_records = 200  # ...checked once this many records were seen (and at the end)
  return c
