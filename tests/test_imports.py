"""The package's modules import each other without a cycle (every import statement, also inside functions)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "idinvert_jax"


def _modules() -> dict[str, Path]:
  modules = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _imports(name: str, path: Path, known: dict) -> set[str]:
  """Package modules that `name` imports; `from a import b` counts as a.b when that is a module, else a."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name in known)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
      for alias in node.names:
        target = f"{base}.{alias.name}"
        found.add(target if target in known else base)
  return (found & set(known)) - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished.

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  known = _modules()
  graph = {name: _imports(name, path, known) for name, path in known.items()}
  assert sum(map(len, graph.values())) > 50  # The walk found the package's imports.
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
