"""What the commands show: the project's own lines, and errors a user can act on.

Every command (`launch.py`, `ankle_jax.evaluate`, `ankle_jax.predict`,
`ankle_jax.data.build`, `ankle_jax.data.synthetic`) starts through `run`, which
  * silences the libraries' INFO logging (absl, orbax, jax, TFDS, grain) unless
    the absl flag `--verbosity=1` is given (2: their DEBUG records as well);
  * turns a bad command line into a 1-3 line `error: ...` message and exit
    status 2: an unknown flag, a missing config file, an unknown config field
    (`--config.no_such_field=1`, with the closest real field names) or a value
    of the wrong type (`--config.batch_size=abc`);
  * turns a `UserError` raised anywhere below into one `error: ...` message on
    stderr and exit status 2, with the traceback only under `--verbosity=1`;
  * exits 0 on `--help` (absl's own help flags exit 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import difflib
import logging as py_logging
import os
import re
import sys
import traceback
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections.config_flags import config_flags as ml_config_flags

EXIT_USER_ERROR = 2
# Python loggers of the libraries that log at INFO in normal operation (orbax
# and TFDS log through absl; jax, grain and etils through their own loggers).
LIBRARY_LOGGERS = (
    'absl',
    'jax',
    'jax._src',
    'orbax',
    'tensorflow_datasets',
    'grain',
    'etils',
)
HELP_FLAGS = ('help', 'helpshort', 'helpfull', 'helpxml', '?')


class UserError(Exception):
  """Input a user can fix: the message says what, where, and what to do."""


def quiet_libraries(verbosity: int) -> None:
  """Library logging at WARNING and above, unless verbosity >= 1.

  verbosity 1 shows the libraries' INFO records (absl's own level 1 is DEBUG:
  ~20k lines of compiler logs for a short run); 2 and above, DEBUG as well.
  Loggers named in absl's `--logger_levels` keep the level given there.
  """
  kept = set(flags.FLAGS['logger_levels'].value or {})
  if verbosity >= 1:
    level = py_logging.NOTSET  # Inherit the root logger's level.
    if verbosity == 1:
      py_logging.getLogger().setLevel(py_logging.INFO)
  else:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    logging.set_verbosity(logging.WARNING)
    level = py_logging.WARNING
  for name in LIBRARY_LOGGERS:
    if name not in kept:
      py_logging.getLogger(name).setLevel(level)


def fail(
    message: str, verbosity: int, error: BaseException | None = None
) -> None:
  """Prints `error: message` (and the traceback when verbose); exits with 2."""
  if verbosity >= 1:
    if error is not None:
      traceback.print_exception(error)
    elif sys.exc_info()[0] is not None:
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

  app_run_kwargs.setdefault('flags_parser', parse_flags)
  app.run(main_with_console, **app_run_kwargs)


# ------------------------------------------------------------ the command line
def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags_parser with the project's messages (see the module doc).

  Returns:
    The arguments left after the flags (argv[0] first), as absl's own parser.
  """
  try:
    remaining, error = flags.FLAGS(argv), None
  except SystemExit as e:
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)  # absl exits 1 after printing the help.
    raise
  except Exception as e:  # Diagnosed below; re-raised if not the user's.
    remaining, error = None, e
  message = config_flag_problem(argv, error)
  if message is None and isinstance(error, flags.Error):
    message = _flag_error_message(error)
  if message is not None:
    fail(message, _argv_verbosity(argv), error)
  if error is not None:
    raise error  # Not the user's input (e.g. a config file that raises).
  return remaining


def _asks_for_help(argv: Sequence[str]) -> bool:
  return any(
      re.fullmatch(r'--?(' + '|'.join(map(re.escape, HELP_FLAGS)) + ')', a)
      for a in _flag_args(argv)
  )


def _flag_args(argv: Sequence[str]) -> Iterator[str]:
  """The arguments before a `--` (argv[0] excluded)."""
  for arg in argv[1:]:
    if arg == '--':
      return
    yield arg


def _flag_value(args: Sequence[str], name_pattern: str) -> str | None:
  """The value of the last `--name=value` or `--name value` in args, or None.

  name_pattern: a regular expression matching the flag's name(s).
  """
  value = None
  for i, arg in enumerate(args):
    match = re.fullmatch(rf'--?(?:{name_pattern})(?:=(.*))?', arg)
    if match:
      value = match.group(1)
      if value is None and i + 1 < len(args):
        value = args[i + 1]
  return value


def _argv_verbosity(argv: Sequence[str]) -> int:
  """absl's --verbosity (-v) as given on the command line; 0 if not given."""
  value = _flag_value(list(_flag_args(argv)), 'verbosity|v')
  with contextlib.suppress(TypeError, ValueError):
    return int(value)
  return 0


def _flag_error_message(error: flags.Error) -> str:
  """A flag error (unknown flag, bad value, missing required flag) in brief."""
  message = str(error).strip().splitlines()[0]
  required = re.search(
      r'Flag --(\S+) must have a value other than None', message
  )
  if required:
    return f'--{required.group(1)} is required (see --help)'
  return message


