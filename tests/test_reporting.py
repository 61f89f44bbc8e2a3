"""score_jax.reporting: the training-curve plot."""

import json

from score_jax import reporting


def test_an_empty_panel_says_why(tmp_path, monkeypatch):
  metrics = tmp_path / 'metrics.jsonl'
  rows = [dict(step=s, phase='stage2', **{'train/loss': 1.0 / s, 'train/reward_t1': 0.1 * s,
                                          'train/reward_t2': 0.2 * s}) for s in (1, 2, 3)]
  metrics.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  figures = []
  real_save = reporting.save_png
  monkeypatch.setattr(reporting, 'save_png',
                      lambda fig, path: figures.append(fig) or real_save(fig, path))
  out = tmp_path / 'curves.png'
  assert reporting.plot_curves(str(metrics), str(out)) == str(out)
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in figures[0].axes}
  assert notes['training reward'] == []  # plotted, so no note
  assert notes['gradient norm per attempt'] == ['not measured: set rl.attempt_grad_norms=True']
  assert notes['KL to the reference'] == ['nothing logged']


def test_the_final_row_is_named_after_what_trained_it():
  assert reporting.final_row_label('sft:600,stage1:100,stage2:100') == 'final (SCoRe)'
  assert reporting.final_row_label('stage1:100,stage2:50,stage1:100') == 'final (SCoRe)'
  assert reporting.final_row_label('single_turn:200') == 'final (single_turn)'
  assert reporting.final_row_label('stage1:100,star:100') == 'final (stage1, star)'
  assert reporting.final_row_label('star:67,star:67,star:66') == 'final (star)'
  assert reporting.final_row_label('sft:20') == 'final'
