"""The persistent XLA compilation cache of the commands (launch.py).

With it, a second run of the same model, shapes and flags loads its compiled
train and eval steps from disk instead of compiling them again (the first
compile of a paper model takes about a minute, on CPU and GPU alike). JAX keys
each entry by the computation, the devices and the compiler flags, so a stale
entry is never used.
"""

import dataclasses
import os
import pathlib

from absl import logging
import jax

# Compilations faster than this are not written (the many small jits of a run).
MIN_COMPILE_TIME_S = 1.0
# The directory is kept under this size, least recently used entries first.
MAX_CACHE_BYTES = 4 * 2**30
APP_DIR = 'ankle_jax'
CACHE_SUBDIR = 'jax_cache'


@dataclasses.dataclass(frozen=True)
class CacheSettings:
  """config.compilation_cache and config.compilation_cache_dir.

  Attributes:
    enabled: whether compiled programs are kept on disk.
    cache_dir: where; '' = JAX's own setting when one is made
      (JAX_COMPILATION_CACHE_DIR), else `default_dir()`.
  """

  enabled: bool = True
  cache_dir: str = ''

  @classmethod
  def from_config(cls, config) -> 'CacheSettings':
    return cls(
        enabled=bool(config.get('compilation_cache', True)),
        cache_dir=str(config.get('compilation_cache_dir', '') or ''),
    )


def default_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/ankle_jax/jax_cache, ~/.cache/ankle_jax/jax_cache when
  XDG_CACHE_HOME is unset."""
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / APP_DIR / CACHE_SUBDIR


def enable(settings: CacheSettings) -> pathlib.Path | None:
  """Turns the persistent compilation cache on (or off) for this process.

  Call it once, before the first compilation. An unusable directory only
  costs the cache: a warning is logged and compilation goes on without it.

  Args:
    settings: whether, and where.

  Returns:
    The cache directory in use, or None when the cache is off.
  """
  if not settings.enabled:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  if settings.cache_dir:
    path = pathlib.Path(settings.cache_dir).expanduser()
  elif jax.config.jax_compilation_cache_dir:
    path = pathlib.Path(jax.config.jax_compilation_cache_dir)
  else:
    path = default_dir()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning('No compilation cache: cannot create %s (%s).', path, e)
    return None
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update(
      'jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_S
  )
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  jax.config.update('jax_compilation_cache_max_size', MAX_CACHE_BYTES)
  return path
