"""Shared helpers of the end-to-end tests (reliability, privacy): a tiny built
dataset and
`launch.py` / `python -m ankle_jax.<command>` subprocesses.

The dataset and the reference training run are built once per pytest session
(cached here, under a session temporary directory), whichever test module asks
first. Every subprocess shares one JAX persistent compilation cache, so only the
first one compiles.
"""

from collections.abc import Sequence
import dataclasses
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

IMAGE_SIZE = 80
# configs/local.py (tiny Xception drop/aux, width 0.0625) made a little longer,
# so that a
# SIGKILL can land between checkpoints: 8 steps per epoch on the tiny train
# split, so the 12 steps cross an epoch boundary (iterator state) and save 6
# checkpoints.
NUM_TRAIN_STEPS = 12
LOCAL_OVERRIDES = (
    f'--config.num_train_steps={NUM_TRAIN_STEPS}',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=4',
    '--config.log_every_steps=2',
    '--config.image_summary_every_steps=4',
    '--config.keep_checkpoints=2',
)

_CACHE = {}


@dataclasses.dataclass(frozen=True)
class TinyDataset:
  """manual_dir: the generated DICOM studies; data_dir: the built TFDS dir;
  cases: the
  generator's manifest (ankle_jax.data.synthetic.SyntheticCase)."""

  manual_dir: pathlib.Path
  data_dir: pathlib.Path
  cases: tuple
  cache_dir: pathlib.Path


def tiny_dataset(tmp_path_factory) -> TinyDataset:
  """Synthetic studies (distinctive fake identifiers) built at 80 px, 2+2 eval cases/label."""
  if 'dataset' not in _CACHE:
    from ankle_jax.data import prepare
    from ankle_jax.data import synthetic

    root = tmp_path_factory.mktemp('tiny_dataset')
    manual_dir, data_dir = root / 'studies', root / 'tfds'
    cases = synthetic.generate_studies(
        manual_dir,
        num_normal=8,
        num_fracture=8,
        seed=5,
        min_size=96,
        max_size=128,
        views_probs=(0.0, 0.2, 0.8),
    )
    prepare.build_dataset(
        manual_dir,
        data_dir,
        num_workers=1,
        progress=False,
        image_size=IMAGE_SIZE,
        num_validation_per_label=2,
        num_test_per_label=2,
    )
    _CACHE['dataset'] = TinyDataset(
        manual_dir, data_dir, tuple(cases), tmp_path_factory.mktemp('jax_cache')
    )
  return _CACHE['dataset']


def subprocess_env(dataset: TinyDataset) -> dict:
  """The environment of every subprocess: CPU, one shared compilation cache."""
  return dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      KERAS_BACKEND='jax',
      JAX_COMPILATION_CACHE_DIR=str(dataset.cache_dir),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )


def launch_command(
    workdir: os.PathLike,
    dataset: TinyDataset,
    overrides: Sequence[str] = LOCAL_OVERRIDES,
) -> list[str]:
  """`python launch.py --config=configs/local.py ...` on the tiny dataset."""
  return [
      sys.executable,
      'launch.py',
      '--config=configs/local.py',
      f'--workdir={workdir}',
      f'--config.data.data_dir={dataset.data_dir}',
      *overrides,
  ]


def run_logged(
    command: Sequence[str],
    dataset: TinyDataset,
    log_prefix: os.PathLike,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
  """Runs `command` in the repo root; stdout/stderr also go to
  <log_prefix>.{stdout,stderr}.

  Returns the CompletedProcess with text stdout and stderr.
  """
  log_prefix = pathlib.Path(log_prefix)
  log_prefix.parent.mkdir(parents=True, exist_ok=True)
  result = subprocess.run(
      list(command),
      cwd=REPO_ROOT,
      env=subprocess_env(dataset),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  pathlib.Path(f'{log_prefix}.stdout').write_text(result.stdout)
  pathlib.Path(f'{log_prefix}.stderr').write_text(result.stderr)
  return result


def reference_run(
    tmp_path_factory, dataset: TinyDataset | None = None
) -> pathlib.Path:
  """An uninterrupted launch.py run of the tiny config (its logs are in the run dir)."""
  if 'reference_run' not in _CACHE:
    dataset = dataset or tiny_dataset(tmp_path_factory)
    workdir = tmp_path_factory.mktemp('reference') / 'run'
    result = run_logged(
        launch_command(workdir, dataset), dataset, workdir / 'launch'
    )
    assert result.returncode == 0, result.stderr[-4000:]
    _CACHE['reference_run'] = workdir
  return _CACHE['reference_run']


def fail_message(result: subprocess.CompletedProcess) -> str:
  return (
      f'exit {result.returncode}\nstdout:\n{result.stdout[-2000:]}\n'
      f'stderr:\n{result.stderr[-4000:]}'
  )
