"""Running a study's cells: fingerprints and atomic cell files (``--resume``),
the runner (one compile per model x routing x units x policy, resident
fractions vmapped), result rows and requests, the resolved configuration for
results.json, and the sensitivity study.  Part of :mod:`ndpsim.studies`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

import ndpsim
from ndpsim import energy, engine, policies, resolved, results
from ndpsim import sensitivity as sensitivity_mod
from ndpsim.base import ConfigError
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from ndpsim.sharding import device_mesh, shard_sequences, simulate_sharded
from ndpsim.study_io import (Cell, add_speedups, cell_path, check_finite, make_row,
                             write_atomic)
from ndpsim.study_config import BASELINE, TUNED
from ndpsim.study_resolve import Resolved, Workload, fingerprint_fields, routing_label
from ndpsim.study_workloads import make_workload, monde_alpha
from ndpsim.study_tuned import _tuned_fingerprint, tuned_fit, tuned_params


# ---------------------------------------------------------------------------
# Fingerprints and atomic cell files.

def cell_fingerprint(res: Resolved, cell: Cell) -> str:
  """20 hex digits of :func:`fingerprint_parts`."""
  blob = json.dumps(fingerprint_parts(res, cell), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def fingerprint_parts(res: Resolved, cell: Cell) -> list:
  """Everything a cell's row depends on: the run's settings (``--set`` under
  "set"), the model, the hardware values, the cell's fields by name (so that a
  row written under another field name is never reused), the energy figures,
  a ``tuned`` fit's fingerprint and a user policy file's digest."""
  parts = [fingerprint_fields(res), repr(res.models[cell.model]),
           resolved.hardware_values(res.systems[cell.num_ndp_units]), cell._asdict()]
  sysp = res.systems[cell.num_ndp_units]
  if energy.has_figures(sysp):  # the rows' energy fields depend on these figures
    parts.append(repr(energy.for_system(sysp)))
  if cell.policy == TUNED:  # its knobs come from a fit
    parts.append(_tuned_fingerprint(res, cell.model, cell.routing, cell.num_ndp_units))
  user = policies.user_source_digest(cell.policy)
  if user:  # a user's policy file (--policy_module): its content
    parts.append(user)
  return parts


def row_digest(row: dict) -> str:
  """sha256 of a row's canonical JSON (sorted keys): stored beside the row in
  its cell file so that an edited number is detected on ``--resume``."""
  blob = json.dumps(row, sort_keys=True, default=str, allow_nan=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def read_cell(out_dir, res: Resolved, cell: Cell) -> tuple[dict | None, str | None]:
  """(row, None) for a finished cell whose file reads, whose fingerprint
  (settings, model, hardware, cell) matches and whose row matches its digest;
  else (None, why) -- why is None when there is simply no file."""
  p = cell_path(out_dir, cell)
  if not p.exists():
    return None, None
  try:
    obj = json.loads(p.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f"unreadable ({type(e).__name__})"
  if not isinstance(obj, dict) or not isinstance(obj.get("row"), dict):
    return None, "not a cell file (no row object)"
  if obj.get("fingerprint") != cell_fingerprint(res, cell):
    return None, "computed under other settings"
  if obj.get("row_digest") != row_digest(obj["row"]):
    return None, "row does not match its digest (edited or damaged)"
  if not isinstance(obj["row"].get(REQUESTS_KEY), dict):
    return None, "no per-sequence values (written by an earlier ndpsim)"
  return obj["row"], None


def load_cell(out_dir, res: Resolved, cell: Cell) -> dict | None:
  """A finished cell's row if it can be trusted (:func:`read_cell`), else None."""
  return read_cell(out_dir, res, cell)[0]


