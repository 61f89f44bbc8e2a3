"""Custom CPU kernels the sampler can use where XLA's own fall short (see amx.py)."""
