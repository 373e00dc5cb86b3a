"""Data parallelism: the mesh, batch placement and multi-process start-up.

A 1-D Mesh over all devices with axis 'data'; every batch is sharded on axis 0
and the train state is replicated (NamedSharding). Each process reads the same
global batch and places only its devices' slices, so the data order is the same
whatever the number of devices or hosts.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from ankle_jax import console

DATA_AXIS = 'data'


# The batch entries that go to the devices (a multi-view batch adds its
# view mask [B, V]); the rest (case ids, masks of padding rows) stays on host.
DEVICE_KEYS = ('image', 'view_mask', 'label')


def initialize(distributed: bool) -> None:
  """Starts jax.distributed (multi-host runs); must precede any JAX work."""
  if distributed:
    jax.distributed.initialize()


def is_chief() -> bool:
  """True on process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def create_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device (the train state)."""
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Axis 0 split over the devices (batches)."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
  """Raises UserError when config.<field> does not split evenly on the mesh."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise console.UserError(
        f'config.{field}={batch_size} is not divisible by the {num_devices} '
        f'devices; set --config.{field} to a multiple of {num_devices}'
    )


def shard_batch(
    batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    keys: Sequence[str] | None = None,
) -> dict[str, jax.Array]:
  """Places the global host batch on the mesh, sharded on axis 0.

  Args:
    batch: host arrays with the global batch on axis 0 (e.g. 'image' [B, S, S,
      1] float32 in [0, 1], 'label' int [B]); the same on every process.
    mesh: the data-parallel mesh.
    keys: the entries to place (default: those of DEVICE_KEYS the batch
      has).

  Returns:
    {key: jax.Array} of the same global shapes; each process transfers only the
    slices of its own devices.
  """
  sharding = data_sharded(mesh)
  if keys is None:
    keys = [key for key in DEVICE_KEYS if key in batch]
  placed = {}
  for key in keys:
    value = np.asarray(batch[key])
    placed[key] = jax.make_array_from_callback(
        value.shape, sharding, lambda index, value=value: value[index]
    )
  return placed
