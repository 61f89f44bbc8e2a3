"""Custom CPU kernels for the sampler's decode steps where XLA's own fall short (amx.py)."""
