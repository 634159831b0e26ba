"""Regenerates the small routing trace in tests/data (small_trace.npz, .csv).

A stand-in for the routing generator: per sequence a Dirichlet popularity
over E experts per layer, Gumbel-top-k selection (k distinct experts per
token), gate weights = softmax of the selected logits.  Written through
ndpsim's own ``traces.save_npz`` / ``traces.save_csv``.

Run from the repository root:  python tests/data/make_small_trace.py
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from ndpsim.workload import traces  # pylint: disable=wrong-import-position

SEQUENCES, PROMPT, DECODE, LAYERS, EXPERTS, TOP_K = 2, 6, 5, 3, 8, 2
SEED = 20260101


def make(rng: np.random.Generator):
  """ids, gates [S, P + T, L, k], ordered by decreasing gate."""
  pop = rng.dirichlet(np.full(EXPERTS, 2.0), size=(SEQUENCES, 1, LAYERS))
  logits = np.log(pop) + rng.gumbel(size=(SEQUENCES, PROMPT + DECODE, LAYERS, EXPERTS))
  ids = np.argsort(-logits, axis=-1)[..., :TOP_K]
  sel = np.take_along_axis(logits, ids, -1)
  gates = np.exp(sel - sel.max(-1, keepdims=True))
  gates /= gates.sum(-1, keepdims=True)
  return ids.astype(np.int32), gates.astype(np.float32)


def main() -> None:
  ids, gates = make(np.random.default_rng(SEED))
  r = traces.make_routing(ids[:, :PROMPT], gates[:, :PROMPT],
                          ids[:, PROMPT:], gates[:, PROMPT:])
  here = pathlib.Path(__file__).resolve().parent
  meta = {"num_experts": EXPERTS, "layer_ids": list(range(1, LAYERS + 1)),
          "source": "tests/data/make_small_trace.py", "seed": SEED}
  traces.save_npz(here / "small_trace.npz", r, meta)
  traces.save_csv(here / "small_trace.csv", r, num_experts=EXPERTS)


if __name__ == "__main__":
  main()
