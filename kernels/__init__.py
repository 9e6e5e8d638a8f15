"""Triton kernels of mert_fast, installed as ``mert_fast.kernels``.

Each ``<op>.py`` holds private ``@triton.jit`` kernels and the launchers that own shapes and
allocation. Nothing here imports ``mert_fast``.
"""
