"""Rules the test suite keeps about time (issue 14 item 5), read from the
sources of ``tests/`` (no imports, no collection, no JAX):

* no test reads the clock or sleeps (``time.time``, ``time.sleep``,
  ``perf_counter``, ``monotonic``, ``datetime.now``): a result never depends
  on how busy the machine is;
* no test signals a process it started (``send_signal``, ``os.kill``): an
  interrupt must not depend on the process still running after a delay (the
  binary interrupts itself after cell k through ``NDPSIM_INTERRUPT_AFTER_CELLS``);
* every ``timeout=`` is a hang guard: marked ``# hang guard`` on the call (or
  on the helper's ``def`` line that takes it) and, when written as a number,
  at least ``MIN_HANG_GUARD_S`` -- generous enough for a busy machine.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.smoke

TESTS = pathlib.Path(__file__).parent
MIN_HANG_GUARD_S = 300
CLOCK = {("time", "time"), ("time", "sleep"), ("time", "perf_counter"),
         ("time", "monotonic"), ("time", "time_ns"), ("time", "perf_counter_ns"),
         ("datetime", "now"), ("datetime", "utcnow")}
SIGNALS = {("os", "kill"), ("os", "killpg")}


def _sources():
  return sorted(p for p in TESTS.glob("*.py") if p.name != "__init__.py")


def _dotted(node) -> tuple[str, str] | None:
  """('time', 'sleep') for ``time.sleep`` (and ``datetime.datetime.now``)."""
  if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
    base = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
    return base, node.attr
  return None


def _enclosing_defs(tree) -> dict[int, int]:
  """Line -> line of the innermost ``def`` holding it."""
  out = {}
  for n in ast.walk(tree):
    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for line in range(n.lineno, (n.end_lineno or n.lineno) + 1):
        if line not in out or out[line] < n.lineno:
          out[line] = n.lineno
  return out


def test_no_test_reads_the_clock_sleeps_or_signals_a_process():
  bad = []
  for path in _sources():
    tree = ast.parse(path.read_text())
    for n in ast.walk(tree):
      if isinstance(n, ast.Call):
        name = _dotted(n.func)
        if name in CLOCK or name in SIGNALS:
          bad.append(f"{path.name}:{n.lineno} {'.'.join(name)}")
        elif isinstance(n.func, ast.Attribute) and n.func.attr == "send_signal":
          bad.append(f"{path.name}:{n.lineno} send_signal")
      elif isinstance(n, ast.ImportFrom) and n.module == "time":
        bad.append(f"{path.name}:{n.lineno} from time import ...")
  assert not bad, ("tests must not depend on wall time or on a process still running "
                   "(interrupt the binary with NDPSIM_INTERRUPT_AFTER_CELLS=k): "
                   + ", ".join(bad))


def test_every_timeout_is_a_generous_hang_guard():
  bad, seen = [], 0
  for path in _sources():
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    defs = _enclosing_defs(tree)
    for n in ast.walk(tree):
      if not isinstance(n, ast.Call):
        continue
      for kw in n.keywords:
        if kw.arg != "timeout":
          continue
        seen += 1
        span = lines[n.lineno - 1:(n.end_lineno or n.lineno)]
        helper = defs.get(n.lineno)
        marked = any("# hang guard" in ln for ln in span) or (
            isinstance(kw.value, ast.Name) and helper is not None
            and "# hang guard" in lines[helper - 1])
        if not marked:
          bad.append(f"{path.name}:{n.lineno} not marked '# hang guard'")
        if isinstance(kw.value, ast.Constant) and not (
            isinstance(kw.value.value, (int, float)) and kw.value.value >= MIN_HANG_GUARD_S):
          bad.append(f"{path.name}:{n.lineno} timeout={kw.value.value!r} "
                     f"(a hang guard is >= {MIN_HANG_GUARD_S} s)")
  assert seen, "no timeout= found: the scan is broken"
  assert not bad, ", ".join(bad)
