"""The grain iterator states of a checkpoint (its item 'data_iter'): every
process's state as JSON, and which one a resuming process takes."""

import base64
from collections.abc import Mapping, Sequence
import json
from typing import Any


def encode_iterator_state(state: Any) -> dict[str, Any]:
  """A grain iterator state (bytes or a JSON-able dict) as storable JSON."""
  if state is None:
    return {'kind': 'none'}
  if isinstance(state, (bytes, bytearray)):
    return {
        'kind': 'bytes',
        'value': base64.b64encode(bytes(state)).decode('ascii'),
    }
  return {'kind': 'json', 'value': json.loads(json.dumps(state))}


def decode_iterator_state(encoded: Mapping[str, Any]) -> Any:
  """Inverse of `encode_iterator_state`."""
  kind = encoded.get('kind')
  if kind == 'none':
    return None
  if kind == 'bytes':
    return base64.b64decode(encoded['value'])
  if kind == 'json':
    return encoded['value']
  raise ValueError(f'unknown data iterator state kind {kind!r} in checkpoint')


def encode_iterator_states(states: Sequence[Any]) -> dict[str, Any]:
  """Every process's grain iterator state (in process order) as JSON."""
  return {
      'kind': 'per_process',
      'states': [encode_iterator_state(state) for state in states],
  }


def decode_iterator_states(encoded: Mapping[str, Any]) -> list[Any]:
  """Inverse of `encode_iterator_states`; a single state (checkpoints of
  single-process runs before the per-process format) becomes a list of one."""
  if encoded.get('kind') == 'per_process':
    return [decode_iterator_state(state) for state in encoded['states']]
  return [decode_iterator_state(encoded)]


def iterator_state_for(
    states: Sequence[Any], process_index: int, process_count: int
) -> Any:
  """This process's iterator state among a checkpoint's `states`.

  The same number of processes: its own. A different number: the common state
  when all are equal (the loaders' state counts global batches, so it does not
  depend on the number of processes).

  Raises:
    ValueError: the states differ and the process count changed.
  """
  if len(states) == process_count:
    return states[process_index]
  if all(state == states[0] for state in states):
    return states[0]
  raise ValueError(
      f'the checkpoint holds the data iterator states of {len(states)} '
      f'processes, which differ, so they cannot resume {process_count} '
      f'processes; restart with {len(states)} processes'
  )