def check_resume(out_dir, res: Resolved) -> None:
  """--resume over a run with other settings is an error naming the setting.

  An unreadable ``run_settings.json`` is not: every cell carries the
  fingerprint of its settings, so mismatched cells are recomputed anyway."""
  p = pathlib.Path(out_dir) / "run_settings.json"
  if not p.is_file():
    return
  try:
    old = json.loads(p.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return
  if not isinstance(old, dict):
    return
  new = json.loads(json.dumps(fingerprint_fields(res)))
  for k, v in new.items():
    if old.get(k) != v:
      raise ConfigError(f"--resume: {out_dir} holds a run with {k}={old.get(k)!r} but this "
                        f"run has {k}={v!r}; use the same --{k} or a new --out_dir")


# ---------------------------------------------------------------------------
# Running.

Progress = Callable[[dict[str, Any]], None]


def run_cells(res: Resolved, out_dir, *, resume: bool = False,
              progress: Progress | None = None, mesh: Mesh | None = None,
              write: bool = True, tuned_fits: dict | None = None) -> list[dict]:
  """Simulates every cell not finished yet; returns all rows (with speedups).

  Cells of one (model, routing, units, policy) share a compile: their
  resident fractions run in one vmapped call.  Each finished cell is written
  atomically as soon as its call returns; ``progress`` gets one dict per cell
  (and one with event "tuned" per ``tuned`` fit).  ``tuned_fits``: a dict the
  fits of the ``tuned`` cells are added to, keyed ``(model, routing, units)``
  (a fit is made, or reused with ``resume``, even when its cells are already
  finished, so that results.json always lists the knobs).
  """
  tuned_fits = {} if tuned_fits is None else tuned_fits
  out_dir = pathlib.Path(out_dir)
  _prepare_out_dir(res, out_dir, resume, write)
  cells = res.all_cells()
  rows, todo, distrusted = _plan(res, out_dir, cells, resume)
  total, done = len(cells), len(rows)
  skipped = done
  t_start = time.perf_counter()
  if progress:
    progress({"event": "start", "total": total, "skipped": done,
              "distrusted": [(cell_path(out_dir, c).name, why) for c, why in distrusted]})
  _fit_tuned(res, cells, out_dir, tuned_fits, resume=resume, write=write, progress=progress)
  workloads: dict[tuple[str, str], Workload] = {}
  for key, group in todo.items():
    model, routing = key[:2]
    if (model, routing) not in workloads:
      workloads.clear()  # keep one model's routing in memory at a time
      workloads[(model, routing)] = make_workload(res, model, routing)
    for c, row in _run_group(res, key, group, workloads[(model, routing)], tuned_fits, mesh):
      rows[c] = row
      if write:
        write_atomic(cell_path(out_dir, c), json.dumps(
            {"fingerprint": cell_fingerprint(res, c), "row_digest": row_digest(row),
             "row": row}, indent=1))
      done += 1
      if progress:
        progress({"event": "cell", "cell": c, "row": row, "done": done, "total": total,
                  "skipped": skipped, "elapsed_s": time.perf_counter() - t_start})
  return add_speedups([rows[c] for c in cells])


def _prepare_out_dir(res: Resolved, out_dir: pathlib.Path, resume: bool,
                     write: bool) -> None:
  """``out_dir`` and its cells folder are folders; ``--resume`` matches the
  earlier run's settings; ``run_settings.json`` is written."""
  for p, what in ((out_dir, "--out_dir"), (out_dir / "cells", "its cells folder")):
    if p.exists() and not p.is_dir():
      raise ConfigError(f"--out_dir: {what} {str(p)!r} is a file, not a folder; move it "
                        "away or give another --out_dir")
  if resume:
    check_resume(out_dir, res)
  if write:
    write_atomic(out_dir / "run_settings.json",
                 json.dumps(fingerprint_fields(res), indent=1))


def _plan(res: Resolved, out_dir: pathlib.Path, cells: list[Cell], resume: bool):
  """(rows of the finished cells, the cells to run grouped by (model, routing,
  units, policy), the cell files not trusted with why)."""
  rows: dict[Cell, dict] = {}
  todo: dict[tuple, list[Cell]] = {}
  distrusted: list[tuple[Cell, str]] = []
  for c in cells:
    row, why = read_cell(out_dir, res, c) if resume else (None, None)
    if row is not None:
      rows[c] = row
    else:
      if why is not None and why != "computed under other settings":
        distrusted.append((c, why))
      todo.setdefault((c.model, c.routing, c.num_ndp_units, c.policy), []).append(c)
  return rows, todo, distrusted


def _fit_tuned(res: Resolved, cells: list[Cell], out_dir: pathlib.Path, tuned_fits: dict,
               *, resume: bool, write: bool, progress: Progress | None) -> None:
  """Adds the fit of every ``tuned`` cell's (model, routing, units) to
  ``tuned_fits`` (made, or read back with ``resume``)."""
  for c in cells:
    key = (c.model, c.routing, c.num_ndp_units)
    if c.policy == TUNED and key not in tuned_fits:
      t0 = time.perf_counter()
      tuned_fits[key] = tuned_fit(res, *key, out_dir, resume=resume, write=write)
      if progress:
        progress({"event": "tuned", "fit": tuned_fits[key],
                  "wall_s": time.perf_counter() - t0})


def _run_group(res: Resolved, key: tuple, group: list[Cell], wl: Workload,
               tuned_fits: dict, mesh: Mesh | None) -> list[tuple[Cell, dict]]:
  """Simulates the cells of one (model, routing, units, policy) in one call,
  their resident fractions vmapped; returns (cell, row) pairs.  A ``tuned``
  row reports the fitted resident_fraction it was simulated at."""
  model, routing, n, policy = key
  t0 = time.perf_counter()
  fractions = [c.resident_fraction for c in group]
  extra = alpha = None
  if policy == BASELINE:  # MoNDE auto-tunes alpha on its profiling batches
    fit = monde_alpha(res, wl, model, n)
    alpha = {k: fit[k] for k in ("monde_alpha_prefill", "monde_alpha_decode",
                                 "hot_experts_prefill", "hot_experts_decode")}
    extra = {k: fit[k] for k in ("monde_alpha_prefill", "monde_alpha_decode")}
  if policy == TUNED:  # the fitted knobs replace the cell's resident_fraction
    extra = tuned_params(tuned_fits[(model, routing, n)])
    fractions = [extra.pop("resident_fraction")] * len(group)
  outs = simulate_sharded(res.systems[n], res.models[model], wl, policy, fractions,
                          res.config.batch_size, mesh, extra)
  wall = (time.perf_counter() - t0) / len(group)
  out = []
  for c, r, rf in zip(group, outs, fractions):
    row = make_row(c._replace(resident_fraction=float(rf)), r, wall)
    row.update(alpha or {})
    row.update(simulated_params(policy, extra, row))
    row.update(energy.row_fields(r, res.systems[n], res.models[model],
                                 prompt_len=res.prompt_len,
                                 batch_size=res.config.batch_size))
    check_finite(row)
    row[REQUESTS_KEY] = results.per_group(r)  # requests.csv; split off for results
    out.append((c, row))
  return out


def simulated_params(policy: str, extra: dict | None, row: dict) -> dict[str, float]:
  """The policy knobs a cell was simulated with besides its resident_fraction
  (a row field of its own; for ``tuned`` the fitted value), as ``param_<name>``
  row fields: the extra knobs passed (the ``tuned`` biases) and the policy's
  own knobs; fields the row already has (monde's alphas) are not repeated."""
  out = {}
  for k, v in (extra or {}).items():
    if k not in row:
      out[f"param_{k}"] = float(v)
  own = policies.get(policy).default_params
  if own is not None:
    out.update({f"param_{k}": v for k, v in resolved.flatten(own).items()})
  return out


# The per-sequence-group values a cell's row carries (in its cell file, so that
# --resume keeps them); split off before results.json / results.csv.
REQUESTS_KEY = "per_sequence_group"
REQUEST_CELL_KEYS = ("model", "policy", "num_ndp_units", "resident_fraction", "routing")


def split_requests(rows: list[dict], batch_size: int) -> tuple[list[dict], list[dict]]:
  """(rows without their per-sequence values, the request rows of requests.csv).

  One request row per (cell, sequence group), cells in row order, groups in
  order: the cell's keys, ``sequence_group``, ``sequences`` (the evaluation
  sequences it holds: ``"3"`` at batch 1, ``"4-7"`` at batch 4) and
  :data:`ndpsim.results.REQUEST_FIELDS` (latencies every request of the group
  sees, s; the group's bytes and decode hits/misses).  A row without the
  values (none computed) adds no request rows.
  """
  out_rows, req = [], []
  for r in rows:
    per = r.get(REQUESTS_KEY)
    out_rows.append({k: v for k, v in r.items() if k != REQUESTS_KEY})
    if not isinstance(per, dict):
      continue
    n = len(per[results.REQUEST_FIELDS[0]])
    for g in range(n):
      lo, hi = g * batch_size, (g + 1) * batch_size - 1
      req.append({**{k: r[k] for k in REQUEST_CELL_KEYS}, "sequence_group": g,
                  "sequences": str(lo) if lo == hi else f"{lo}-{hi}",
                  **{f: per[f][g] for f in results.REQUEST_FIELDS}})
  return out_rows, req


def _energy_values(system) -> dict[str, Any]:
  """{part: {preset, fields: {name: {value, provenance, source}}}}: the energy
  figures behind the rows' energy fields (:mod:`ndpsim.energy`)."""
  return {part: {"preset": d["preset"],
                 "fields": {k: {"value": v, "provenance": pv, "source": src}
                            for k, (v, pv, src) in d["fields"].items()}}
          for part, d in energy.describe_presets(system).items()}


def resolved_config(res: Resolved) -> dict[str, Any]:
  """The fully resolved configuration for results.json."""
  c = res.config
  models = {}
  for name, spec in res.models.items():
    models[name] = {"source": M.MODEL_SOURCES.get(name, "file"),
                    "num_moe_layers": M.num_moe_layers(spec),
                    "num_experts": spec.num_experts, "top_k": spec.top_k,
                    "expert_dtype": spec.expert_dtype,
                    "expert_bytes_total": M.expert_bytes_total(spec),
                    "non_expert_bytes": M.non_expert_bytes(spec),
                    "spec": dataclasses.asdict(spec)}
  routing = {}
  for name, src in res.routing_sources.items():
    if src is None:
      routing[name] = {"kind": "preset", "params": {
          k: float(v) for k, v in dataclasses.asdict(R.preset(name, 2, 1)).items()}}
    else:
      routing[name] = {"kind": "trace", "path": str(src), "layout": c.routing_layout}
  systems = {str(n): {"name": s.name, **s.info, "values": resolved.hardware_values(s),
                      **({"energy": _energy_values(s)} if energy.has_figures(s) else {})}
             for n, s in res.systems.items()}
  return {
      "ndpsim_version": ndpsim.__version__, "jax_version": jax.__version__,
      "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
      "flags": {**dataclasses.asdict(c), "prompt_len": res.prompt_len,
                "output_len": res.output_len, "num_seqs": res.num_seqs},
      "seeds": {"evaluation": f"PRNGKey({c.seed})",
                "monde_profile": f"fold_in(PRNGKey({c.seed}), 1)",
                "tuned_training": f"fold_in(PRNGKey({c.seed}), 2)"},
      "systems": systems, "models": models, "routing": routing,
      "studies": {k: [list(x) for x in v] for k, v in res.cells.items()},
  }


# ---------------------------------------------------------------------------
# Sensitivity.

def sensitivity(res: Resolved, model: str | None = None, policy: str | None = None,
                mesh: Mesh | None = None) -> dict[str, Any]:
  """d(mean end-to-end latency) / d(log p) for every traced hardware param p.

  :func:`ndpsim.sensitivity.elasticities` in forward mode (``jax.jacfwd``
  over one log-scale factor per leaf of ``SystemParams``): memory stays that
  of one simulation, the work grows with the number of leaves.  Model: the
  first sweep model; policy:
  ``tp_lb_prefetch`` if listed, else the first non-baseline policy; units:
  the first headline count; resident_fraction: the headline's.
  """
  c = res.config
  model = model or res.sweep_models[0]
  if policy is None:
    cands = [p for p in c.policies if p != BASELINE]
    policy = "tp_lb_prefetch" if "tp_lb_prefetch" in cands else (cands or [BASELINE])[0]
  n = c.num_ndp_units[0]
  sysp, spec = res.systems[n], res.models[model]
  wl = make_workload(res, model, routing_label(c.routing))
  mesh = mesh or device_mesh()
  B = c.batch_size
  engine.validate(sysp.spec, sysp.params, spec, wl.prefill_ids, wl.decode_ids, B)
  routing = R.Routing(shard_sequences(wl.prefill_ids, mesh, B), None,
                      shard_sequences(wl.decode_ids, mesh, B), None)
  G = wl.prefill_ids.shape[0] // B
  pp = policies.PolicyParams(resident_fraction=float(c.resident_fraction))
  e2e, el = sensitivity_mod.elasticities(
      (sysp.spec, sysp.params), spec, routing, policy, pp, batch_size=B,
      profile_counts=jnp.asarray(wl.profile_counts), mode="forward", num_groups=G,
      check=False)
  return {"model": model, "policy": policy, "num_ndp_units": n,
          "resident_fraction": float(c.resident_fraction), "routing": routing_label(c.routing),
          "e2e_latency_s_mean": float(e2e),
          "elasticities": {k: d for k, (_, d) in el.items()},
          "values": {k: v for k, (v, _) in el.items()}}
