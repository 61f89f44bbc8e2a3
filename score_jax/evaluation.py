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

from score_jax import distributed
from score_jax import metrics as sc_metrics
from score_jax.experiment import Experiment
from score_jax.sampling import SamplingParams, make_rollout_fn
from score_jax.sampling.templates import attempt_texts


class Evaluator:
  """Runs greedy (or sampled) two-turn rollouts on examples and computes the table row.

  The rollout compiles once per batch size; the last partial batch is padded with copies of
  its first example (and the copies are dropped), so every call reuses that compilation.
  In a multi-process run every process packs and scores only its own rows of each batch
  (see ``score_jax.distributed``); the per-problem outcomes are then gathered, so every
  process returns the same metrics.
  """

  def __init__(self, experiment: Experiment, batch_size: int):
    self.experiment = experiment
    self.batch_size = batch_size
    self.model = experiment.model('sample')
    self._rollout = make_rollout_fn(self.model, experiment.spec)
    # The rows of a batch this process packs and scores (all of them on one process).
    self._rows = distributed.row_indices(self._sharding((batch_size,)), (batch_size,))

  def _sharding(self, shape: tuple[int, ...]):
    return self.model.mesh_rules.sharding(('batch',) + (None,) * (len(shape) - 1), shape)

  def run(self, params, examples: Sequence[Any], sampling: SamplingParams | None = None,
          seed: int = 0, progress: bool = False, samples: list | None = None) -> dict:
    """Returns the metrics dict (acc_t1, acc_t2, delta, delta_i2c, delta_c2i, …).

    When ``samples`` is a list, one dict per problem (id, both attempts, both rewards) is
    appended to it. Progress lines are printed by process 0 only.
    """
    exp = self.experiment
    sampling = sampling or SamplingParams.greedy()
    rows, size = self._rows, self.batch_size
    per_row, texts = [], []
    start = time.perf_counter()
    for begin in range(0, len(examples), size):
      chunk = list(examples[begin:begin + size])
      real = len(chunk)
      chunk += [chunk[0]] * (size - real)
      local = [chunk[i] for i in rows]
      prompts = distributed.put_rows(exp.pack_prompts(local), size, self._sharding)
      out = self._rollout(params, *prompts, jax.random.key(seed + begin), sampling)
      pairs = attempt_texts(distributed.local_rows(out), exp.tokenizer, exp.spec.stop_tokens)
      # Score this process's rows of real problems only (not the padding copies).
      scored = [i for i, row in enumerate(rows) if row < real]
      values = dict(r1=np.zeros(len(rows), np.float32), r2=np.zeros(len(rows), np.float32),
                    edit_ratio=np.zeros(len(rows)), differ=np.zeros(len(rows), bool))
      if scored:
        a1 = [pairs[i][0] for i in scored]
        a2 = [pairs[i][1] for i in scored]
        examples_here = [local[i] for i in scored]
        values['r1'][scored] = exp.task.score_batch(examples_here, a1)
        values['r2'][scored] = exp.task.score_batch(examples_here, a2)
        values['edit_ratio'][scored] = sc_metrics.edit_distance_ratios(a1, a2)
        values['differ'][scored] = sc_metrics.answers_differ(
            [exp.task.extract_answer(a) for a in a1], [exp.task.extract_answer(b) for b in a2])
      gathered = distributed.gather_rows(values, size, self._sharding)
      per_row.append({k: v[:real] for k, v in gathered.items()})
      if samples is not None:  # Every problem's texts (decoding is cheap; scoring is not).
        if len(rows) < size:
          pairs = attempt_texts(distributed.gather(out), exp.tokenizer, exp.spec.stop_tokens)
        texts += pairs[:real]
      if progress and distributed.is_main_process():
        done = begin + real
        print(f'  evaluated {done}/{len(examples)} problems '
              f'({time.perf_counter() - start:.0f}s)', flush=True)
    values = {k: np.concatenate([v[k] for v in per_row]) for k in per_row[0]}
    r1, r2 = values['r1'], values['r2']
    if samples is not None:
      samples.extend(dict(id=str(e.id), attempt1=a, attempt2=b, reward1=float(x), reward2=float(y))
                     for e, (a, b), x, y in zip(examples, texts, r1, r2))
    result = sc_metrics.self_correction_metrics(r1, r2)
    result['edit_ratio'] = float(np.mean(values['edit_ratio']))
    result['different_answer_rate'] = float(values['differ'].mean())
    result['num_problems'] = len(examples)
    result['eval_s'] = time.perf_counter() - start
    return result
