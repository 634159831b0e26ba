"""The ``tuned`` policy (issue 6): knobs fitted with optax Adam on the relaxed
engine over training routing, evaluated in hard mode on held-out routing,
against the paper's heuristic and a brute-force grid over the same knobs."""
from __future__ import annotations

import numpy as np
import pytest

from ndpsim import policies, tune
from ndpsim.workload import models as M
from tests import engine_util as U

MODEL = "olmoe-1b-7b"


@pytest.fixture(scope="module")
def fitted():
  system, model = U.load(), M.get_model(MODEL)
  train = U.routing(MODEL, num_seqs=2, prompt_len=128, output_len=16, seed=0)
  test = U.routing(MODEL, num_seqs=2, prompt_len=128, output_len=16, seed=1)
  fit = tune.fit(system, model, train)
  grid = tune.grid(system, model, train)
  return system, model, test, fit, grid


def _knobs(p):
  return [p.resident_fraction, p.gpu_bias, p.ndp_bias]


def test_tuned_is_registered():
  assert "tuned" in policies.names()


@pytest.mark.xfail(reason="the OLMoE prefetch-budget optimum was interior only while a background copy in flight delayed demand loads; with pre-emptive demand loads (issue 10) it moved to the full budget: the tuner test needs a workload with an interior optimum", strict=False)
def test_tuned_beats_heuristic_and_matches_grid_with_10x_fewer_evaluations(fitted):
  system, model, test, fit, grid = fitted
  assert fit.evaluations * 10 <= grid.evaluations, (fit.evaluations, grid.evaluations)
  heur, tuned = tune.hard_batch(system, model, test, [[1.0, 1.0, 1.0], _knobs(fit.params)])
  # Held-out: at least as fast as tp_lb_prefetch (OLMoE: strictly faster, the
  # budget optimum is interior) ...
  assert tuned < heur * (1 - 1e-3), (tuned, heur)
  # ... and within 1 % of the best grid point on the held-out sequences.
  held = tune.hard_many(system, model, test, grid.points)
  assert tuned <= held.min() * 1.01, (tuned, held.min(), grid.points[held.argmin()])


@pytest.mark.xfail(reason="the OLMoE prefetch-budget optimum was interior only while a background copy in flight delayed demand loads; with pre-emptive demand loads (issue 10) it moved to the full budget: the tuner test needs a workload with an interior optimum", strict=False)
def test_fit_history_is_consistent(fitted):
  _, _, _, fit, _ = fitted
  h = fit.history
  assert len(h["knobs"]) == len(h["relaxed_e2e_s"]) == tune.TuneConfig().steps
  assert fit.train_e2e_s == pytest.approx(min(h["hard_e2e_s"]))
  assert fit.evaluations == len(h["knobs"]) + len(h["hard_e2e_s"])
  assert 0.0 < fit.params.resident_fraction < 1.0
  # The knobs moved from the start: the gradient is informative.
  assert h["knobs"][-1][0] < 0.45
