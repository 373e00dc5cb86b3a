"""Data parallelism: the mesh, batch placement and multi-process start-up.

A 1-D Mesh over all devices with axis 'data' (each process's devices next to
each other, in process order); every batch is sharded on axis 0 and the train
state is replicated (NamedSharding).

Several processes (`jax.distributed`, one per host or GPU): each process reads
only its share of every global batch, the `process_index`-th of
`process_count` equal blocks of rows (`data.pipeline`'s loaders), and
`shard_batch` assembles the global batch from the processes' blocks with
`jax.make_array_from_process_local_data`. So the global batch, and the order of
examples over a run, is the same whatever the number of processes and devices.
Host values that every process needs (validation labels and case ids, the data
iterators' states) travel with `allgather_json`. A process that fails ends
at once (`end_together`), so that the others do not wait for it.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import json
import os
import socket
import sys
import time
import traceback
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
# view mask [B, V]; a split on the device has record indices in place of
# images); the rest (case ids, masks of padding rows) stays on host.
DEVICE_KEYS = ('image', 'index', 'view_mask', 'label')

# The environment variables of an explicit multi-process start (any launcher):
# the coordinator's host:port (process 0 listens there), the number of
# processes, and this process's id in [0, JAX_NUM_PROCESSES).
COORDINATOR_ENV = 'JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES_ENV = 'JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'JAX_PROCESS_ID'


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """An explicit start from the environment (COORDINATOR_ENV & co.)."""

  coordinator_address: str
  num_processes: int
  process_id: int

  @classmethod
  def from_environment(
      cls, environ: Mapping[str, str] = os.environ
  ) -> 'ProcessGroup | None':
    """The group the environment names; None when COORDINATOR_ENV is unset
    (then JAX auto-detects SLURM, Open MPI or Kubernetes).

    Raises:
      console.UserError: the variables are incomplete or not integers.
    """
    address = environ.get(COORDINATOR_ENV, '').strip()
    if not address:
      return None
    try:
      group = cls(
          address,
          int(environ[NUM_PROCESSES_ENV]),
          int(environ[PROCESS_ID_ENV]),
      )
    except (KeyError, ValueError) as e:
      raise console.UserError(
          f'{COORDINATOR_ENV}={address} is set, so {NUM_PROCESSES_ENV} and '
          f'{PROCESS_ID_ENV} must be integers too (got '
          f'{environ.get(NUM_PROCESSES_ENV)!r}, '
          f'{environ.get(PROCESS_ID_ENV)!r})'
      ) from e
    if not 0 <= group.process_id < group.num_processes:
      raise console.UserError(
          f'{PROCESS_ID_ENV}={group.process_id} is outside [0, '
          f'{NUM_PROCESSES_ENV}={group.num_processes})'
      )
    return group


def _split_address(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise console.UserError(
        f'{COORDINATOR_ENV}={address!r} is not host:port, e.g. 127.0.0.1:8476'
    )
  return host.strip('[]'), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once a TCP connection to `address` (host:port) opens.

  Raises:
    console.UserError: no connection within timeout_s, naming the address.
  """
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise console.UserError(
            f'could not reach the coordinator at {address} within '
            f'{timeout_s:g} s ({e.strerror or e}). Start process 0 there, '
            f'or fix {COORDINATOR_ENV}.'
        ) from e
      time.sleep(0.5)


