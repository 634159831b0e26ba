"""Checks that ``engine.simulate``'s ``record`` option (timeline export,
``ndpsim/trace.py``) leaves the default program unchanged: the engine as of a
git revision before the option and today's engine with ``record=False`` lower
to the same StableHLO text, policy by policy (tiny model, 2 sequences).

    python benchmarks/record_off_program.py --rev=9fee77d tp_lb_prefetch monde ...

Prints one line per policy (``same`` or ``DIFFERENT`` with the first lines
that differ); exits 1 if any differs.  Only ``ndpsim/engine.py`` is taken from
the revision; every other module is today's, so the comparison isolates it.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ndpsim import engine, policies
from ndpsim.hw import system as system_mod
from ndpsim.workload import model_io
from ndpsim.workload import models as M

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "exp_tiny_model.json"


def _engine_at(rev: str):
  src = subprocess.run(["git", "show", f"{rev}:ndpsim/engine.py"], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / "engine_at_rev.py"
  path.write_text(src)
  spec = importlib.util.spec_from_file_location("engine_at_rev", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["engine_at_rev"] = mod
  spec.loader.exec_module(mod)
  return mod


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rev", default="9fee77d", help="a revision before the record option")
  ap.add_argument("policies", nargs="*", default=["tp_lb_prefetch", "monde", "gpu_offload",
                                                  "ndp_ep"])
  a = ap.parse_args()
  old = _engine_at(a.rev)
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=4)
  model = model_io.model_from_any(TINY)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  ids = np.argsort(np.random.default_rng(0).random((2, 12, L, E)), -1)[..., :k]
  ids = jnp.asarray(ids.astype(np.int32))
  bad = 0
  for name in a.policies:
    args = (s.spec, s.params, model, policies.get(name), policies.PolicyParams(),
            ids[:, :8], ids[:, 8:], None, 1)
    before = jax.jit(old.simulate_core, static_argnames=old.STATIC_ARGNAMES).lower(
        *args).as_text().replace("engine_at_rev", "engine")
    now = jax.jit(engine.simulate_core, static_argnames=engine.STATIC_ARGNAMES).lower(
        *args).as_text()
    if before == now:
      print(f"{name}: same ({len(now)} characters of StableHLO)")
      continue
    bad += 1
    diff = difflib.unified_diff(before.splitlines(), now.splitlines(), lineterm="", n=0)
    print(f"{name}: DIFFERENT\n" + "\n".join(list(diff)[:20]))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
