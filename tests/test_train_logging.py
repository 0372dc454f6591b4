"""The console: the step line shows skipped data records; orbax's INFO lines stay off it."""

import logging

from absl import logging as absl_logging

from seamless_jax.train import metric_writer as log_lib


def test_step_line_shows_data_skipped_only_when_nonzero():
  scalars = {"loss": 0.5, "steps_per_sec": 2.0, "examples_per_sec": 16.0}
  assert "data skipped" not in log_lib.progress_line(10, 100, dict(scalars, data_skipped=0))
  assert "data skipped 3" in log_lib.progress_line(10, 100, dict(scalars, data_skipped=3))


def _record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_orbax_info_is_filtered_at_default_verbosity_only():
  log_lib.quiet_library_logs()
  log_lib.quiet_library_logs()  # idempotent
  handler = absl_logging.get_absl_handler()
  assert sum(isinstance(f, log_lib._LibraryInfoFilter) for f in handler.filters) == 1  # pylint: disable=protected-access
  orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  ours = "/work/seamless_jax/train/loop.py"
  verbosity = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    assert not handler.filter(_record(orbax_file, logging.INFO))
    assert handler.filter(_record(orbax_file, logging.WARNING))
    assert handler.filter(_record(ours, logging.INFO))
    absl_logging.set_verbosity(absl_logging.DEBUG)  # --verbosity=1 shows them again
    assert handler.filter(_record(orbax_file, logging.INFO))
  finally:
    absl_logging.set_verbosity(verbosity)
