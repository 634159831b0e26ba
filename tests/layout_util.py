"""The import graph of a package from its source text (``ast``), for
tests/test_layout.py and for a reader: ``python3 -m tests.layout_util`` prints
each ndpsim module's ndpsim imports and any cycle."""
from __future__ import annotations

import ast
import pathlib


def module_names(root: pathlib.Path, package: str = "ndpsim") -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py file under ``root`` (a package
  folder named ``package``); a package's ``__init__.py`` is the package."""
  out = {}
  for f in sorted(root.rglob("*.py")):
    parts = [package, *f.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = f
  return out


def imports_of(tree: ast.AST, module: str, known=None, is_package: bool = False) -> set[str]:
  """Modules that ``module``'s source imports, at any depth of the tree.

  ``from X import n`` counts as importing ``X.n`` when that is a module in
  ``known`` (else ``X``); relative imports are resolved against ``module``.
  Dynamic imports (``importlib``) are not statements and are not counted.
  """
  known = known or {}
  pkg = module if is_package else module.rpartition(".")[0]
  out: set[str] = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = pkg.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      for a in node.names:
        sub = f"{base}.{a.name}"
        out.add(sub if sub in known else base)
  return out


def import_graph(root: pathlib.Path, package: str = "ndpsim") -> dict[str, set[str]]:
  """Module -> the modules of the same package it imports."""
  mods = module_names(root, package)
  graph = {}
  for name, f in mods.items():
    deps = imports_of(ast.parse(f.read_text()), name, mods, f.name == "__init__.py")
    graph[name] = {d for d in deps if d in mods and d != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None if the graph is acyclic (DFS)."""
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done
  stack: list[str] = []

  def visit(n: str):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


if __name__ == "__main__":
  g = import_graph(pathlib.Path(__file__).resolve().parent.parent / "ndpsim")
  for mod in sorted(g):
    print(f"{mod}: {', '.join(sorted(g[mod])) or '-'}")
  c = find_cycle(g)
  print("cycle: " + " -> ".join(c) if c else "no cycles")
