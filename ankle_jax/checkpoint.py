"""Orbax checkpoints of a training run: the latest N, the best one, and exact resume.

Layout under a run's workdir:
  config.json                      the full run config (written by `writers`).
  checkpoints/latest/<step>/       the latest `keep` checkpoints, each with the items
      state      the whole train state as a pytree: step, params, batch_stats,
                 opt_state, rng;
      data_iter  the grain iterator state (JSON), for the exact data order on resume;
      loop       the loop's own state (JSON): best validation so far, early stopping.
  checkpoints/best/<step>/         the single best checkpoint by the chosen metric:
      variables  {'params', 'batch_stats'};
      meta       JSON {'step', 'metrics'}.

Saves are synchronous, so a checkpoint on disk is always complete; a state with a
non-finite loss is never handed to `save_latest` (train.py checks first).
"""

import base64
import json
import os
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

LATEST_DIR = "checkpoints/latest"
BEST_DIR = "checkpoints/best"
CONFIG_FILE = "config.json"

# best_metric -> 'max' or 'min'.
METRIC_MODES = {
    "val_accuracy": "max",
    "val_case_accuracy": "max",
    "val_auc": "max",
    "val_loss": "min",
}


def _absolute(path: epath.PathLike) -> epath.Path:
  """Orbax needs absolute directories; runs are often given relative ones."""
  return epath.Path(os.path.abspath(os.fspath(path)))


def _options(max_to_keep: int, read_only: bool = False) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=False)


def _latest_manager(workdir: epath.PathLike, keep: int = 3,
                    read_only: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      _absolute(workdir) / LATEST_DIR,
      options=_options(keep, read_only),
      item_handlers={
          "state": ocp.PyTreeCheckpointHandler(),
          "data_iter": ocp.JsonCheckpointHandler(),
          "loop": ocp.JsonCheckpointHandler(),
      })


def _best_manager(workdir: epath.PathLike,
                  read_only: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      _absolute(workdir) / BEST_DIR,
      options=_options(1, read_only),
      item_handlers={
          "variables": ocp.PyTreeCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler(),
      })


def encode_iterator_state(state: Any) -> dict[str, Any]:
  """Makes a grain iterator state (bytes or a JSON-able dict) storable as JSON."""
  if state is None:
    return {"kind": "none"}
  if isinstance(state, (bytes, bytearray)):
    return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode("ascii")}
  return {"kind": "json", "value": json.loads(json.dumps(state))}


def decode_iterator_state(encoded: Mapping[str, Any]) -> Any:
  """Inverse of `encode_iterator_state`."""
  kind = encoded.get("kind")
  if kind == "none":
    return None
  if kind == "bytes":
    return base64.b64decode(encoded["value"])
  if kind == "json":
    return encoded["value"]
  raise ValueError(f"unknown data iterator state kind {kind!r} in checkpoint")


def _numpy_restore_args(metadata_tree: Any) -> Any:
  return jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata_tree)


class RunCheckpoints:
  """The latest-N and best checkpoint managers of one training run."""

  def __init__(self, workdir: epath.PathLike, *, keep: int = 3,
               best_metric: str = "val_accuracy"):
    if best_metric not in METRIC_MODES:
      raise ValueError(
          f"config.best_metric={best_metric!r}; expected one of {sorted(METRIC_MODES)}")
    self.workdir = epath.Path(workdir)
    self.best_metric = best_metric
    self.best_mode = METRIC_MODES[best_metric]
    self.latest = _latest_manager(self.workdir, keep=keep)
    self.best = _best_manager(self.workdir)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save_latest(self, step: int, state_tree: Any, data_iter_state: Any,
                  loop_state: Mapping[str, Any]) -> None:
    """Saves the full train state, the data iterator state and the loop state."""
    self.latest.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state_tree),
            data_iter=ocp.args.JsonSave(encode_iterator_state(data_iter_state)),
            loop=ocp.args.JsonSave(dict(loop_state))),
        force=True)
    self.latest.wait_until_finished()

  def restore_latest(self, target_state_tree: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Restores (state_tree, data_iter_state, loop_state) of the latest checkpoint.

    Args:
      target_state_tree: a pytree of jax arrays with the expected structure, shapes
        and shardings (a freshly created state).
    """
    step = self.latest.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.workdir / LATEST_DIR}")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target_state_tree)
    restored = self.latest.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target_state_tree, restore_args=restore_args),
            data_iter=ocp.args.JsonRestore(),
            loop=ocp.args.JsonRestore()))
    return (restored["state"], decode_iterator_state(restored["data_iter"]),
            dict(restored["loop"]))

  def save_best(self, step: int, variables: Any, metrics: Mapping[str, float]) -> None:
    """Replaces the best checkpoint by `variables` ({'params', 'batch_stats'})."""
    meta = {"step": int(step), "best_metric": self.best_metric,
            "metrics": {k: float(v) for k, v in metrics.items()}}
    self.best.save(
        int(step),
        args=ocp.args.Composite(
            variables=ocp.args.PyTreeSave(variables),
            meta=ocp.args.JsonSave(meta)),
        force=True)
    self.best.wait_until_finished()
    # max_to_keep=1 keeps the newest save, which is the best by construction
    # (train.py only calls save_best on an improvement).

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_variables(workdir: epath.PathLike,
                      which: str = "best") -> tuple[dict[str, Any], int]:
  """Loads a run's model variables for evaluation.

  Args:
    workdir: the run directory given to launch.py.
    which: 'best' (best validation checkpoint) or 'latest' (last saved step).

  Returns:
    (variables, step): variables = {'params', 'batch_stats'} as numpy arrays, and the
    training step at which they were saved.
  """
  workdir = epath.Path(workdir)
  if which == "best":
    manager = _best_manager(workdir, read_only=True)
    item = "variables"
  elif which == "latest":
    manager = _latest_manager(workdir, read_only=True)
    item = "state"
  else:
    raise ValueError(f"which={which!r}; expected 'best' or 'latest'")
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"no {which!r} checkpoint under {workdir / (BEST_DIR if which == 'best' else LATEST_DIR)}"
        " (train first: python launch.py --config=... --workdir=...)")
  metadata = manager.item_metadata(step)[item]
  metadata_tree = getattr(metadata, "tree", metadata)
  restored = manager.restore(
      step,
      args=ocp.args.Composite(**{
          item: ocp.args.PyTreeRestore(
              restore_args=_numpy_restore_args(metadata_tree))}))[item]
  manager.close()
  variables = {"params": restored["params"],
               "batch_stats": restored.get("batch_stats", {})}
  return variables, int(step)


def load_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """Reads a run's config.json back into a ConfigDict."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a training run directory?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
