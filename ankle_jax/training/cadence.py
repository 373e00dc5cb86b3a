"""When the training loop saves the latest checkpoint and validates: every N
steps (config.checkpoint_every_steps, eval_every_steps), or every N seconds of
wall time (config.checkpoint_every_seconds, eval_every_seconds; > 0 replaces
the step count of the same action), and always at the last step.

A time-based action is decided at the log steps (multiples of
log_every_steps, where the loop waits for the device anyway): it is due at the
first log step at least N seconds after the last time it was taken (or the
start of this launch). Process 0's clock decides, and its decision is
broadcast, so every process takes the same action at the same step.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np


@dataclasses.dataclass(frozen=True)
class Cadence:
  """The loop's saving and validation rhythm (the config's fields).

  *_every_steps: every N steps (> 0); *_every_seconds: every N seconds (0 =
  off: by steps); log_every_steps: the steps where time is checked.
  """

  num_train_steps: int
  log_every_steps: int
  checkpoint_every_steps: int
  eval_every_steps: int
  checkpoint_every_seconds: float = 0.0
  eval_every_seconds: float = 0.0

  @classmethod
  def from_config(cls, config: Any, num_train_steps: int) -> 'Cadence':
    return cls(
        num_train_steps=num_train_steps,
        log_every_steps=config.log_every_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        eval_every_steps=config.eval_every_steps,
        checkpoint_every_seconds=config.get('checkpoint_every_seconds') or 0.0,
        eval_every_seconds=config.get('eval_every_seconds') or 0.0,
    )

  @property
  def timed(self) -> bool:
    return self.checkpoint_every_seconds > 0 or self.eval_every_seconds > 0


@dataclasses.dataclass(frozen=True)
class Clock:
  """When (time.monotonic() seconds) the loop last saved and validated, or
  started."""

  last_checkpoint: float
  last_eval: float

  @classmethod
  def started(cls, now: float) -> 'Clock':
    return cls(last_checkpoint=now, last_eval=now)


@dataclasses.dataclass(frozen=True)
class Due:
  """What the loop does at a step."""

  checkpoint: bool
  evaluate: bool


def broadcast_from_chief(due: Due) -> Due:
  """Process 0's `due` on every process (a collective; one process: `due`)."""
  if jax.process_count() == 1:
    return due
  flags = multihost_utils.broadcast_one_to_all(
      np.asarray([due.checkpoint, due.evaluate], np.int32)
  )
  return Due(checkpoint=bool(flags[0]), evaluate=bool(flags[1]))


def _timed_due(cadence: Cadence, clock: Clock, now: float) -> Due:
  """The time-based actions whose seconds have passed (this process's clock)."""
  return Due(
      checkpoint=0
      < cadence.checkpoint_every_seconds
      <= now - clock.last_checkpoint,
      evaluate=0 < cadence.eval_every_seconds <= now - clock.last_eval,
  )


def decide(
    cadence: Cadence,
    clock: Clock,
    step: int,
    now: float,
    agree: Callable[[Due], Due] = broadcast_from_chief,
) -> tuple[Due, Clock]:
  """What is due at `step` and the clock after it.

  Every process calls it at every step the loop checks (the same steps on
  every process: at least the log steps); `agree` (process 0's decision on
  every process) is called at the log steps of a timed cadence only.

  Args:
    cadence: the rhythm; clock: the last actions; step: the step just taken
      (1-based); now: time.monotonic() of this process.
    agree: the decision every process takes, from each one's own.
  """
  last = step == cadence.num_train_steps
  timed = Due(checkpoint=False, evaluate=False)
  if cadence.timed and step % cadence.log_every_steps == 0 and not last:
    timed = agree(_timed_due(cadence, clock, now))
  due = Due(
      checkpoint=last
      or _by_steps(
          cadence.checkpoint_every_seconds, cadence.checkpoint_every_steps, step
      )
      or timed.checkpoint,
      evaluate=last
      or _by_steps(cadence.eval_every_seconds, cadence.eval_every_steps, step)
      or timed.evaluate,
  )
  return due, Clock(
      last_checkpoint=now if due.checkpoint else clock.last_checkpoint,
      last_eval=now if due.evaluate else clock.last_eval,
  )


def _by_steps(every_seconds: float, every_steps: int, step: int) -> bool:
  """Due by the step count (only when the action is not timed)."""
  return every_seconds <= 0 and step % every_steps == 0
