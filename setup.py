"""seamless_jax: JAX/Flax implementation of "Towards Seamless Borders" (arXiv 2506.12530)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "absl-py",
    "array-record",
    "einops",
    "flax>=0.10",
    "grain>=0.2.10",
    "jax>=0.6",
    "ml-collections",
    "numpy",
    "optax",
    "orbax-checkpoint",
    "pillow",
    "safetensors",
    "scikit-image",  # the bundled demo photos (seamless_jax.data.demo)
    "scipy",
    "tensorboardX",
]

EXTRAS_REQUIRE = {
    # Reference implementations for parity tests, export checks and notebooks.
    "test": [
        "diffusers>=0.30",
        "lpips",
        "matplotlib",  # the notebooks (tests/test_notebooks.py executes them)
        "nbclient",
        "nbformat",
        "ipykernel",
        "opencv-python-headless",  # Poisson blending (inpaint.poisson_blend) in the unit tests
        "pytest",
        "playwright",  # drives Debian's chromium in tests/test_app_browser.py (no browser download)
        "pytest-xdist",  # pytest.ini runs the suite on up to 4 processes (filelock: shared fixtures)
        "filelock",
        "pytorch-fid",
        "torch",
        "torchvision",
        "transformers",
    ],
    # FID (pytorch-fid's TF-Inception) and Aesthetic Score (transformers CLIP): seamless_jax.eval;
    # OpenCV's seamlessClone: the Poisson-blending baseline (ablation, inpaint/app --paste-back).
    "eval": ["opencv-python-headless", "pytorch-fid", "torch", "torchvision", "transformers"],
    # notebooks/: figures, and train_tiny.ipynb runs its export in diffusers.
    "notebooks": ["diffusers>=0.30", "ipykernel", "matplotlib", "torch", "transformers"],
    # The web app (python -m seamless_jax.app); nothing else imports gradio.
    "app": ["gradio>=6.0,<7"],
    # Figures of the ablation report (seamless_jax.experiments.report); its Poisson baseline.
    "experiments": ["matplotlib", "opencv-python-headless"],
    # python -m seamless_jax.aot: compile for TPU slices (libtpu) and NVIDIA GPUs (the CUDA PJRT
    # plugin, no CUDA libraries) on a machine that has neither; both pinned to the jax version.
    "aot": ["jax[tpu,cuda12-local]"],
    "gpu": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
}

setup(
    name="seamless_jax",
    version="0.1.0",
    description="Seamless inpainting/outpainting for Stable Diffusion 1.5 in JAX/Flax",
    packages=find_packages(include=["seamless_jax", "seamless_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
