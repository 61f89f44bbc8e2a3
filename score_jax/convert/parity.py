"""Does an exported checkpoint answer in ``transformers`` as it did in score-jax?

``python -m score_jax.convert --checkpoint=RUN --output=HF --check_against=SAMPLES`` exports a
trained policy and then, for the first problems of an evaluation's samples file (the
``eval_final_samples.jsonl`` a training run writes, or ``score_jax.evaluate``'s), loads the
export with ``transformers``, renders each problem with the export's own chat template,
decodes attempt 1 greedily, and compares its text with the attempt 1 the score-jax evaluator
wrote. Needs ``torch`` and ``transformers`` (the test extras).

``transformers`` runs the export in fp32, so the samples should come from an fp32 evaluation
(``score_jax.evaluate --config.model.dtype=float32``): bf16 compute changes the greedy text
where two tokens are nearly tied (SmolLM2 after SCoRe: the same attempt 1 on 77 of 100 held-out
problems in bf16 and fp32; docs/real_model.md), which says nothing about the export.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class FirstAttempt:
  id: str
  ours: str
  theirs: str

  @property
  def same(self) -> bool:
    return self.ours.strip() == self.theirs.strip()


def transformers_first_attempts(hf_dir: str, user_texts: Sequence[str], max_new_tokens: int,
                                system: str | None = None) -> list[str]:
  """Greedy first attempts of the Hugging Face checkpoint in ``hf_dir``, one per user text,
  each in the checkpoint's own chat template (with ``system`` as a system turn when given)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  model.eval()
  replies = []
  for text in user_texts:
    messages = ([{'role': 'system', 'content': system}] if system else []) + [
        {'role': 'user', 'content': text}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors='pt', return_dict=True)
    with torch.no_grad():
      out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)
    replies.append(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:],
                                    skip_special_tokens=True))
  return replies


def compare(samples: Sequence[dict], problems: dict[str, str], hf_dir: str, max_new_tokens: int,
            num: int, system: str | None = None) -> list[FirstAttempt]:
  """The first ``num`` samples' attempt 1 against the export's greedy attempt 1."""
  chosen = list(samples[:num])
  missing = [s['id'] for s in chosen if s['id'] not in problems]
  if missing:
    raise ValueError(f'The samples name problems the run\'s held-out split does not have: '
                     f'{missing[:3]}; give the samples file of this run.')
  theirs = transformers_first_attempts(hf_dir, [problems[s['id']] for s in chosen],
                                       max_new_tokens, system)
  return [FirstAttempt(s['id'], s['attempt1'], t) for s, t in zip(chosen, theirs)]
