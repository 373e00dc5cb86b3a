r"""Predicts one case, or (with --out) a batch of studies, with trained runs.

  python -m ankle_jax.predict --runs=RUN1,RUN2,... \
      [--checkpoint=best|latest] [--heatmap=OUT.png] [--occlusion] \
      [--panel_size=300] [--vote=soft|hard|max|noisy_or] PATH...

  python -m ankle_jax.predict --runs=RUN1,... --out=DIR \
      [--group_by=study|series|folder] [--hash_ids] [--salt_file=PATH] \
      [--evaluation=EVAL_DIR [--operating_point=youden|sens90|0.5]] \
      [--dicom_out [--uid_root=1.2.3.]] [--batch_size=16] PATH...

With --out: every case under the PATHs (any depth) goes through the runs,
and DIR gets predictions.csv (a row per case and per view), errors.csv and,
with --dicom_out, an SR per case and a Grad-CAM Secondary Capture per view
(ankle_jax.prediction.run says the steps; ankle_jax.dicom_out the objects).

--checkpoint: which checkpoint of each run; by default the run's
config.eval_checkpoint ('best'; 'latest' in the five paper configs).

PATH: the DICOM (or PNG/JPEG) files of ONE case, or the case's folder (all
its files, sorted by name). Each view is read as evaluate reads it: as the
dataset builder stores it (--stored_size, 300 px), resized to each run's image
size and standardized per image; runs of one architecture
are applied together with one vmapped forward (ankle_jax.inference). A file
that cannot be read (e.g. a stray notes.txt) is skipped with a one-line
warning; the case is predicted from the views that could be read.

Printed: for every run, each view's fracture probability and vote, the case
probability (mean over views) and the case vote (majority of the view votes,
ties to fracture); then the same for the ensemble of all runs, with hard
(majority of the runs' votes) and soft (mean probability) voting. A
multi-view run (ankle_jax.models.multiview) prints its case probability and,
per view, its attention weight in the fusion and its probability alone; an
ensemble with one votes per case (ankle_jax.evaluation.voting).
--vote adds a line per per-view run and for the ensemble: the case vote by
that rule (max: the largest view probability; noisy_or: 1 - prod(1 - p)).

--heatmap=OUT.png writes Grad-CAM overlays (last conv stage, the mean of the
runs' normalized maps; for a multi-view run, of its case evidence over all
views at once) of each view, titled with the view's file name, with a
colour bar; --occlusion adds a row of occlusion maps (see ankle_jax.saliency
for the layout and size).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from ankle_jax import checkpoint as checkpoint_lib
from ankle_jax import console
from ankle_jax import saliency
from ankle_jax.evaluation import voting
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision as decision_lib
from ankle_jax.prediction import inputs as inputs_lib
from ankle_jax.prediction import run as batch_run
from ankle_jax.prediction import single


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_list('runs', None, 'Comma-separated training run directories.')
  flags.DEFINE_enum(
      'checkpoint',
      None,
      list(checkpoint_lib.CHECKPOINT_CHOICES),
      "Which checkpoint of each run (default: the run's "
      "config.eval_checkpoint; 'best' for runs saved without it).",
  )
  flags.DEFINE_string('heatmap', None, 'Write Grad-CAM overlays to this PNG.')
  flags.DEFINE_bool(
      'occlusion',
      False,
      'Add occlusion maps to the --heatmap PNG (slow: one forward per patch '
      'position).',
  )
  flags.DEFINE_enum(
      'vote',
      None,
      list(voting.CASE_VOTINGS),
      'Also print each case vote by this rule (ankle_jax.evaluation.voting; '
      'default: the soft and hard votes only, as always).',
  )
  flags.DEFINE_integer(
      'panel_size',
      saliency.PANEL_SIZE,
      'Side in pixels of each view panel of the PNG (and of the --dicom_out '
      'Secondary Captures).',
  )
  define_batch_flags()


def define_batch_flags() -> None:
  """The flags of a batch (--out)."""
  flags.DEFINE_string(
      'out',
      None,
      'Batch mode: predict every case under the PATHs (any depth) and write '
      'predictions.csv and errors.csv to this folder.',
  )
  flags.DEFINE_enum(
      'group_by',
      'study',
      list(inputs_lib.GROUP_BY),
      'What makes a case of DICOM files (PNG/JPEG: always their folder).',
  )
  flags.DEFINE_bool(
      'hash_ids', True, 'Name cases by a salted hash of their UID or folder.'
  )
  flags.DEFINE_string(
      'salt_file', None, 'The salt file of ankle_jax.data.build --salt_file.'
  )
  flags.DEFINE_string(
      'evaluation',
      None,
      'A folder written by python -m ankle_jax.evaluate for the same runs and '
      'checkpoints: its calibration and operating points.',
  )
  flags.DEFINE_enum(
      'operating_point',
      None,
      list(decision_lib.OPERATING_POINTS),
      'Decision threshold (default: youden with --evaluation, else 0.5).',
  )
  flags.DEFINE_bool(
      'dicom_out',
      False,
      'Also write, under --out/dicom, an SR per case and a Grad-CAM Secondary '
      'Capture per view (DICOM inputs only).',
  )
  flags.DEFINE_string('uid_root', None, "UID prefix (default: pydicom's).")
  flags.DEFINE_integer(
      'batch_size', batch_lib.DEFAULT_BATCH_SIZE, 'Views per forward batch.'
  )
  flags.DEFINE_integer(
      'stored_size',
      batch_lib.STORED_SIZE,
      "Read views as evaluate does: stored at the dataset builder's image "
      "size, then resized to the run's (0: directly at the run's size).",
  )
  flags.DEFINE_bool('progress', True, 'Show the progress bar.')


def batch_settings(paths: Sequence[str]) -> batch_run.BatchSettings:
  """The batch flags as BatchSettings."""
  f = flags.FLAGS
  return batch_run.BatchSettings(
      run_dirs=f.runs,
      paths=paths,
      out_dir=f.out,
      checkpoint=f.checkpoint,
      group_by=f.group_by,
      hash_ids=f.hash_ids,
      salt_file=f.salt_file,
      evaluation=f.evaluation,
      operating_point=f.operating_point,
      dicom_out=f.dicom_out,
      uid_root=f.uid_root,
      batch_size=f.batch_size,
      panel_size=f.panel_size,
      stored_size=f.stored_size,
      progress=f.progress,
      vote=f.vote or 'soft',
  )


def main(argv: Sequence[str]) -> None:
  paths = argv[1:]
  if not flags.FLAGS.runs:
    raise console.UserError(f'--runs is required.\n{single.USAGE}')
  if not paths:
    raise console.UserError(f'no case folder or files given.\n{single.USAGE}')
  if flags.FLAGS.out:
    if flags.FLAGS.evaluation and flags.FLAGS.vote not in (None, 'soft'):
      raise console.UserError(
          f'--vote={flags.FLAGS.vote} with --evaluation: the evaluation chose '
          'its calibration and operating points for the soft vote; drop --vote.'
      )
    batch_run.run_batch(batch_settings(paths))
    return
  if flags.FLAGS.dicom_out or flags.FLAGS.evaluation:
    raise console.UserError('--dicom_out and --evaluation need --out=DIR.')
  if flags.FLAGS.occlusion and not flags.FLAGS.heatmap:
    raise console.UserError('--occlusion needs --heatmap=OUT.png.')
  single.run_predict(
      flags.FLAGS.runs,
      paths,
      checkpoint=flags.FLAGS.checkpoint,
      heatmap_path=flags.FLAGS.heatmap,
      occlusion=flags.FLAGS.occlusion,
      panel_size=flags.FLAGS.panel_size,
      vote=flags.FLAGS.vote,
      stored_size=flags.FLAGS.stored_size,
  )


if __name__ == '__main__':
  define_flags()
  console.run(main)
