"""What the commands show: the project's own lines, and errors a user can act on.

Every command (`launch.py`, `ankle_jax.evaluate`, `ankle_jax.predict`,
`ankle_jax.data.build`) starts through `run`, which
  * silences the libraries' INFO logging (orbax, absl, jax, TFDS) unless the
    absl flag `--verbosity=1` (or higher) is given;
  * turns a `UserError` raised anywhere below into one `error: ...` message on
    stderr and exit status 2, with the traceback only under `--verbosity=1`.
"""

from __future__ import annotations

from collections.abc import Callable
import logging as py_logging
import os
import sys
import traceback
from typing import Any

from absl import app
from absl import flags
from absl import logging

EXIT_USER_ERROR = 2
# Python loggers of the libraries that log at INFO in normal operation.
LIBRARY_LOGGERS = (
    'absl',
    'jax',
    'jax._src',
    'orbax',
    'tensorflow_datasets',
    'grain',
)


class UserError(Exception):
  """Input a user can fix: the message says what, where, and what to do."""


def quiet_libraries(verbosity: int) -> None:
  """Library logging at WARNING and above, unless verbosity >= 1."""
  if verbosity >= 1:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.set_verbosity(logging.WARNING)
  for name in LIBRARY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def fail(message: str, verbosity: int) -> None:
  """Prints `error: message` (and the traceback when verbose); exits with 2."""
  if verbosity >= 1:
    traceback.print_exc()
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], Any], **app_run_kwargs: Any) -> None:
  """`absl.app.run(main)` with the project's console rules (module docstring)."""

  def main_with_console(argv: list[str]) -> Any:
    verbosity = flags.FLAGS.verbosity
    quiet_libraries(verbosity)
    try:
      return main(argv)
    except UserError as e:
      fail(str(e), verbosity)

  app.run(main_with_console, **app_run_kwargs)
