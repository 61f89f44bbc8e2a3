"""score-jax: SCoRe (Kumar et al., 2024) self-correction training in JAX and Flax."""

__version__ = '0.1.0'
