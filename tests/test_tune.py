"""The ``tuned`` policy (issue 6): knobs fitted with optax Adam on the relaxed
engine over training routing, evaluated in hard mode on held-out routing,
against the paper's heuristic and a brute-force grid over the same knobs."""
from __future__ import annotations

import numpy as np
import pytest

from ndpsim import policies, tune
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = [pytest.mark.policy, pytest.mark.gradient]

# The workload.  Since background copies never delay demand loads (issue 10),
# the hard engine's prefetch-budget optimum lies at the full budget or on a
# plateau reaching it, and the heuristic's knobs (1, 1, 1) are within ~0.1 %
# of the grid optimum, in every shipped preset checked (budget sweeps of all
# seven zoo models on the default system, four on the two other systems,
# link bandwidth down to 16 GB/s; grids of four).  So the tuner cannot
# beat the heuristic by a margin here; what it must show is that its gradient
# steps, from their default start (resident_fraction 0.5), reach the optimum
# wherever it lies.  GPT-OSS 20B's start is several % from it on the default
# system (OLMoE's is within 0.1 %, which would test nothing).
MODEL = "gpt-oss-20b"


@pytest.fixture(scope="module")
def fitted():
  system, model = U.load(), M.get_model(MODEL)
  train = U.routing(MODEL, num_seqs=2, prompt_len=128, output_len=16, seed=0)
  test = U.routing(MODEL, num_seqs=2, prompt_len=128, output_len=16, seed=1)
  fit = tune.fit(system, model, train)
  # The grid and the held-out scores run in chunks of the fit's own batch of
  # hard-scored candidates: one compiled hard program for the whole fixture
  # (a chunk of 64 would be a second compile of the same engine).
  chunk = len(fit.history["hard_points"])
  grid = tune.grid(system, model, train, chunk=chunk)
  # Held-out: the grid, the heuristic and the fit, padded to that chunk.
  held = tune.hard_many(system, model, test, np.concatenate(
      [grid.points, [[1.0, 1.0, 1.0], _knobs(fit.params)]]), chunk=chunk)
  return fit, grid, held


def _knobs(p):
  return [p.resident_fraction, p.gpu_bias, p.ndp_bias]


def _grid_at(grid, knobs):
  """Hard training latency of the grid point equal to ``knobs``."""
  hit = np.all(np.isclose(grid.points, np.asarray(knobs, np.float32)), axis=1)
  assert hit.sum() == 1, knobs
  return float(grid.e2e_s[hit][0])


def test_tuned_is_registered():
  assert "tuned" in policies.names()


def test_tuned_matches_grid_with_10x_fewer_evaluations(fitted):
  fit, grid, held = fitted
  assert fit.evaluations * 10 <= grid.evaluations, (fit.evaluations, grid.evaluations)
  grid_held, heur, tuned = held[:-2], held[-2], held[-1]
  # Held-out: within 1 % of the best grid point on the held-out sequences ...
  assert tuned <= grid_held.min() * 1.01, (tuned, grid_held.min(),
                                           grid.points[grid_held.argmin()])
  # ... and no slower than tp_lb_prefetch (its knobs are a candidate of the
  # fit, scored on the training sequences) beyond 0.1 %.
  assert tuned <= heur * (1 + 1e-3), (tuned, heur)


def test_gradient_steps_reach_the_grid_optimum(fitted):
  """The Adam iterates alone (hard-scored, without the heuristic's point)
  close most of the gap between their start and the grid optimum."""
  fit, grid, _ = fitted
  h = fit.history
  start = h["knobs"][0]
  assert start == pytest.approx([0.5, 1.0, 1.0])
  best = grid.train_e2e_s
  start_gap = _grid_at(grid, start) / best - 1
  assert start_gap > 0.02, start_gap  # the start is far from the optimum
  assert h["hard_points"][0] == pytest.approx([1.0, 1.0, 1.0])  # the reference
  iter_gap = min(h["hard_e2e_s"][1:]) / best - 1
  assert iter_gap <= min(0.15 * start_gap, 0.01), (iter_gap, start_gap)
  # The budget moved from the start toward the grid's best budget, at least
  # half way.
  moved, want = h["knobs"][-1][0] - start[0], grid.params.resident_fraction - start[0]
  assert moved * want > 0 and abs(moved) >= 0.5 * abs(want), (moved, want)


def test_fit_history_is_consistent(fitted):
  fit, _, _ = fitted
  h = fit.history
  assert len(h["knobs"]) == len(h["relaxed_e2e_s"]) == tune.TuneConfig().steps
  assert len(h["hard_points"]) == len(h["hard_e2e_s"])
  assert fit.train_e2e_s == pytest.approx(min(h["hard_e2e_s"]))
  assert _knobs(fit.params) == pytest.approx(h["hard_points"][int(np.argmin(h["hard_e2e_s"]))])
  assert fit.evaluations == len(h["knobs"]) + len(h["hard_e2e_s"])
  assert 0.0 < fit.params.resident_fraction <= 1.0
