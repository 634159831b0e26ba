"""The ``tuned`` policy's fits within a study: one per (model, routing, NDP
units), cached under ``<out_dir>/tuned/`` with a fingerprint, and their
summary for results.json.  Part of :mod:`ndpsim.studies`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import time
from typing import Any

from ndpsim.study_io import write_atomic
from ndpsim.study_resolve import Resolved, fingerprint_fields
from ndpsim.study_workloads import make_training


def _tune_config_fields() -> dict[str, Any]:
  from ndpsim import tune  # pylint: disable=import-outside-toplevel
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(tune.TuneConfig()).items()}


def tuned_fit_path(out_dir, model: str, routing: str, n: int) -> pathlib.Path:
  name = re.sub(r"[^A-Za-z0-9_.=-]", "_", f"{model}__n{n}__{routing}")
  return pathlib.Path(out_dir) / "tuned" / (name + ".json")


def _tuned_fingerprint(res: Resolved, model: str, routing: str, n: int) -> str:
  blob = json.dumps([fingerprint_fields(res), repr(res.models[model]),
                     repr(res.systems[n].params), model, routing, n,
                     res.config.tune_num_seqs, float(res.config.resident_fraction),
                     _tune_config_fields()], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tuned_fit(res: Resolved, model: str, routing: str, n: int, out_dir=None, *,
              resume: bool = False, write: bool = True) -> dict[str, Any]:
  """Fits the ``tuned`` knobs for (model, routing, n) on :func:`make_training`.

  Returns a JSON-ready dict: model, num_ndp_units, routing, knobs
  (resident_fraction, gpu_bias, ndp_bias), train_e2e_s (hard mean e2e on the
  training set at the knobs), heuristic_train_e2e_s (at the headline
  resident_fraction, biases 1), evaluations (relaxed forward+grad calls + hard points), the
  training set's description and wall_s.  With ``resume`` a matching file in
  ``<out_dir>/tuned/`` is reused; with ``write`` the fit is written there.
  """
  from ndpsim import tune  # pylint: disable=import-outside-toplevel
  fp = _tuned_fingerprint(res, model, routing, n)
  path = tuned_fit_path(out_dir, model, routing, n) if out_dir is not None else None
  if resume and path is not None:
    try:
      obj = json.loads(path.read_text())
      if obj.get("fingerprint") == fp:
        return obj["fit"]
    except (OSError, json.JSONDecodeError, KeyError):
      pass
  t0 = time.perf_counter()
  train = make_training(res, model, routing)
  sysp = res.systems[n]
  rf = float(res.config.resident_fraction)
  f = tune.fit((sysp.spec, sysp.params), res.models[model], train,
               batch_size=res.config.batch_size, reference=(rf, 1.0, 1.0))
  p = f.params
  seed = res.config.seed
  src = ("trace profile half" if res.routing_sources[routing] is not None
         else f"fold_in(PRNGKey({seed}), 2)")
  out = {"model": model, "num_ndp_units": n, "routing": routing,
         "knobs": {"resident_fraction": float(p.resident_fraction),
                   "gpu_bias": float(p.gpu_bias), "ndp_bias": float(p.ndp_bias)},
         "train_e2e_s": f.train_e2e_s,
         "heuristic_train_e2e_s": float(f.history["hard_e2e_s"][0]),
         "evaluations": int(f.evaluations),
         "training": {"routing": src, "num_seqs": int(train.prefill_ids.shape[0])},
         "tune_config": _tune_config_fields(),
         "wall_s": time.perf_counter() - t0}
  if write and path is not None:
    write_atomic(path, json.dumps({"fingerprint": fp, "fit": out}, indent=1))
  return out


def tuned_params(fit: dict[str, Any]) -> dict[str, float]:
  """The PolicyParams fields of a :func:`tuned_fit` result."""
  return dict(fit["knobs"])



def tuned_summary(tuned_fits: dict) -> dict[str, list[dict]]:
  """results.json's ``tuned``: per model, its fits (one per units x routing)."""
  out: dict[str, list[dict]] = {}
  for (model, _, _), fit in tuned_fits.items():
    out.setdefault(model, []).append(fit)
  return out


