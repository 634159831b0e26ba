"""Smoke tier (issue 11 item 6): every shipped system preset (listed from
``hw_configs/systems/`` by ``config.available("system")``) x every registered
policy (``policies.names()``) runs on a tiny workload -- the 4-layer, 8-expert
model of ``tests/data/exp_tiny_model.json``, 2 sequences of 8 prompt + 2
output tokens -- and gives finite, positive latencies (time to first token,
every decode step, end to end), GPU memory within capacity
(``peak_gpu_bytes <= gpu_capacity_bytes``) and ``oracle`` at or below the
policy on every sequence.

What this adds to ``tests/test_properties.py``: that file runs real models
with resource sweeps, but in the default run only the core TP policies on
every system and ``oracle``/``monde`` on the first; here every policy meets
every system, at the smallest workload, so a preset or a policy that cannot
run at all is seen at once.

One compile per (system, policy): measured single-process on 2 shared CPU
cores, the whole matrix (36 compiles) took 6 min of CPU, the default slice
1 min 55 s.  The default run is that rotating slice
-- policy ``i`` on system ``i mod #systems``, so every policy and every
system run, plus ``oracle`` on every system for the bound (about 14
compiles); the other cells are marked ``slow`` (``-m smoke`` runs the whole matrix).
"""
from __future__ import annotations

import ast
import configparser
import functools
import pathlib

import numpy as np
import pytest

from ndpsim import config, engine, policies
from ndpsim.hw import system as system_mod
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

pytestmark = pytest.mark.smoke

TINY = pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json"
SYSTEMS = tuple(config.available("system"))
POLICIES = tuple(policies.names())
SEQS, PROMPT, OUTPUT = 2, 8, 2
EXACT = 1e-4  # oracle bound: holds by construction, up to float32 clocks

FULL = [(s, p) for s in SYSTEMS for p in POLICIES]
SLICE = [(SYSTEMS[i % len(SYSTEMS)], p) for i, p in enumerate(POLICIES)]
FAST = [c for c in FULL if c in SLICE]  # in matrix order
SLOW = [c for c in FULL if c not in SLICE]


@functools.lru_cache(maxsize=None)
def _workload():
  """The tiny model and NumPy routing (k distinct experts per token and
  layer, a fixed seed: no generator compile)."""
  model = model_io.model_from_any(TINY)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(11)
  ids = np.argsort(rng.random((SEQS, PROMPT + OUTPUT, L, E)), axis=-1)[..., :k]
  ids = ids.astype(np.int32)
  gates = np.full(ids.shape, 1.0 / k, np.float32)
  return model, R.Routing(prefill_ids=ids[:, :PROMPT], prefill_gates=gates[:, :PROMPT],
                          decode_ids=ids[:, PROMPT:], decode_gates=gates[:, PROMPT:])


@functools.lru_cache(maxsize=None)
def _run(sysname: str, policy: str):
  """(ttft [S], steps [S, T], e2e [S], peak GPU bytes [S], capacity [S]), float64."""
  model, r = _workload()
  s = system_mod.load_system(sysname)
  res = engine.simulate((s.spec, s.params), model, r, policy)
  out = (res.ttft_s, res.step_s, res.e2e_s, res.peak_gpu_bytes,
         np.broadcast_to(np.asarray(res.gpu_capacity_bytes), np.shape(res.e2e_s)))
  return tuple(np.asarray(a, np.float64) for a in out)


def _check(sysname: str, policy: str) -> None:
  label = f"{sysname} {policy}"
  ttft, steps, e2e, peak, cap = _run(sysname, policy)
  assert ttft.shape == (SEQS,) and steps.shape == (SEQS, OUTPUT), label
  for name, v in (("ttft_s", ttft), ("step_s", steps), ("e2e_s", e2e)):
    assert np.all(np.isfinite(v)) and np.all(v > 0), f"{label}: {name} = {v}"
  # Independent of how the engine adds them up: each completion is later
  # than the first token, and the last one is the end-to-end latency.
  assert np.all(e2e > ttft), label
  assert np.all(cap > 0) and np.all(peak > 0), f"{label}: peak {peak}, capacity {cap}"
  assert np.all(peak <= cap), f"{label}: peak GPU memory {peak / 1e9} GB > {cap / 1e9} GB"
  oracle_e2e = _run(sysname, "oracle")[2]
  assert np.all(oracle_e2e <= e2e * (1 + EXACT)), (
      f"{label}: oracle {oracle_e2e} s above the policy's {e2e} s")


@pytest.mark.parametrize("sysname,policy", FAST)
def test_system_x_policy_slice(sysname, policy):
  _check(sysname, policy)


@pytest.mark.slow
@pytest.mark.parametrize("sysname,policy", SLOW)
def test_system_x_policy_rest_of_matrix(sysname, policy):
  _check(sysname, policy)


def test_the_matrix_is_every_preset_and_every_policy():
  folder = config.config_root() / config.folder_of("system")
  assert SYSTEMS == tuple(sorted(p.stem for p in folder.glob("*.json")))
  assert set(POLICIES) >= {"oracle", "monde", "ndp_tp", "tp_lb"}
  assert sorted(FAST + SLOW) == sorted(FULL) and not set(FAST) & set(SLOW)
  assert {s for s, _ in FAST} == set(SYSTEMS) and {p for _, p in FAST} == set(POLICIES)


def _marks(node) -> set[str]:
  """Names X of ``pytest.mark.X`` in an expression (a decorator, a list)."""
  out = set()
  for n in ast.walk(node):
    if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
        and n.value.attr == "mark" and isinstance(n.value.value, ast.Name)
        and n.value.value.id == "pytest"):
      out.add(n.attr)
  return out


def test_every_test_is_in_a_tier(pytestconfig):
  """Every test function of ``tests/`` carries a tier marker (setup.cfg's
  ``markers``, ``slow`` aside), from its module's ``pytestmark`` or its own
  decorators, so ``pytest -m TIER`` misses none.  Read from the sources (no
  imports, no collection)."""
  cfg = configparser.ConfigParser()
  cfg.read(pytestconfig.rootpath / "setup.cfg")
  tiers = {line.split(":")[0].strip() for line in
           cfg["tool:pytest"]["markers"].strip().splitlines()} - {"slow"}
  assert {"analytic", "timing", "policy", "gradient", "golden", "reference", "smoke"} <= tiers
  missing = []
  for path in sorted(pathlib.Path(__file__).parent.glob("test_*.py")):
    tree = ast.parse(path.read_text())
    module = set()
    for n in tree.body:
      if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                           for t in n.targets):
        module |= _marks(n.value)
    funcs = [(n, set()) for n in tree.body if isinstance(n, ast.FunctionDef)]
    for c in (n for n in tree.body if isinstance(n, ast.ClassDef)):
      funcs += [(f, _marks(ast.Module(c.decorator_list, []))) for f in c.body
                if isinstance(f, ast.FunctionDef)]
    for f, cls in funcs:
      if not f.name.startswith("test"):
        continue
      own = set().union(*(_marks(d) for d in f.decorator_list))
      if not (module | cls | own) & tiers:
        missing.append(f"{path.name}::{f.name}")
  assert not missing, (f"tests without a tier marker ({', '.join(sorted(tiers))}; add "
                       "`pytestmark = pytest.mark.TIER` to the module or a decorator): "
                       + ", ".join(missing))
