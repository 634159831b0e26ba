"""Engine golden file (issue 11 item 6): every registered policy's
per-sequence time to first token, end-to-end latency, GPU hits and demand
bytes to the GPU on one fixed small workload equal
``tests/data/golden_engine.json`` (relative 1e-6).

Workload: OLMoE-1B-7B on the default system (``paper_rtx5080_ndp_dimm``, 4
NDP units, ``tests/engine_util.load``), 2 sequences of 16 prompt + 8 output
tokens routed in NumPy with a fixed seed (Zipf-skewed popularity with prompt
locality, as ``tests/test_properties.py``), so the numbers depend on the
engine and the policies only, not on the routing generator.  The shapes are
those of ``tests/test_engine.py`` and ``tests/test_reference.py``, so in one
process the three files share the engine's compiles.

A change of any of these numbers must be made on purpose: regenerate with
``NDPSIM_REGEN_GOLDEN=1 python3 -m pytest tests/test_engine_golden.py`` (a
new policy is added the same way) and say why in the commit.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib

import numpy as np
import pytest

from ndpsim import engine, policies
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = [pytest.mark.golden, pytest.mark.policy]

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden_engine.json"
RTOL = 1e-6
MODEL = "olmoe-1b-7b"
SEQS, PROMPT, OUTPUT = 2, 16, 8
FIELDS = ("ttft_s", "e2e_s", "gpu_hits", "bytes_to_gpu")
POLICIES = tuple(policies.names())
SYSTEM, UNITS = "paper_rtx5080_ndp_dimm", 4  # tests/engine_util.load's defaults
WORKLOAD = (f"{MODEL} on {SYSTEM} with {UNITS} NDP units, "
            f"{SEQS} sequences of {PROMPT} prompt + {OUTPUT} output tokens, NumPy routing "
            "(tests/test_engine_golden.py:_routing, seed 0)")


@functools.lru_cache(maxsize=None)
def _routing():
  return U.numpy_routing(MODEL, SEQS, PROMPT, OUTPUT, seed=0)


def _numbers(policy: str) -> dict:
  res = engine.simulate(U.load(SYSTEM, UNITS), M.get_model(MODEL), _routing(), policy)
  return {f: [float(x) for x in np.asarray(getattr(res, f), np.float64)] for f in FIELDS}


def _read() -> dict:
  return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_matches_golden(policy):
  got = _numbers(policy)
  if os.environ.get("NDPSIM_REGEN_GOLDEN") == "1":
    # Other processes (pytest -n) may write too: merge with what is there now.
    doc = _read()
    doc["_workload"] = WORKLOAD
    doc.setdefault("policies", {})[policy] = got
    doc["policies"] = dict(sorted(doc["policies"].items()))
    GOLDEN.write_text(json.dumps(doc, indent=1) + "\n")
    return
  doc = _read()
  assert doc.get("_workload") == WORKLOAD, (
      f"{GOLDEN.name} is for {doc.get('_workload')!r}, this test runs {WORKLOAD!r}: "
      "regenerate with NDPSIM_REGEN_GOLDEN=1")
  want = doc["policies"].get(policy)
  assert want is not None, f"{policy}: no golden numbers; run with NDPSIM_REGEN_GOLDEN=1"
  bad = [f"{f}: {got[f]} vs golden {want[f]}" for f in FIELDS
         if not np.allclose(got[f], want[f], rtol=RTOL, atol=0.0)]
  assert not bad, (f"{policy} on {WORKLOAD}: " + "; ".join(bad) +
                   " (if the change is intended, regenerate with NDPSIM_REGEN_GOLDEN=1 "
                   "and say why in the commit)")


def test_golden_file_covers_every_registered_policy():
  assert sorted(_read().get("policies", {})) == sorted(POLICIES), (
      "a policy was added or removed: regenerate with NDPSIM_REGEN_GOLDEN=1")
