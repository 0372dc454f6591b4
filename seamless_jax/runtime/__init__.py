"""How programs run on devices: meshes and shardings, compilation (cache, AOT, FLOPs), chips.

Below training, loading and inference; imports nothing of the package but :mod:`console`.
"""
