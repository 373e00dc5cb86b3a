"""The layout the code keeps (issue 11: a library beneath the commands).

Commands (launch.py, ankle_jax/evaluate.py, ankle_jax/predict.py,
ankle_jax/data/build.py) sit on top of the library; no library module imports
a command and no command imports another. Functions stay short, imports stay
at the top of a module (or say why not), and docstrings cite files that are in
the repository (docs/paper.md), not "SPEC".
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
import dataclasses
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / 'ankle_jax'
COMMANDS = (
    'launch',
    'ankle_jax.evaluate',
    'ankle_jax.predict',
    'ankle_jax.data.build',
)
MAX_FUNCTION_LINES = 100
SKIPPED_DIRS = {'.git', '.venv', '.ci-venv', '__pycache__', 'node_modules'}


@dataclasses.dataclass(frozen=True)
class Module:
  name: str  # Dotted, e.g. 'ankle_jax.data.build' ('launch' for launch.py).
  path: pathlib.Path
  tree: ast.Module
  lines: list[str]


def _module(path: pathlib.Path) -> Module:
  rel = path.relative_to(REPO_ROOT).with_suffix('')
  parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
  source = path.read_text()
  return Module('.'.join(parts), path, ast.parse(source), source.splitlines())


def _package_modules() -> list[Module]:
  return [_module(p) for p in sorted(PACKAGE.rglob('*.py'))]


def _all_modules() -> list[Module]:
  return [*_package_modules(), _module(REPO_ROOT / 'launch.py')]


def _imported(module: Module) -> set[str]:
  """The modules `module` imports (`from a import b` counts a and a.b)."""
  names = set()
  package = module.name if module.path.name == '__init__.py' else None
  base = package or module.name.rpartition('.')[0]
  for node in ast.walk(module.tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        parent = base.split('.')[: len(base.split('.')) - node.level + 1]
        source = '.'.join(parent + ([node.module] if node.module else []))
      else:
        source = node.module
      names.add(source)
      names.update(f'{source}.{alias.name}' for alias in node.names)
  return names


def _functions(module: Module) -> Iterator[ast.FunctionDef]:
  for node in ast.walk(module.tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def _where(module: Module, node: ast.AST) -> str:
  return f'{module.path.relative_to(REPO_ROOT)}:{node.lineno}'


def test_no_library_module_imports_a_command():
  offenders = [
      f'{m.name} imports {sorted(_imported(m) & set(COMMANDS))}'
      for m in _package_modules()
      if m.name not in COMMANDS and _imported(m) & set(COMMANDS)
  ]
  assert not offenders, offenders


def test_commands_import_only_downward():
  offenders = []
  for module in _all_modules():
    if module.name not in COMMANDS:
      continue
    forbidden = set(COMMANDS) - {module.name}
    if module.name in ('ankle_jax.evaluate', 'ankle_jax.predict'):
      forbidden.add('ankle_jax.train')  # Shared code lives in inference.py.
    if _imported(module) & forbidden:
      offenders.append(
          f'{module.name} imports {sorted(_imported(module) & forbidden)}'
      )
  assert not offenders, offenders


def test_functions_are_short():
  lengths = sorted(
      (
          (node.end_lineno - node.lineno + 1, f'{_where(m, node)} {node.name}')
          for m in _package_modules()
          for node in _functions(m)
      ),
      reverse=True,
  )
  offenders = [
      f'{where}: {n} lines' for n, where in lengths if n > MAX_FUNCTION_LINES
  ]
  assert not offenders, (
      f'functions in ankle_jax/ longer than {MAX_FUNCTION_LINES} lines '
      f'(longest first): {offenders}'
  )


def test_imports_inside_functions_say_why():
  offenders = []
  for module in _all_modules():
    for function in _functions(module):
      for node in ast.walk(function):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          line = module.lines[node.lineno - 1]
          if 'noqa: PLC0415' not in line:
            offenders.append(f'{_where(module, node)}: {line.strip()}')
  assert not offenders, (
      'imports inside functions without `# noqa: PLC0415` and a reason: '
      f'{offenders}'
  )


def _repository_text_files() -> Iterator[pathlib.Path]:
  for path in sorted(REPO_ROOT.rglob('*')):
    rel = path.relative_to(REPO_ROOT)
    if SKIPPED_DIRS & set(rel.parts) or not path.is_file():
      continue
    if path.suffix in ('.py', '.md', '.toml', '.cfg', '.txt') or (
        rel.parts[0] == '.ci'
    ):
      yield path


def test_no_citation_of_a_file_users_do_not_have():
  pattern = re.compile(r'\bSPEC\b')
  offenders = []
  for path in _repository_text_files():
    if path == pathlib.Path(__file__).resolve():
      continue
    for number, line in enumerate(path.read_text().splitlines(), start=1):
      if pattern.search(line):
        offenders.append(f'{path.relative_to(REPO_ROOT)}:{number}')
  assert (
      not offenders
  ), 'cite docs/paper.md (in the repository), not SPEC: ' + ', '.join(offenders)


def test_the_checks_see_the_code():
  """The helpers above find what they look for (so a pass means something)."""
  names = {m.name for m in _all_modules()}
  assert set(COMMANDS) <= names
  build = next(
      m for m in _package_modules() if m.name == 'ankle_jax.data.build'
  )
  assert 'ankle_jax.data.prepare' in _imported(build)
  assert any(True for m in _package_modules() for _ in _functions(m))


def test_no_pylint_comments():
  """The linter is ruff (pyproject.toml); pylint pragmas are leftovers."""
  offenders = [
      f'{m.path.relative_to(REPO_ROOT)}:{number}'
      for m in _all_modules()
      for number, line in enumerate(m.lines, start=1)
      if re.search(r'#\s*pylint:', line)
  ]
  assert not offenders, offenders
