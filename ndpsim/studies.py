"""The studies behind ``ndpsim-experiment``: configuration, cells, runs, summaries.

A study is a grid of *cells*; a cell is one simulated configuration
``(model, policy, num_ndp_units, prefetch_budget, routing)`` run over
``num_seqs`` sequences.  Studies (names for ``--studies``):

* ``headline`` -- every model x every policy at each headline NDP-unit count
  and the headline prefetch budget, routing ``config.routing``;
* ``ndp_units`` -- ``sweep_models`` x ``sweep_policies`` x ``sweep_ndp_units``;
* ``prefetch`` -- ``sweep_models`` x ``prefetch_policies`` x ``prefetch_budgets``
  at the first headline unit count: one compiled call per (model, policy),
  ``jax.vmap`` over the budgets (policy params are traced);
* ``routing`` -- the headline grid (first unit count) under each calibrated
  real-trace routing preset (:data:`REAL_TRACE_PRESETS`);
* ``sensitivity`` -- d(mean end-to-end latency) / d(log p) for every traced
  hardware parameter p (``jax.jvp``), see :mod:`ndpsim.sensitivity_study`.

``monde`` (the baseline every speedup is measured against) is simulated in
every (model, unit count, routing) a study touches, at the headline budget.

Routing: the evaluation set is ``routing.generate(PRNGKey(seed), spec,
preset)``; MoNDE's offline profile (its "dataset") is the per-(layer, expert)
activation count over every token of a separate profiling set,
``generate(fold_in(PRNGKey(seed), 1), spec, preset)``.  A trace file instead
gives its first half of sequences to the profile and the second to the
evaluation.

The ``tuned`` policy: per (model, NDP-unit count, routing) its knobs
(``resident_fraction``, ``gpu_bias``, ``ndp_bias``) are fitted with
:func:`ndpsim.tune.fit` on a training set that never overlaps the evaluation
set -- the first ``tune_num_seqs`` sequences of
``generate(fold_in(PRNGKey(seed), 2), spec, preset)`` (a trace file: of its
profile half) -- and the cell is then simulated at those knobs like any other
policy.  The fitted ``resident_fraction`` replaces the cell's budget (it is a
fraction of the same GPU expert budget); the heuristic's point (headline
budget, biases 1) is always among the candidates, so on the training set
``tuned`` is never slower than ``tp_lb_prefetch``.  Each fit is written to
``<out_dir>/tuned/<key>.json`` (reused by ``--resume``); results.json lists
them per model under ``tuned``.

Scale-out: sequences are sharded over every device (``jax.devices()``: all
local devices, or all hosts' after ``jax.distributed.initialize``) with a
``Mesh`` + ``NamedSharding`` on the sequence axis; the sequence count is
padded to a multiple of the device count with copies that are dropped from
the results, so the numbers do not depend on the device count.

Files: every finished cell is written atomically to
``<out_dir>/cells/<key>.json`` with a fingerprint of everything it depends
on; a resumed run reuses the cells whose fingerprint matches.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import re
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import ndpsim
from ndpsim import config, energy, engine, policies, resolved, results
from ndpsim import sensitivity as sensitivity_mod
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from ndpsim.workload import traces
from ndpsim.sharding import (SEQ_AXIS, device_mesh, shard_sequences,  # noqa: F401
                             simulate_sharded, to_host)
from ndpsim.study_io import (Cell, add_speedups, cell_path, check_finite, make_row,  # noqa: F401
                             select, speedup_summary, write_atomic)

from ndpsim.study_config import (BASELINE, DEFAULT_MODELS, DEFAULT_POLICIES,  # noqa: F401
                                 DEFAULT_SYSTEM, REAL_TRACE_PRESETS, STUDIES, TUNED,
                                 StudyConfig)


class Workload(NamedTuple):
  """Routing of one (model, routing source): evaluation ids, the offline
  profile counts of ``monde_resident`` and the profiling sequences that
  ``monde`` auto-tunes its alpha on (never evaluated)."""
  prefill_ids: np.ndarray  # [S, P, L, k]
  decode_ids: np.ndarray   # [S, T, L, k]
  profile_counts: np.ndarray  # [L, E]
  profile: Any = None  # R.Routing of the profiling sequences


@dataclasses.dataclass
class Resolved:
  """A validated study: specs, systems, routing sources and the cells."""
  config: StudyConfig
  models: dict[str, M.MoeModelSpec]
  systems: dict[int, system_mod.SystemPreset]
  routing_sources: dict[str, Any]  # preset name -> None, trace label -> path
  prompt_len: int
  output_len: int
  num_seqs: int
  cells: dict[str, list[Cell]]
  head_models: list[str] = dataclasses.field(default_factory=list)
  sweep_models: list[str] = dataclasses.field(default_factory=list)

  def all_cells(self) -> list[Cell]:
    seen: dict[Cell, None] = {}
    for cells in self.cells.values():
      for c in cells:
        seen.setdefault(c)
    return list(seen)


# ---------------------------------------------------------------------------
# Validation.

def _flag_error(flag: str, e: Exception) -> ConfigError:
  return ConfigError(f"--{flag}: {e}")


def _is_trace(name: str) -> bool:
  """A trace (file, per-layer folder or glob) rather than a routing preset."""
  return name not in R.PRESETS and traces.is_trace_path(name)


def routing_label(name: str) -> str:
  """Short name of a routing source: the preset, a file's or folder's name, or
  a glob's pattern (``Path('d/*.csv').name`` alone would be ``*.csv``)."""
  if not _is_trace(name):
    return name
  p = pathlib.Path(name)
  return str(p) if glob.has_magic(name) else p.name


def _load_trace(path: str, prompt_len, output_len, top_k=None, layout="sequences"):
  """One trace for ``--routing``: ``.npz``, or CSV(s) -- one file, a folder of
  per-layer files or a glob (``traces.load_csv``); dense-probability rows take
  the top ``top_k`` (the models' shared top-k, when known); ``layout``: the
  CSV layout (``--routing_layout``)."""
  try:
    if path.endswith(".npz"):
      if not os.path.isfile(path):
        raise ConfigError(f"trace file {path!r} does not exist; give an existing "
                          f".npz/.csv trace, a folder or glob of per-layer CSVs, or one "
                          f"of {list(R.PRESETS)}")
      return traces.load_npz(path)
    if prompt_len is None or output_len is None:
      raise ConfigError("a CSV trace needs --prompt_len and --output_len (tokens "
                        "per sequence = their sum)")
    return traces.load_csv(path, top_k=top_k, prompt_len=prompt_len,
                           tokens_per_sequence=prompt_len + output_len, layout=layout)
  except ConfigError as e:
    msg = str(e).replace("pass layout='decoder_batch'", "give --routing_layout=decoder_batch")
    raise _flag_error("routing", ConfigError(msg)) from None


def resolve(cfg: StudyConfig) -> Resolved:
  """Validates ``cfg`` before anything is compiled; one ConfigError per problem.
  Hardware values outside their plausible range are refused unless
  ``cfg.allow_implausible``."""
  with config.allowing_implausible(cfg.allow_implausible):
    return _resolve(cfg)


def _resolve(cfg: StudyConfig) -> Resolved:
  for s in cfg.studies:
    if s not in STUDIES:
      raise ConfigError(f"--studies: unknown study {s!r}; write a list of {list(STUDIES)}")
  if not cfg.studies:
    raise ConfigError(f"--studies: empty; write a list of {list(STUDIES)}")
  for flag, pols in (("policies", cfg.policies), ("sweep_policies", cfg.sweep_policies),
                     ("prefetch_policies", cfg.prefetch_policies)):
    for p in pols:
      try:
        policies.get(p)
      except ConfigError as e:
        raise _flag_error(flag, e) from None
  if TUNED in cfg.prefetch_policies and "prefetch" in cfg.studies:
    raise ConfigError(f"--prefetch_policies: {TUNED!r} fits its own budget; list it in "
                      "--policies or --sweep_policies, not in the budget sweep")
  if not cfg.policies:
    raise ConfigError(f"--policies: empty; write a list of {policies.names()}")
  for name, v in (("batch_size", cfg.batch_size), ("prompt_len", cfg.prompt_len),
                  ("output_len", cfg.output_len), ("num_seqs", cfg.num_seqs),
                  ("tune_num_seqs", cfg.tune_num_seqs)):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ConfigError(f"--{name}: {v!r} is not allowed; write an integer >= 1")
  for flag, vals in (("prefetch_budgets", cfg.prefetch_budgets),
                     ("headline_budget", (cfg.headline_budget,))):
    for b in vals:
      if not (isinstance(b, (int, float)) and 0.0 <= b <= 1.0):
        raise ConfigError(f"--{flag}: {b!r} is outside [0, 1]; write fractions of the "
                          "GPU memory left for experts, e.g. 0,0.25,0.5,1")
  if cfg.routing_layout not in traces.LAYOUTS:
    raise ConfigError(f"--routing_layout: {cfg.routing_layout!r} is not a layout; write "
                      f"one of {list(traces.LAYOUTS)}")
  if cfg.routing_layout != "sequences" and not (
      _is_trace(cfg.routing) and not cfg.routing.endswith(".npz")):
    raise ConfigError(f"--routing_layout: {cfg.routing_layout!r} applies to CSV traces "
                      f"but --routing is {cfg.routing!r}; drop --routing_layout or give a "
                      "CSV trace folder")
  if "prefetch" in cfg.studies and not cfg.prefetch_budgets:
    raise ConfigError("--prefetch_budgets: empty; write e.g. 0,0.25,0.5,1")
  dtype = cfg.dtype
  if dtype:
    try:
      dtype = M.canonical_dtype(dtype, "--dtype")
    except ConfigError as e:
      raise _flag_error("dtype", e) from None

  # Models.
  models: dict[str, M.MoeModelSpec] = {}
  names: dict[str, str] = {}
  for flag, lst in (("models", cfg.models), ("sweep_models", cfg.sweep_models)):
    for m in lst:
      try:
        spec = M.model_from_any(m)
      except ConfigError as e:
        raise _flag_error(flag, e) from None
      if dtype:
        spec = M.with_dtype(spec, dtype, dtype)
      models[spec.name] = spec
      names[m] = spec.name
  if not cfg.models:
    raise ConfigError(f"--models: empty; write a list of {sorted(M.MODELS)}")
  head_models = [names[m] for m in cfg.models]
  sweep_models = [names[m] for m in cfg.sweep_models] or head_models[:1]

  # Routing.
  sources: dict[str, Any] = {}
  P, T, S = cfg.prompt_len, cfg.output_len, cfg.num_seqs
  if _is_trace(cfg.routing):
    ks = {models[n].top_k for n in head_models + sweep_models}
    tr = _load_trace(cfg.routing, P, T, top_k=ks.pop() if len(ks) == 1 else None,
                     layout=cfg.routing_layout)
    tp, tt, ts = (tr.prefill_ids.shape[1], tr.decode_ids.shape[1],
                  tr.prefill_ids.shape[0])
    for flag, given, have in (("prompt_len", P, tp), ("output_len", T, tt)):
      if given is not None and given != have:
        raise ConfigError(f"--{flag}: {given} but the trace {cfg.routing!r} has {have}; "
                          f"drop --{flag} or write {have}")
    if ts < 2:
      raise ConfigError(f"--routing: trace {cfg.routing!r} has {ts} sequence(s); MoNDE's "
                        "profile needs a held-out half, give a trace of >= 2 sequences")
    avail = ts - ts // 2
    if S is not None and S > avail:
      raise ConfigError(f"--num_seqs: {S} but the trace holds {avail} evaluation "
                        f"sequences (its other {ts // 2} profile MoNDE); write <= {avail}")
    P, T, S = tp, tt, S or avail
    for name in dict.fromkeys(head_models + sweep_models):  # in flag order
      spec = models[name]
      traces.check_model_shape(tr, spec, f"--routing: trace {cfg.routing!r}")
    sources[routing_label(cfg.routing)] = cfg.routing
  elif cfg.routing in R.PRESETS:
    sources[cfg.routing] = None
  else:
    raise ConfigError(f"--routing: {cfg.routing!r} is neither a preset nor a trace "
                      f"(.npz/.csv file, folder or glob of per-layer CSVs); write one of "
                      f"{list(R.PRESETS)} or a trace path")
  P, T, S = P or 512, T or 512, S or 8
  if S % cfg.batch_size:
    raise ConfigError(f"--num_seqs: {S} is not a multiple of --batch_size "
                      f"{cfg.batch_size}; write a multiple of {cfg.batch_size}")
  if cfg.tune_num_seqs % cfg.batch_size:
    raise ConfigError(f"--tune_num_seqs: {cfg.tune_num_seqs} is not a multiple of "
                      f"--batch_size {cfg.batch_size}; write a multiple of "
                      f"{cfg.batch_size}")
  base_routing = routing_label(cfg.routing)
  if "routing" in cfg.studies:
    for p in REAL_TRACE_PRESETS:
      sources.setdefault(p, None)

  # Systems.
  try:
    over = config.parse_set_overrides(list(cfg.overrides))
  except ConfigError as e:
    raise _flag_error("set", e) from None
  if "num_ndp_units" in over.get("system", {}):
    # One way to set the unit count: --num_ndp_units (it names every cell's count).
    raise ConfigError(f"--set: system.num_ndp_units cannot be overridden; use "
                      f"--num_ndp_units={over['system']['num_ndp_units']} instead")
  units = sorted(set(cfg.num_ndp_units)
                 | (set(cfg.sweep_ndp_units) if "ndp_units" in cfg.studies else set()))
  if not cfg.num_ndp_units:
    raise ConfigError("--num_ndp_units: empty; write e.g. 4 or 2,4,6")
  systems = {}
  for n in units:
    flag = "num_ndp_units" if n in cfg.num_ndp_units else "sweep_ndp_units"
    try:
      systems[n] = system_mod.load_system(cfg.system, n, over)
    except ConfigError as e:
      raise _flag_error(_system_flag(cfg.system, n, over, flag), e) from None

  # Cells.
  hb = float(cfg.headline_budget)
  n0 = cfg.num_ndp_units[0]
  pols = list(dict.fromkeys((BASELINE,) + tuple(cfg.policies)))
  cells: dict[str, list[Cell]] = {}
  if "headline" in cfg.studies:
    cells["headline"] = [Cell(m, p, n, hb, base_routing) for m in head_models
                         for n in cfg.num_ndp_units for p in pols]
  if "ndp_units" in cfg.studies:
    sp = list(dict.fromkeys((BASELINE,) + tuple(cfg.sweep_policies)))
    cells["ndp_units"] = [Cell(m, p, n, hb, base_routing) for m in sweep_models
                          for n in cfg.sweep_ndp_units for p in sp]
  if "prefetch" in cfg.studies:
    cells["prefetch"] = [Cell(m, BASELINE, n0, hb, base_routing) for m in sweep_models]
    cells["prefetch"] += [Cell(m, p, n0, float(b), base_routing) for m in sweep_models
                          for p in cfg.prefetch_policies for b in cfg.prefetch_budgets]
  if "routing" in cfg.studies:
    cells["routing"] = [Cell(m, p, n0, hb, r) for r in REAL_TRACE_PRESETS
                        for m in head_models for p in pols]
  if "sensitivity" in cfg.studies:
    cells["sensitivity"] = []  # not cells: see sensitivity()

  # Every (model, units) pair must fit the platform.
  res = Resolved(cfg, models, systems, sources, P, T, S, cells, head_models, sweep_models)
  pairs = {(c.model, c.num_ndp_units) for c in res.all_cells()}
  if "sensitivity" in cfg.studies:
    pairs.add((sweep_models[0], n0))
  problems = [p for m, n in sorted(pairs) if (p := fit_problem(res, m, n))]
  if problems:  # every pair that does not fit, at once, each with its fix
    flag = "num_ndp_units" if all("NDP units (" in p for p in problems) else "models"
    raise ConfigError(f"--{flag}: platform {res.config.system!r} cannot run: "
                      + "; ".join(problems))
  return res


def _system_flag(name: str, n: int, over: dict, units_flag: str) -> str:
  """Which flag a failed system load is about: --system, the units or --set."""
  try:
    system_mod.load_system(name)
  except ConfigError:
    return "system"
  try:
    system_mod.load_system(name, n)
  except ConfigError:
    return units_flag
  return "set" if over else "system"


def fit_problem(res: Resolved, model: str, n: int) -> str | None:
  """Why ``model`` cannot run on ``n`` NDP units (the engine's own size and
  capacity checks, before any compile), with a fix that can be followed; None
  if it fits."""
  from ndpsim.hw import ndp as ndp_mod  # pylint: disable=import-outside-toplevel
  spec, sysp = res.models[model], res.systems[n]
  L, k, B = M.num_moe_layers(spec), spec.top_k, res.config.batch_size
  row = np.arange(k, dtype=np.int32)  # k distinct experts: a legal top-k row
  pre = np.broadcast_to(row, (B, res.prompt_len, L, k))
  dec = np.broadcast_to(row, (B, res.output_len, L, k))
  try:
    engine.validate(sysp.spec, sysp.params, spec, pre, dec, B)
  except ConfigError as e:
    msg = str(e).splitlines()[0]
    if "NDP units" not in msg:
      return f"{model!r} with {n} NDP units: {msg}"
    per_unit = ndp_mod.capacity_bytes(sysp.spec.ndp)
    need = -(-int(M.expert_bytes_total(spec)) // int(per_unit))
    src = ("--num_ndp_units" if n in res.config.num_ndp_units else "--sweep_ndp_units")
    fix = f"write {src} >= {need}"
    if need > sysp.spec.max_ndp_units:
      fix += (f" (the platform allows up to {sysp.spec.max_ndp_units}: raise it with "
              f"--set system.max_ndp_units={need}, or use NDP units with more capacity)")
    return (f"{model!r} at {n} NDP units ({src}) needs "
            f"{M.expert_bytes_total(spec) / 1e9:.1f} GB of experts but they hold "
            f"{n * per_unit / 1e9:.1f} GB; {fix}")
  return None


# ---------------------------------------------------------------------------
# Workloads and sharded simulation.

def _counts(ids_list, L: int, E: int) -> np.ndarray:
  out = np.zeros((L, E), np.float64)
  for ids in ids_list:
    a = np.asarray(ids).astype(np.int64)
    flat = (np.arange(L)[None, None, :, None] * E + a).reshape(-1)
    out += np.bincount(flat, minlength=L * E).reshape(L, E)
  return out.astype(np.float32)


def make_workload(res: Resolved, model: str, routing: str) -> Workload:
  """Evaluation routing and MoNDE's profile for one (model, routing source)."""
  spec = res.models[model]
  L, E, k = M.num_moe_layers(spec), spec.num_experts, spec.top_k
  src = res.routing_sources[routing]
  if src is not None:  # trace file: first half profiles, the rest evaluates
    tr = _load_trace(src, res.prompt_len, res.output_len, top_k=k,
                     layout=res.config.routing_layout)
    h = tr.prefill_ids.shape[0] // 2
    pre, dec = np.asarray(tr.prefill_ids), np.asarray(tr.decode_ids)
    prof = _counts([pre[:h], dec[:h]], L, E)
    return Workload(pre[h:h + res.num_seqs].astype(np.int32),
                    dec[h:h + res.num_seqs].astype(np.int32), prof,
                    R.Routing(pre[:h].astype(np.int32), None, dec[:h].astype(np.int32), None))
  rspec = R.RoutingSpec(num_seqs=res.num_seqs, prompt_len=res.prompt_len,
                        output_len=res.output_len, num_layers=L, num_experts=E, top_k=k)
  params = R.preset(routing, E, k)
  key = jax.random.PRNGKey(res.config.seed)
  ev = R.generate(key, rspec, params)
  pr = R.generate(jax.random.fold_in(key, 1), rspec, params)
  prof = _counts([pr.prefill_ids, pr.decode_ids], L, E)
  return Workload(np.asarray(ev.prefill_ids, np.int32), np.asarray(ev.decode_ids, np.int32),
                  prof, R.Routing(np.asarray(pr.prefill_ids, np.int32), None,
                                  np.asarray(pr.decode_ids, np.int32), None))


# Profiling batches of MoNDE's alpha auto-tuning ("a small set of past input
# batches", MoNDE §3.3).
MONDE_PROFILE_BATCHES = 2


def monde_alpha(res: Resolved, wl: Workload, model: str, n: int) -> dict[str, Any]:
  """MoNDE's auto-tuned alpha for one (model, routing, units) on the first
  :data:`MONDE_PROFILE_BATCHES` batches of the workload's profiling sequences
  (:func:`ndpsim.policies.monde.autotune_alpha`)."""
  from ndpsim.policies import monde  # pylint: disable=import-outside-toplevel
  B = res.config.batch_size
  m = min(MONDE_PROFILE_BATCHES * B, wl.profile.prefill_ids.shape[0] // B * B)
  if m < 1:
    raise ConfigError(f"--batch_size {B}: the profiling set has fewer sequences than one "
                      "batch; MoNDE's alpha auto-tuning needs one batch")
  prof = R.Routing(np.asarray(wl.profile.prefill_ids[:m]), None,
                   np.asarray(wl.profile.decode_ids[:m]), None)
  sysp = res.systems[n]
  out = monde.autotune_alpha((sysp.spec, sysp.params), res.models[model], prof,
                             batch_size=B)
  out["profile_num_seqs"] = int(m)
  return out


def make_training(res: Resolved, model: str, routing: str) -> R.Routing:
  """The ``tuned`` fit's training set for one (model, routing source): the first
  ``tune_num_seqs`` sequences of ``generate(fold_in(PRNGKey(seed), 2), ...)``
  (same shape as the evaluation set), or of a trace's profile half (rounded
  down to a multiple of the batch size)."""
  spec = res.models[model]
  L, E, k = M.num_moe_layers(spec), spec.num_experts, spec.top_k
  n, B = res.config.tune_num_seqs, res.config.batch_size
  src = res.routing_sources[routing]
  if src is not None:
    tr = _load_trace(src, res.prompt_len, res.output_len, top_k=k,
                     layout=res.config.routing_layout)
    h = tr.prefill_ids.shape[0] // 2
    n = min(n, h) // B * B
    if n < 1:
      raise ConfigError(f"--routing: trace {src!r} has {h} profile sequence(s), fewer "
                        f"than --batch_size {B}; the tuned fit needs one batch")
    return R.Routing(np.asarray(tr.prefill_ids[:n], np.int32), None,
                     np.asarray(tr.decode_ids[:n], np.int32), None)
  rspec = R.RoutingSpec(num_seqs=max(n, res.num_seqs), prompt_len=res.prompt_len,
                        output_len=res.output_len, num_layers=L, num_experts=E, top_k=k)
  tr = R.generate(jax.random.fold_in(jax.random.PRNGKey(res.config.seed), 2), rspec,
                  R.preset(routing, E, k))
  return R.Routing(np.asarray(tr.prefill_ids[:n], np.int32), None,
                   np.asarray(tr.decode_ids[:n], np.int32), None)


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
                     res.config.tune_num_seqs, float(res.config.headline_budget),
                     _tune_config_fields()], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tuned_fit(res: Resolved, model: str, routing: str, n: int, out_dir=None, *,
              resume: bool = False, write: bool = True) -> dict[str, Any]:
  """Fits the ``tuned`` knobs for (model, routing, n) on :func:`make_training`.

  Returns a JSON-ready dict: model, num_ndp_units, routing, knobs
  (resident_fraction, gpu_bias, ndp_bias), train_e2e_s (hard mean e2e on the
  training set at the knobs), heuristic_train_e2e_s (at the headline budget,
  biases 1), evaluations (relaxed forward+grad calls + hard points), the
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
  hb = float(res.config.headline_budget)
  f = tune.fit((sysp.spec, sysp.params), res.models[model], train,
               batch_size=res.config.batch_size, reference=(hb, 1.0, 1.0))
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


# ---------------------------------------------------------------------------
# Fingerprints and atomic cell files.

def fingerprint_fields(res: Resolved) -> dict[str, Any]:
  """The settings every cell depends on (compared by --resume)."""
  c = res.config
  return {"system": c.system, "set": list(c.overrides), "dtype": c.dtype,
          "prompt_len": res.prompt_len, "output_len": res.output_len,
          "batch_size": c.batch_size, "num_seqs": res.num_seqs, "seed": c.seed,
          "routing": c.routing, "ndpsim_version": ndpsim.__version__,
          # only when not the default, so that earlier runs' cells stay valid
          **({"routing_layout": c.routing_layout}
             if c.routing_layout != "sequences" else {})}


def cell_fingerprint(res: Resolved, cell: Cell) -> str:
  parts = [fingerprint_fields(res), repr(res.models[cell.model]),
           resolved.hardware_values(res.systems[cell.num_ndp_units]), list(cell)]
  sysp = res.systems[cell.num_ndp_units]
  if energy.has_figures(sysp):  # the rows' energy fields depend on these figures
    parts.append(repr(energy.for_system(sysp)))
  if cell.policy == TUNED:  # its knobs come from a fit
    parts.append(_tuned_fingerprint(res, cell.model, cell.routing, cell.num_ndp_units))
  user = policies.user_source_digest(cell.policy)
  if user:  # a user's policy file (--policy_module): its content
    parts.append(user)
  blob = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]






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

  Cells of one (model, routing, units, policy) share a compile: their budgets
  run in one vmapped call.  Each finished cell is written atomically as soon
  as its call returns; ``progress`` gets one dict per cell (and one with
  event "tuned" per ``tuned`` fit).  ``tuned_fits``: a dict the fits of the
  ``tuned`` cells are added to, keyed ``(model, routing, units)`` (a fit is
  made, or reused with ``resume``, even when its cells are already finished,
  so that results.json always lists the knobs).
  """
  tuned_fits = {} if tuned_fits is None else tuned_fits
  out_dir = pathlib.Path(out_dir)
  for p, what in ((out_dir, "--out_dir"), (out_dir / "cells", "its cells folder")):
    if p.exists() and not p.is_dir():
      raise ConfigError(f"--out_dir: {what} {str(p)!r} is a file, not a folder; move it "
                        "away or give another --out_dir")
  if resume:
    check_resume(out_dir, res)
  if write:
    write_atomic(out_dir / "run_settings.json",
                 json.dumps(fingerprint_fields(res), indent=1))
  cells = res.all_cells()
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
  total, done = len(cells), len(rows)
  skipped = done
  t_start = time.perf_counter()
  if progress:
    progress({"event": "start", "total": total, "skipped": done,
              "distrusted": [(cell_path(out_dir, c).name, why) for c, why in distrusted]})
  for c in cells:
    key = (c.model, c.routing, c.num_ndp_units)
    if c.policy == TUNED and key not in tuned_fits:
      t0 = time.perf_counter()
      tuned_fits[key] = tuned_fit(res, *key, out_dir, resume=resume, write=write)
      if progress:
        progress({"event": "tuned", "fit": tuned_fits[key],
                  "wall_s": time.perf_counter() - t0})
  workloads: dict[tuple[str, str], Workload] = {}
  for (model, routing, n, policy), group in todo.items():
    if (model, routing) not in workloads:
      workloads.clear()  # keep one model's routing in memory at a time
      workloads[(model, routing)] = make_workload(res, model, routing)
    t0 = time.perf_counter()
    budgets = [c.prefetch_budget for c in group]
    extra = None
    alpha = None
    if policy == BASELINE:  # MoNDE auto-tunes alpha on its profiling batches
      fit = monde_alpha(res, workloads[(model, routing)], model, n)
      alpha = {k: fit[k] for k in ("monde_alpha_prefill", "monde_alpha_decode",
                                   "hot_experts_prefill", "hot_experts_decode")}
      extra = {k: fit[k] for k in ("monde_alpha_prefill", "monde_alpha_decode")}
    if policy == TUNED:  # the fitted knobs replace the cell's budget
      extra = tuned_params(tuned_fits[(model, routing, n)])
      budgets = [extra.pop("resident_fraction")] * len(group)
    outs = simulate_sharded(res.systems[n], res.models[model], workloads[(model, routing)],
                            policy, budgets, res.config.batch_size, mesh, extra)
    wall = (time.perf_counter() - t0) / len(group)
    for c, r, b in zip(group, outs, budgets):
      row = make_row(c, r, wall)
      if alpha is not None:
        row.update(alpha)
      row.update(simulated_params(policy, b, extra, row))
      row.update(energy.row_fields(r, res.systems[n], res.models[model],
                                   prompt_len=res.prompt_len,
                                   batch_size=res.config.batch_size))
      check_finite(row)
      row[REQUESTS_KEY] = results.per_group(r)  # requests.csv; split off for results
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


def simulated_params(policy: str, budget: float, extra: dict | None,
                     row: dict) -> dict[str, float]:
  """The policy knobs a cell was simulated with, as ``param_<name>`` row
  fields: the budget actually used (``resident_fraction``: for ``tuned`` the
  fitted one, not the cell's headline budget), the extra knobs passed (the
  ``tuned`` biases) and the policy's own knobs; fields the row already has
  (monde's alphas) are not repeated."""
  out = {"param_resident_fraction": float(budget)}
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
REQUEST_CELL_KEYS = ("model", "policy", "num_ndp_units", "prefetch_budget", "routing")


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


def tuned_summary(tuned_fits: dict) -> dict[str, list[dict]]:
  """results.json's ``tuned``: per model, its fits (one per units x routing)."""
  out: dict[str, list[dict]] = {}
  for (model, _, _), fit in tuned_fits.items():
    out.setdefault(model, []).append(fit)
  return out


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
  the first headline count; budget: the headline budget.
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
  pp = policies.PolicyParams(resident_fraction=float(c.headline_budget))
  e2e, el = sensitivity_mod.elasticities(
      (sysp.spec, sysp.params), spec, routing, policy, pp, batch_size=B,
      profile_counts=jnp.asarray(wl.profile_counts), mode="forward", num_groups=G,
      check=False)
  return {"model": model, "policy": policy, "num_ndp_units": n,
          "prefetch_budget": float(c.headline_budget), "routing": routing_label(c.routing),
          "e2e_latency_s_mean": float(e2e),
          "elasticities": {k: d for k, (_, d) in el.items()},
          "values": {k: v for k, (v, _) in el.items()}}
