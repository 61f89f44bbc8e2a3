"""Rewards: answer extraction and equivalence for math, sandboxed execution for code.

Heavy pieces load on demand: ``score_jax.rewards.math_answers`` (math-verify in a worker
process) and ``score_jax.rewards.sandbox`` (programs in isolated subprocesses).
"""
