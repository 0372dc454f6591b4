"""Input data: sources, the paper's masks, CLIP tokenisation and the Grain pipeline.

Independent of the models. Main entry points:
  ``get_data_config()``                     (config.py)  -> ``config.data``
  ``make_dataset(config.data, batch_size=)`` (pipeline.py) -> Grain IterDataset of batches
  ``CLIPTokenizer.from_folder(dir)``         (tokenizer.py)
  ``python -m seamless_jax.data.prepare``    folder/jsonl -> ArrayRecord shards
  ``python -m seamless_jax.data.demo``       bundled demo photo set
"""

from seamless_jax.data.config import get_data_config
from seamless_jax.data.pipeline import BadDataError, make_dataset
from seamless_jax.data.tokenizer import CLIPTokenizer, write_byte_level_tokenizer
