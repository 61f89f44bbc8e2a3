"""A work directory given as a URL (gs://...) stays a URL: nothing turns it into a local path.

No network: ``epath.Path`` is replaced by one that serves ``gs://bucket/...`` from a local
folder, so each test sees exactly which files went through it, and that no local directory
named ``gs:`` appeared.
"""

import json
import os
import sys

import pytest
from etils import epath

from score_jax import checkpoints, paths, reporting
from score_jax.writers import MetricWriter, read_jsonl


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local folder behind gs://bucket/; the test runs in an empty current directory."""
  root, cwd = tmp_path / 'bucket', tmp_path / 'cwd'
  root.mkdir()
  cwd.mkdir()
  real = epath.Path

  def fake_path(path):
    path = str(path)
    if path.startswith('gs://bucket/'):
      return real(root / path[len('gs://bucket/'):])
    assert '://' not in path, path
    return real(path)

  monkeypatch.setattr(epath, 'Path', fake_path)
  monkeypatch.chdir(cwd)
  yield root
  assert not os.listdir(cwd), 'a URL became a local path'


def test_urls_are_kept_and_local_paths_made_absolute():
  assert paths.is_url('gs://bucket/run') and not paths.is_url('/tmp/run')
  assert paths.absolute('gs://bucket/run/') == 'gs://bucket/run'
  assert paths.absolute('run') == os.path.join(os.getcwd(), 'run')


def test_checkpointer_and_checkpoint_dir_keep_a_gs_path(bucket, monkeypatch):
  opened = []

  class FakeManager:

    def __init__(self, directory, options=None):
      opened.append(directory)

  monkeypatch.setattr(checkpoints.ocp, 'CheckpointManager', FakeManager)
  checkpointer = checkpoints.Checkpointer('gs://bucket/run/checkpoints')
  assert checkpointer.directory == 'gs://bucket/run/checkpoints'
  assert opened == ['gs://bucket/run/checkpoints']

  (bucket / 'run' / 'checkpoints').mkdir(parents=True)
  expected = ('gs://bucket/run', 'gs://bucket/run/checkpoints')
  assert checkpoints.checkpoint_dir('gs://bucket/run') == expected
  assert checkpoints.checkpoint_dir('gs://bucket/run/checkpoints/') == expected
  with pytest.raises(FileNotFoundError, match=r"No checkpoint directory at 'gs://bucket/none'"):
    checkpoints.checkpoint_dir('gs://bucket/none')


def test_metrics_summary_and_plot_go_to_a_gs_workdir(bucket, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'google.cloud.storage', None)  # No GCS client here.
  writer = MetricWriter('gs://bucket/run', upload_every_s=3600)
  assert 'no TensorBoard events under gs://bucket/run/tensorboard' in capsys.readouterr().out
  for step in (1, 2, 3):
    writer.write(step, {'train/loss': 1.0 / step, 'train/reward_t1': 0.1 * step}, phase='stage2')
  writer.flush()  # An object store cannot append: the whole file is written.
  assert [r['step'] for r in read_jsonl('gs://bucket/run/metrics.jsonl')] == [1, 2, 3]
  writer.write(4, {'train/loss': 0.25}, phase='stage2')
  writer.close()
  assert [r['step'] for r in read_jsonl(bucket / 'run' / 'metrics.jsonl')] == [1, 2, 3, 4]

  # A resumed run drops the records after its checkpoint, as for a local workdir.
  MetricWriter('gs://bucket/run', tensorboard=False, resume_step=2).close()
  assert [r['step'] for r in read_jsonl(bucket / 'run' / 'metrics.jsonl')] == [1, 2]

  paths.write_text('gs://bucket/run/summary.json', json.dumps({'steps': 2}))
  assert json.loads((bucket / 'run' / 'summary.json').read_text()) == {'steps': 2}
  assert reporting.plot_curves('gs://bucket/run/metrics.jsonl',
                               'gs://bucket/run/curves.png') == 'gs://bucket/run/curves.png'
  assert (bucket / 'run' / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
