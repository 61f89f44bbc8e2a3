"""Self-correction evaluation: two attempts per held-out problem, scored, in one table row.

Kumar et al. (2024) evaluate with greedy decoding and report, as fractions of all problems:
Acc@t1, Acc@t2, Δ(t1, t2), Δ^{i→c} and Δ^{c→i}. The same function serves held-out
evaluation during training and the ``score_jax.evaluate`` command.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np

from score_jax import metrics as sc_metrics
from score_jax.experiment import Experiment
from score_jax.sampling import SamplingParams, make_rollout_fn
from score_jax.sampling.templates import attempt_texts


class Evaluator:
  """Runs greedy (or sampled) two-turn rollouts on examples and computes the table row.

  The rollout compiles once per batch size; the last partial batch is padded with copies of
  its first example (and the copies are dropped), so every call reuses that compilation.
  """

  def __init__(self, experiment: Experiment, batch_size: int):
    self.experiment = experiment
    self.batch_size = batch_size
    self.model = experiment.model('sample')
    self._rollout = make_rollout_fn(self.model, experiment.spec)

  def run(self, params, examples: Sequence[Any], sampling: SamplingParams | None = None,
          seed: int = 0, progress: bool = False, samples: list | None = None) -> dict:
    """Returns the metrics dict (acc_t1, acc_t2, delta, delta_i2c, delta_c2i, …).

    When ``samples`` is a list, one dict per problem (id, both attempts, both rewards) is
    appended to it.
    """
    exp = self.experiment
    sampling = sampling or SamplingParams.greedy()
    r1, r2, texts = [], [], []
    start = time.perf_counter()
    for begin in range(0, len(examples), self.batch_size):
      chunk = list(examples[begin:begin + self.batch_size])
      real = len(chunk)
      chunk += [chunk[0]] * (self.batch_size - real)
      tokens, valid = exp.pack_prompts(chunk)
      out = self._rollout(params, tokens, valid, jax.random.key(seed + begin), sampling)
      pairs = attempt_texts(jax.device_get(out), exp.tokenizer, exp.spec.stop_tokens)[:real]
      r1.append(exp.task.score_batch(chunk[:real], [a for a, _ in pairs]))
      r2.append(exp.task.score_batch(chunk[:real], [b for _, b in pairs]))
      texts += pairs
      if progress:
        done = begin + real
        print(f'  evaluated {done}/{len(examples)} problems '
              f'({time.perf_counter() - start:.0f}s)', flush=True)
    r1, r2 = np.concatenate(r1), np.concatenate(r2)
    if samples is not None:
      samples.extend(dict(id=str(e.id), attempt1=a, attempt2=b, reward1=float(x), reward2=float(y))
                     for e, (a, b), x, y in zip(examples, texts, r1, r2))
    result = sc_metrics.self_correction_metrics(r1, r2)
    result.update(sc_metrics.edit_statistics(
        [a for a, _ in texts], [b for _, b in texts], exp.task.extract_answer))
    result['num_problems'] = len(examples)
    result['eval_s'] = time.perf_counter() - start
    return result
