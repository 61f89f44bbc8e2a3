r"""``python -m score_jax.aot --config=...``: the ahead-of-time check of a config's TPU slice.

Prints the report and, last, ``fits: ...`` or ``does not fit: ...``. Exit codes: 0 fits;
1 does not fit (including the compiler running out of HBM); 2 an invalid config, or libtpu
not installed (one line on stderr).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from score_jax import config_lib
from score_jax.aot import LibtpuMissing, check, format_report, require_libtpu
from score_jax.training.errors import EXIT_INVALID

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])


def _fail(message: str):
  print(message, file=sys.stderr, flush=True)
  raise SystemExit(EXIT_INVALID)


def _parse_flags(argv):
  """absl's flag parsing; an override of a field the config does not declare is one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' answer to an unknown field.
    _fail(f'Invalid config: {config_lib.unknown_override(argv) or e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_lib.quiet_library_logs()
  try:
    require_libtpu()
    result = check(_CONFIG.value)
  except LibtpuMissing as e:
    _fail(str(e))
  except ValueError as e:
    _fail(f'Invalid config: {e}')
  for line in format_report(result):
    print(line)
  print(result.verdict, flush=True)
  if not result.fits:
    raise SystemExit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
