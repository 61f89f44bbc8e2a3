"""Test set-up: 8 fake CPU devices, so that every sharding constraint is exercised, and one
XLA compilation cache for the whole run.

Most end-to-end tests start ``score_jax.train`` on the smoke config in a subprocess, and each
of those used to compile the same programs again (about two thirds of a smoke run's time).
JAX's persistent compilation cache, shared by every test process and by the subprocesses they
start (they inherit the environment), compiles each program once. The executables it returns
are the ones XLA would build, and the compile event the trainer counts is still recorded on a
cache hit, so "no step after the first compiles" is checked as before. Set
``JAX_COMPILATION_CACHE_DIR`` yourself to use another directory.
"""

import os
import tempfile

# Must happen before JAX is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'score-jax-tests-xla-cache'))
# Cache every program, however small or quick to compile: the tests compile many small ones.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