# ---------------------------------------------------------------- config flags
@dataclasses.dataclass(frozen=True)
class _ConfigArgs:
  """A config-file flag as given on the command line."""

  name: str  # The flag, e.g. 'config'.
  path: str  # The config file (without a ':<arguments>' suffix).
  spec: str  # The flag's value as given (path[:arguments]).
  overrides: tuple[tuple[str, str], ...]  # (dotted field, the whole argument)


def config_flag_problem(
    argv: Sequence[str], error: BaseException | None = None
) -> str | None:
  """The user's mistake in the config flags of argv, or None.

  Checked: the config file exists; when parsing failed (`error`), every
  `--<flag>.<field>` override names a field of the config and the failing one
  has a value of the field's type.
  """
  for args in _config_args(argv):
    if not os.path.isfile(args.path):
      return _missing_config_message(args)
    if error is None:
      continue
    parser = ml_config_flags.ConfigFileFlagParser(args.name, lock_config=False)
    config = parser.parse(args.spec)
    if not isinstance(config, config_dict.ConfigDict):
      continue
    for field, arg in args.overrides:
      if _lookup(config, field) is _UNKNOWN:
        return _unknown_field_message(args, field, arg, config)
    if isinstance(error, flags.IllegalFlagValueError):
      message = _bad_value_message(args, config, str(error))
      if message:
        return message
  return None


def _config_args(argv: Sequence[str]) -> Iterator[_ConfigArgs]:
  args = list(_flag_args(argv))
  for name in sorted(set(flags.FLAGS)):
    flag = flags.FLAGS[name]
    if flag.name != name or not isinstance(
        flag.parser, ml_config_flags.ConfigFileFlagParser
    ):
      continue
    spec = _flag_value(args, re.escape(name))
    overrides = []
    for arg in args:
      override = re.fullmatch(rf'--?{re.escape(name)}\.([^=]+)(=.*)?', arg)
      if override:
        overrides.append((override.group(1), arg))
    if spec:
      path = spec.split(':', 1)[0]
      yield _ConfigArgs(name, path, spec, tuple(overrides))


def _missing_config_message(args: _ConfigArgs) -> str:
  folder = os.path.dirname(args.path) or '.'
  message = f'config file {args.path!r} not found (--{args.name}={args.spec})'
  if os.path.isdir(folder):
    existing = sorted(
        f for f in os.listdir(folder) if f.endswith('.py') and f[0] != '_'
    )
    if 0 < len(existing) <= 12:
      message += f'\n{folder}/ holds: {", ".join(existing)}'
  return message


_UNKNOWN = object()


def _lookup(config: Any, field: str) -> Any:
  """The value at a dotted field path, or _UNKNOWN if it is not there."""
  value = config
  for part in field.split('.'):
    if value is None:
      return None  # A placeholder: ml_collections fills in its parents.
    part = part.split('[', 1)[0]
    if not isinstance(value, (config_dict.ConfigDict, dict)):
      return _UNKNOWN
    if part not in value:
      return _UNKNOWN
    value = value[part]
  return value


def _field_names(config: Any, prefix: str = '') -> Iterator[str]:
  """The dotted names of the settable fields of a (nested) config: the
  leaves, and the empty sub-configs (such as model.kwargs)."""
  for key in config:
    name = f'{prefix}{key}'
    value = config[key]
    if isinstance(value, (config_dict.ConfigDict, dict)) and value:
      yield from _field_names(value, f'{name}.')
    else:
      yield name


def _fields_listed_in(args: _ConfigArgs) -> str:
  """Where a reader finds the fields: configs/default.py next to the config."""
  default = os.path.join(os.path.dirname(args.path), 'default.py')
  return default if os.path.isfile(default) else args.path


def closest_fields(field: str, names: Sequence[str], n: int = 3) -> list[str]:
  """The field names closest to `field`, whole dotted name or last part."""
  scores = {}
  last = field.rsplit('.', 1)[-1]
  for name in names:
    scores[name] = max(
        difflib.SequenceMatcher(None, field, name).ratio(),
        difflib.SequenceMatcher(None, last, name.rsplit('.', 1)[-1]).ratio(),
    )
  best = sorted(names, key=lambda name: -scores[name])
  return [name for name in best[:n] if scores[name] >= 0.6]


def _unknown_field_message(
    args: _ConfigArgs, field: str, arg: str, config: Any
) -> str:
  suggestions = closest_fields(field, list(_field_names(config)))
  message = f'unknown config field {field!r} ({arg})'
  if suggestions:
    message += '; did you mean ' + ', '.join(repr(s) for s in suggestions) + '?'
  return message + f'\nThe fields and their defaults: {_fields_listed_in(args)}'


def _bad_value_message(
    args: _ConfigArgs, config: Any, error: str
) -> str | None:
  """'config field X expects T' for `flag --config.X=V: <reason>`, or None."""
  match = re.match(
      rf'flag --{re.escape(args.name)}\.([^=\s]+)=(.*?): ', error, re.DOTALL
  )
  if not match:
    return None
  field, value = match.groups()
  parent, _, key = field.rpartition('.')
  holder = _lookup(config, parent) if parent else config
  try:
    expected = holder.get_type(key).__name__
  except (AttributeError, KeyError, TypeError):
    expected = type(_lookup(config, field)).__name__
  return (
      f'config field {field!r} expects {expected}, got {value!r} '
      f'(--{args.name}.{field}={value})\n'
      f'The fields and their defaults: {_fields_listed_in(args)}'
  )
