"""The orchestration layer: everything between a config and the jitted steps.

  phases       a schedule as ``Phase`` records (what each kind of phase does)
  experiment   the task, tokenizer, template, model and mesh a config describes
  batches      which data each step sees (RL prompts by step index, encoded SFT traces)
  scoring      sample and score: prompts → rollout → texts → rewards → per-row statistics
  steps        the train state, the optimizer and the jitted, donated update steps
  runners      what one step of each kind of phase does
  self_sft     the STaR and Pair-SFT baselines' traces
  evaluation   the self-correction table of a model on held-out problems
  progress     how far a run has got (saved with every checkpoint) and its progress lines
  errors       why a run stopped, as exit codes of the entry points
  trainer      the loop over phases: evaluation, checkpoints, resume, preemption

Import from the modules themselves (``from score_jax.training.trainer import Trainer``):
this package's ``__init__`` imports nothing, so that ``config_lib`` can read ``phases``
without loading the trainer.
"""
