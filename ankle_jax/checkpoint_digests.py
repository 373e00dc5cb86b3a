"""The SHA-256 digests of a checkpoint's arrays (`DIGEST_FILE` in each step
directory), written off the training thread, checked on restore.

Orbax keeps no checksums, so a flipped bit in an array's data file would
restore silently as a wrong weight. Each save therefore carries one more orbax
item, 'digests' (`DigestHandler`): when the save starts, the chief dispatches a
copy of every array on its device (asynchronous: the training thread does not
wait for it, and the copy survives the train step donating the state); in
orbax's background thread it copies them to the host, hashes them and writes
`DIGEST_FILE` into the step's temporary directory. Orbax commits the step (one
rename) only after every item is written, so a committed step always has its
digests, and a kill mid-save leaves only a temporary directory, never read.
"""

from collections.abc import Sequence
import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ankle_jax import sharding

# In each step directory: {'arrays': {path: {'sha256', 'dtype', 'shape'}}}.
DIGEST_FILE = 'sha256.json'
# The orbax item that writes DIGEST_FILE (its own directory stays empty).
DIGEST_ITEM = 'digests'
# Runs already warned about restoring without DIGEST_FILE (once per run).
_UNVERIFIED_RUNS_WARNED: set[str] = set()


class CheckpointIntegrityError(ValueError):
  """Restored arrays differ from the digests written when they were saved."""


def _path_name(path: Sequence[Any]) -> str:
  """'params/conv1/kernel': a pytree path by its keys, the same whether a
  level is a dict, a list or a NamedTuple (orbax restores the latter two as
  dicts when no target is given)."""
  names = []
  for key in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return '/'.join(names)


def array_digests(tree: Any) -> dict[str, dict[str, Any]]:
  """{path: {'sha256', 'dtype', 'shape'}} of every array of `tree` (jax arrays,
  replicated or on one process's devices, or numpy), hashed over its C-order
  host bytes."""
  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.ascontiguousarray(jax.device_get(leaf))
    digests[_path_name(path)] = {
        'sha256': hashlib.sha256(value.tobytes()).hexdigest(),
        'dtype': str(value.dtype),
        'shape': list(value.shape),
    }
  return digests


def write_digests(step_dir: epath.Path, tree: Any) -> None:
  """Writes DIGEST_FILE of `tree` into a step's directory (atomically: a
  temporary file, then a rename)."""
  payload = json.dumps({'arrays': array_digests(tree)}, indent=1)
  temporary = step_dir / f'{DIGEST_FILE}.tmp'
  temporary.write_text(payload)
  temporary.rename(step_dir / DIGEST_FILE)


@jax.jit
def _copy_arrays(arrays: list[jax.Array]) -> list[jax.Array]:
  return [jnp.copy(array) for array in arrays]


def detached_copy(tree: Any) -> Any:
  """A copy of `tree` that outlives the train step donating it: jax arrays
  copied on one of their devices (dispatched, not waited for; a replicated
  array: its first local copy, so no other process takes part), numpy arrays
  on the host."""
  leaves, treedef = jax.tree.flatten(tree)
  on_device = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
  local = [
      leaves[i].addressable_data(0)
      if leaves[i].is_fully_replicated
      else leaves[i]
      for i in on_device
  ]
  copies = dict(zip(on_device, _copy_arrays(local) if local else []))
  return jax.tree.unflatten(
      treedef,
      [
          copies[i] if i in copies else np.array(x, copy=True)
          for i, x in enumerate(leaves)
      ],
  )


class DigestHandler(ocp.AsyncCheckpointHandler):
  """Orbax item handler: writes DIGEST_FILE of the saved arrays (chief only)
  into the step directory, in orbax's background thread."""

  async def _write(self, step_dir: epath.Path, copies: Any) -> None:
    write_digests(step_dir, copies)

  async def async_save(
      self, directory: epath.Path, args: 'DigestSave'
  ) -> list[Any]:
    """Dispatches the copies now; the hashing runs in the returned future.

    directory: the item's directory, inside the step's temporary directory;
    DIGEST_FILE goes into the step directory itself (where restores and
    older runs have it).
    """
    if not sharding.is_chief():
      return []
    copies = detached_copy(args.arrays)
    return [
        ocp.future.CommitFutureAwaitingContractedSignals(
            self._write(epath.Path(directory).parent, copies),
            name='sha256_digests',
        )
    ]

  def save(self, directory: epath.Path, args: 'DigestSave') -> None:
    if sharding.is_chief():
      write_digests(epath.Path(directory).parent, args.arrays)

  def restore(self, directory: epath.Path, args: Any = None) -> None:
    """Nothing to restore: `verify_digests` reads DIGEST_FILE."""
    del directory, args

  def metadata(self, directory: epath.Path) -> None:
    del directory


@ocp.args.register_with_handler(DigestHandler, for_save=True)
@dataclasses.dataclass
class DigestSave(ocp.args.CheckpointArgs):
  """arrays: the pytree whose digests are written (the one saved)."""

  arrays: Any


@ocp.args.register_with_handler(DigestHandler, for_restore=True)
@dataclasses.dataclass
class DigestRestore(ocp.args.CheckpointArgs):
  """Orbax needs one; restores read DIGEST_FILE by `verify_digests`."""


def verify_digests(step_dir: epath.Path, tree: Any) -> None:
  """Checks restored arrays against the step's DIGEST_FILE (none: no check,
  and a warning once per run).

  Raises:
    CheckpointIntegrityError: an array is missing or differs, naming it.
  """
  path = step_dir / DIGEST_FILE
  if not path.exists():
    _warn_unverified_once(step_dir)
    return
  expected = json.loads(path.read_text())['arrays']
  actual = array_digests(tree)
  bad = sorted(
      name
      for name, digest in expected.items()
      if actual.get(name, {}).get('sha256') != digest['sha256']
  )
  if bad:
    raise CheckpointIntegrityError(
        f'{len(bad)} of {len(expected)} arrays of {step_dir} differ from the '
        f'SHA-256 written when they were saved (first: {bad[0]}); the files '
        'were altered or corrupted on disk'
    )


def _warn_unverified_once(step_dir: epath.Path) -> None:
  """Warns once per run (step_dir: <run>/checkpoints/<kind>/<step>)."""
  run_dir = os.path.dirname(
      os.path.dirname(os.path.dirname(os.path.abspath(os.fspath(step_dir))))
  )
  if run_dir in _UNVERIFIED_RUNS_WARNED:
    return
  _UNVERIFIED_RUNS_WARNED.add(run_dir)
  logging.warning(
      'Checkpoint %s has no %s, so its arrays cannot be verified (saved '
      'before digests were written); new saves, e.g. by continuing training, '
      'write digests.',
      step_dir,
      DIGEST_FILE,
  )
