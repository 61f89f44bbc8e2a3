"""How many held-out problems an evaluation reads."""

import pytest

from score_jax.training.evaluation import held_out_problems


def test_held_out_problems_defaults_to_the_config_and_refuses_more_than_the_split():
  split = list(range(500))
  assert held_out_problems(split, None, 200) == split[:200]
  assert held_out_problems(split, 0, 200) == split[:200]
  assert held_out_problems(split, 50, 200) == split[:50]
  assert held_out_problems(split, 500, 200) == split
  assert held_out_problems(split, None, 1000) == split  # The config's default is capped.
  with pytest.raises(ValueError, match=r'--num_problems=1000, but the held-out split has 500'):
    held_out_problems(split, 1000, 200)
  with pytest.raises(ValueError, match='must be positive'):
    held_out_problems(split, -3, 200)
  with pytest.raises(ValueError, match=r'--scaling_problems=600, but the held-out split has 500'):
    held_out_problems(split, 600, 200, flag='--scaling_problems')
