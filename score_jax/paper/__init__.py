"""The paper in miniature (Kumar et al., 2024): its methods and reference numbers, the
comparison tables and plots (``tables``), and the inference-time scaling study
(``scaling``). ``score_jax.reproduce`` runs them."""
