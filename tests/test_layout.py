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
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / 'ankle_jax'
COMMANDS = (
    'launch',
    'ankle_jax.crossval',
    'ankle_jax.evaluate',
    'ankle_jax.predict',
    'ankle_jax.data.build',
)
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600
# evaluation/ is numpy/scipy only: it never imports these (nor, through another
# module, anything that does).
EVALUATION_FORBIDDEN = ('jax', 'flax', 'optax', 'orbax', 'matplotlib')
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


def _import_source(module: Module, node: ast.ImportFrom) -> str:
  """The absolute module name of `from <source> import ...`."""
  if not node.level:
    return node.module
  package = module.name if module.path.name == '__init__.py' else None
  base = package or module.name.rpartition('.')[0]
  parent = base.split('.')[: len(base.split('.')) - node.level + 1]
  return '.'.join(parent + ([node.module] if node.module else []))


def _imported(module: Module) -> set[str]:
  """The modules `module` imports (`from a import b` counts a and a.b)."""
  names = set()
  for node in ast.walk(module.tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      source = _import_source(module, node)
      names.add(source)
      names.update(f'{source}.{alias.name}' for alias in node.names)
  return names


def _module_edges(module: Module, names: set[str]) -> set[str]:
  """The project modules `module` imports, `TYPE_CHECKING` imports included.

  `from package import submodule` is an edge to the submodule alone (the
  package's `__init__` runs first, but that is Python's order, not a use).
  """
  edges = set()
  for node in ast.walk(module.tree):
    if isinstance(node, ast.Import):
      edges.update(a.name for a in node.names if a.name in names)
    elif isinstance(node, ast.ImportFrom):
      source = _import_source(module, node)
      for alias in node.names:
        if f'{source}.{alias.name}' in names:
          edges.add(f'{source}.{alias.name}')
        elif source in names:
          edges.add(source)
  edges.discard(module.name)
  return edges


def _import_graph() -> dict[str, set[str]]:
  modules = _all_modules()
  names = {m.name for m in modules}
  return {m.name: _module_edges(m, names) for m in modules}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` as a list of modules, or None."""
  state = {}  # name -> 'open' while on the stack, 'done' after.
  stack = []

  def visit(name):
    state[name] = 'open'
    stack.append(name)
    for child in sorted(graph.get(name, ())):
      if state.get(child) == 'open':
        return [*stack[stack.index(child) :], child]
      if child not in state and (cycle := visit(child)):
        return cycle
    stack.pop()
    state[name] = 'done'
    return None

  for name in sorted(graph):
    if name not in state and (cycle := visit(name)):
      return cycle
  return None


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


def test_no_import_cycles():
  """No cycle among the project's modules, `TYPE_CHECKING` imports included."""
  cycle = _find_cycle(_import_graph())
  assert cycle is None, ' -> '.join(cycle)


def test_the_cycle_check_finds_a_cycle():
  assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
      'a',
      'b',
      'c',
      'a',
  ]
  assert _find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def _evaluation_modules() -> list[Module]:
  return [
      m
      for m in _package_modules()
      if m.name == 'ankle_jax.evaluation'
      or m.name.startswith('ankle_jax.evaluation.')
  ]


def test_evaluation_imports_no_jax_matplotlib_or_inference():
  modules = _evaluation_modules()
  assert modules, 'ankle_jax/evaluation/ is missing'
  offenders = []
  for module in modules:
    for name in sorted(_imported(module)):
      top = name.split('.')[0]
      project_outside = name.startswith('ankle_jax.') and not (
          name == 'ankle_jax.evaluation'
          or name.startswith('ankle_jax.evaluation.')
      )
      if top in EVALUATION_FORBIDDEN or project_outside:
        offenders.append(f'{module.name} imports {name}')
  assert not offenders, offenders


def test_evaluation_loads_without_jax_or_matplotlib():
  """Importing every evaluation module loads neither jax nor matplotlib."""
  names = [m.name for m in _evaluation_modules()]
  script = (
      f'import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n'
      f'print(sorted(m for m in {EVALUATION_FORBIDDEN!r} if m in sys.modules))'
  )
  result = subprocess.run(
      [sys.executable, '-c', script],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      check=True,
  )
  assert result.stdout.strip() == '[]', result.stdout + result.stderr


def _defines_write(module: Module) -> bool:
  return any(
      isinstance(node, ast.FunctionDef) and node.name == 'write'
      for node in module.tree.body
  )


def test_reporting_writers_do_not_import_each_other():
  """A writer is a reporting/ module with a top-level `write` function; the
  other reporting/ modules (format, document, plots...) are shared by all."""
  writers = [
      m
      for m in _package_modules()
      if m.name.startswith('ankle_jax.reporting.') and _defines_write(m)
  ]
  assert len(writers) >= 5, [m.name for m in writers]
  writer_names = {m.name for m in writers}
  offenders = [
      f'{m.name} imports {sorted(_imported(m) & (writer_names - {m.name}))}'
      for m in writers
      if _imported(m) & (writer_names - {m.name})
  ]
  assert not offenders, offenders


def test_modules_are_short():
  offenders = [
      f'{m.path.relative_to(REPO_ROOT)}: {len(m.lines)} lines'
      for m in _all_modules()
      if len(m.lines) > MAX_MODULE_LINES
  ]
  assert (
      not offenders
  ), f'modules longer than {MAX_MODULE_LINES} lines: {offenders}'
