"""ankle_jax.compilation_cache: where the persistent cache goes, and off."""

import pathlib

import jax
import pytest

from ankle_jax import compilation_cache
from configs import default as default_config

_JAX_FIELDS = (
    'jax_enable_compilation_cache',
    'jax_compilation_cache_dir',
    'jax_persistent_cache_min_compile_time_secs',
    'jax_persistent_cache_min_entry_size_bytes',
    'jax_compilation_cache_max_size',
)


@pytest.fixture(autouse=True)
def restore_jax_config():
  """Puts back the JAX settings `enable` changes."""
  saved = {name: getattr(jax.config, name) for name in _JAX_FIELDS}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_default_dir_follows_xdg_cache_home_then_home(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compilation_cache.default_dir() == (
      tmp_path / 'xdg' / 'ankle_jax' / 'jax_cache'
  )
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compilation_cache.default_dir() == (
      tmp_path / 'home' / '.cache' / 'ankle_jax' / 'jax_cache'
  )


def test_enable_sets_the_directory_and_thresholds(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  jax.config.update('jax_compilation_cache_dir', None)
  path = compilation_cache.enable(compilation_cache.CacheSettings())
  assert path == tmp_path / 'xdg' / 'ankle_jax' / 'jax_cache'
  assert path.is_dir()
  assert jax.config.jax_compilation_cache_dir == str(path)
  assert jax.config.jax_enable_compilation_cache
  assert (
      jax.config.jax_persistent_cache_min_compile_time_secs
      == compilation_cache.MIN_COMPILE_TIME_S
  )
  assert (
      jax.config.jax_compilation_cache_max_size
      == compilation_cache.MAX_CACHE_BYTES
  )
  chosen = tmp_path / 'chosen'
  assert (
      compilation_cache.enable(
          compilation_cache.CacheSettings(cache_dir=str(chosen))
      )
      == chosen
  )
  assert jax.config.jax_compilation_cache_dir == str(chosen)


def test_off_turns_jax_cache_off_and_a_bad_dir_only_warns(tmp_path):
  assert (
      compilation_cache.enable(compilation_cache.CacheSettings(enabled=False))
      is None
  )
  assert not jax.config.jax_enable_compilation_cache
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  settings = compilation_cache.CacheSettings(cache_dir=str(blocker / 'x'))
  assert compilation_cache.enable(settings) is None


def test_settings_come_from_the_run_config():
  config = default_config.get_config()
  assert compilation_cache.CacheSettings.from_config(config) == (
      compilation_cache.CacheSettings(enabled=True, cache_dir='')
  )
  config.compilation_cache = False
  config.compilation_cache_dir = '/tmp/x'
  assert compilation_cache.CacheSettings.from_config(config) == (
      compilation_cache.CacheSettings(enabled=False, cache_dir='/tmp/x')
  )
  assert isinstance(compilation_cache.default_dir(), pathlib.Path)