def initialize(
    distributed: bool, *, timeout_s: int = 300, heartbeat_timeout_s: int = 100
) -> None:
  """Starts jax.distributed; must precede any other JAX call.

  With COORDINATOR_ENV set, the group comes from the environment (and a
  process other than 0 first waits, at most timeout_s, until the coordinator
  answers); otherwise JAX detects the cluster (SLURM, Open MPI, Kubernetes).
  A process that stops sending heartbeats for heartbeat_timeout_s seconds is
  dead, and the others then end.

  Raises:
    console.UserError: a bad environment, or no coordinator within timeout_s.
  """
  if not distributed:
    return
  group = ProcessGroup.from_environment()
  options = {
      'initialization_timeout': int(timeout_s),
      'heartbeat_timeout_seconds': int(heartbeat_timeout_s),
  }
  if group is None:
    jax.distributed.initialize(**options)
    sync_processes('jax_distributed_started')
    return
  if group.process_id > 0:
    wait_for_coordinator(group.coordinator_address, timeout_s)
  jax.distributed.initialize(
      coordinator_address=group.coordinator_address,
      num_processes=group.num_processes,
      process_id=group.process_id,
      **options,
  )
  # The first collective sets up the CPU (gloo) communicator, which gives up
  # when the processes arrive more than 30 s apart; now they arrive together.
  sync_processes('jax_distributed_started')


def end_together(run: Callable[[], int], verbosity: int = 0) -> int:
  """Returns run()'s exit status; with several processes, one that fails
  prints `error: process i of n: ...` and ends at once (os._exit).

  Ending at once, rather than in jax.distributed's shutdown barrier, matters
  when the others are blocked in a collective: their collective then fails
  and they end too (or, at worst, their heartbeat timeout ends them).
  """
  if jax.process_count() == 1:
    return run()
  try:
    status, message = run(), None
  except console.UserError as e:
    status, message = console.EXIT_USER_ERROR, str(e)
  except Exception as e:  # A peer gone (a failed collective), or any failure.
    if verbosity >= 1:
      traceback.print_exc()
    lines = str(e).strip().splitlines() or ['']
    status, message = 1, (
        f'{type(e).__name__}: {lines[0][:300]}\nIf another process died, '
        'restart all of them with the same command: training resumes from '
        'the last complete checkpoint.'
    )
  if not status:
    return 0
  where = f'process {jax.process_index()} of {jax.process_count()}'
  if message:
    print(f'error: {where}: {message}', file=sys.stderr)
  else:  # run() printed its error; say which process, and what next.
    print(
        f'error: {where} stopped (exit status {status}). If another process '
        'died, restart all of them with the same command.',
        file=sys.stderr,
    )
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def is_chief() -> bool:
  """True on process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def create_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices), each
  process's devices contiguous and in process order."""
  devices = list(jax.devices() if devices is None else devices)
  devices.sort(key=lambda d: (d.process_index, d.id))
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
  """Places this process's rows of a global batch on the mesh.

  Args:
    batch: host arrays with this process's block of the global batch on axis
      0 (its block, from the `data.pipeline` loaders given its
      process_index; with one process, the whole batch), e.g. 'image'
      [B / P, S, S, 1] float32 in [0, 1], 'label' int [B / P].
    mesh: the data-parallel mesh.
    keys: the entries to place (default: those of DEVICE_KEYS the batch
      has).

  Returns:
    {key: jax.Array} of the global batch ([B, ...]), sharded on axis 0.
  """
  sharding = data_sharded(mesh)
  processes = len({device.process_index for device in mesh.devices.flat})
  if keys is None:
    keys = [key for key in DEVICE_KEYS if key in batch]
  placed = {}
  for key in keys:
    value = np.asarray(batch[key])
    global_shape = (value.shape[0] * processes, *value.shape[1:])
    placed[key] = jax.make_array_from_process_local_data(
        sharding, value, global_shape
    )
  return placed


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (a collective: every process
  calls it)."""
  if jax.process_count() == 1:
    return [data]
  sizes = multihost_utils.process_allgather(np.int32(len(data)))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[: len(data)] = np.frombuffer(data, np.uint8)
  rows = multihost_utils.process_allgather(padded)
  return [bytes(row[:size]) for row, size in zip(rows, sizes)]


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-serializable `value`, in process order."""
  payloads = allgather_bytes(json.dumps(value).encode('utf-8'))
  return [json.loads(payload) for payload in payloads]
