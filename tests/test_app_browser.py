"""The web app in a real browser: ``python -m seamless_jax.app`` serves the tiny trained model
(Eq. 6 decoder, compared with the base one) on a free local port; headless Chromium (Debian's
``chromium`` package, driven by Playwright; no browser is downloaded) uploads a photo and a
mask, runs, and checks the result's size, the seam CD and the download.

Needs ``apt-get install -y chromium``, Playwright (the [test] extra) and gradio (the [app]
extra); without them this
test fails with that message (``.ci/run`` installs both). The screenshot goes to the test's
temporary folder; ``SEAMLESS_JAX_UPDATE_SCREENSHOT=1`` also writes ``docs/app_screenshot.png``
(what README shows).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
INSTALL = ("the browser test needs Debian's chromium and Playwright: "
           "apt-get install -y chromium && pip install -e \".[test,app]\" (Playwright drives "
           f"{CHROMIUM}; never `playwright install`)")
H, W = 48, 64  # the photo: not square, so a swapped size would show
STEPS = 3
SERVE_TIMEOUT_S, RUN_TIMEOUT_S = 240, 300


def _browser_or_fail():
  """``sync_playwright`` when both Playwright and the chromium binary are here; else fails."""
  if not os.path.isfile(CHROMIUM):
    pytest.fail(f"{CHROMIUM} not found: {INSTALL}")
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.fail(f"playwright is not installed: {INSTALL}")
  return sync_playwright


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _inputs(folder) -> tuple[str, str]:
  """A 64x48 photo and its mask file (white = generate: a box right of centre)."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  photo = Image.fromarray(skimage.data.astronaut()).resize((W, H), Image.LANCZOS)
  mask = np.zeros((H, W), np.uint8)
  mask[8:32, 30:54] = 255
  photo_path, mask_path = os.path.join(folder, "photo.png"), os.path.join(folder, "mask.png")
  photo.save(photo_path)
  Image.fromarray(mask).save(mask_path)
  return photo_path, mask_path


def _serve(workdirs, port: int, log_path: str) -> subprocess.Popen:
  """The app as a user starts it, on ``port``; returns once the page answers."""
  command = [sys.executable, "-m", "seamless_jax.app", "--model", workdirs["two_step"],
             "--vae", workdirs["vae_finetune"], "--compare-vae", workdirs["two_step"],
             "--port", str(port), "--steps", str(STEPS)]
  log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + SERVE_TIMEOUT_S
  while time.monotonic() < deadline:
    if server.poll() is not None:
      break
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
        return server
    except OSError:
      time.sleep(1)
  server.kill()
  with open(log_path, encoding="utf-8") as f:
    pytest.fail(f"the app did not serve on port {port}:\n{f.read()[-3000:]}")
  return server  # not reached


def test_the_page_inpaints_an_uploaded_photo_and_mask(tiny_workdirs, tmp_path):
  sync_playwright = _browser_or_fail()
  photo_path, mask_path = _inputs(str(tmp_path))
  port = _free_port()
  server = _serve(tiny_workdirs, port, str(tmp_path / "server.log"))
  try:
    with sync_playwright() as playwright:
      browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
      page = browser.new_page(viewport={"width": 1280, "height": 1000})
      page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
      page.click("#run")  # nothing uploaded: a message on the page, not a traceback
      page.get_by_text("no photo").first.wait_for(timeout=30_000)
      page.reload(wait_until="networkidle")

      page.set_input_files("#photo input[type=file]", photo_path)
      page.set_input_files("#mask input[type=file]", mask_path)
      page.locator("#mask img").first.wait_for(timeout=30_000)
      started = time.monotonic()
      page.click("#run")
      page.get_by_text("seam CD").first.wait_for(timeout=RUN_TIMEOUT_S * 1000)
      run_s = time.monotonic() - started
      for elem_id in ("result", "compare"):
        size = page.eval_on_selector(f"#{elem_id} img", "e => [e.naturalWidth, e.naturalHeight]")
        assert size == [W, H], (elem_id, size)
      report = page.inner_text("#report")
      assert "excess CD" in report and "decoder of" in report
      assert page.locator("#download a").first.get_attribute("href")
      page.screenshot(path=str(tmp_path / "app_screenshot.png"), full_page=True)
      browser.close()
  finally:
    server.terminate()
    server.wait(timeout=30)
  print(f"run in the browser: {run_s:.1f} s (first run: includes compiling)")
  if os.environ.get("SEAMLESS_JAX_UPDATE_SCREENSHOT") == "1":
    shutil.copyfile(tmp_path / "app_screenshot.png",
                    os.path.join(ROOT, "docs", "app_screenshot.png"))
