"""Study configuration resolution: flags (a ``StudyConfig``) -> a validated
``Resolved`` study (models, systems, routing sources, cells), and the settings
every cell's fingerprint depends on.  Part of :mod:`ndpsim.studies`.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

import ndpsim
from ndpsim import config, engine, policies
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from ndpsim.workload import traces
from ndpsim.study_io import Cell
from ndpsim.study_config import (BASELINE, DEFAULT_NUM_SEQS, DEFAULT_OUTPUT_LEN,
                                 DEFAULT_PROMPT_LEN, REAL_TRACE_PRESETS, STUDIES, TUNED,
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
  dtype = _check_settings(cfg)
  models, head_models, sweep_models = _resolve_models(cfg, dtype)
  sources, (P, T, S) = _resolve_routing(cfg, models, head_models + sweep_models)
  systems = _resolve_systems(cfg)
  cells = _make_cells(cfg, head_models, sweep_models)
  res = Resolved(cfg, models, systems, sources, P, T, S, cells, head_models, sweep_models)
  _check_every_pair_fits(res)
  return res


def _check_settings(cfg: StudyConfig) -> str:
  """The checks of single settings (studies, policies, sizes, fractions, the
  CSV layout); returns the canonical ``--dtype`` ("" keeps each model's)."""
  for s in cfg.studies:
    if s not in STUDIES:
      raise ConfigError(f"--studies: unknown study {s!r}; write a list of {list(STUDIES)}")
  if not cfg.studies:
    raise ConfigError(f"--studies: empty; write a list of {list(STUDIES)}")
  _check_policies(cfg)
  for name, v in (("batch_size", cfg.batch_size), ("prompt_len", cfg.prompt_len),
                  ("output_len", cfg.output_len), ("num_seqs", cfg.num_seqs),
                  ("tune_num_seqs", cfg.tune_num_seqs)):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ConfigError(f"--{name}: {v!r} is not allowed; write an integer >= 1")
  for flag, vals in (("resident_fractions", cfg.resident_fractions),
                     ("resident_fraction", (cfg.resident_fraction,))):
    for b in vals:
      if not (isinstance(b, (int, float)) and 0.0 <= b <= 1.0):
        raise ConfigError(f"--{flag}: {b!r} is outside [0, 1]; write fractions of the "
                          "GPU memory left for experts, e.g. 0,0.25,0.5,1")
  if "prefetch" in cfg.studies and not cfg.resident_fractions:
    raise ConfigError("--resident_fractions: empty; write e.g. 0,0.25,0.5,1")
  if cfg.routing_layout not in traces.LAYOUTS:
    raise ConfigError(f"--routing_layout: {cfg.routing_layout!r} is not a layout; write "
                      f"one of {list(traces.LAYOUTS)}")
  if cfg.routing_layout != "sequences" and not (
      _is_trace(cfg.routing) and not cfg.routing.endswith(".npz")):
    raise ConfigError(f"--routing_layout: {cfg.routing_layout!r} applies to CSV traces "
                      f"but --routing is {cfg.routing!r}; drop --routing_layout or give a "
                      "CSV trace folder")
  try:
    return M.canonical_dtype(cfg.dtype, "--dtype") if cfg.dtype else ""
  except ConfigError as e:
    raise _flag_error("dtype", e) from None


def _check_policies(cfg: StudyConfig) -> None:
  for flag, pols in (("policies", cfg.policies), ("sweep_policies", cfg.sweep_policies),
                     ("prefetch_policies", cfg.prefetch_policies)):
    for p in pols:
      try:
        policies.get(p)
      except ConfigError as e:
        raise _flag_error(flag, e) from None
  if TUNED in cfg.prefetch_policies and "prefetch" in cfg.studies:
    raise ConfigError(f"--prefetch_policies: {TUNED!r} fits its own resident_fraction; "
                      "list it in --policies or --sweep_policies, not in the "
                      "--resident_fractions sweep")
  if not cfg.policies:
    raise ConfigError(f"--policies: empty; write a list of {policies.names()}")


def _resolve_models(cfg: StudyConfig, dtype: str):
  """(specs by name, headline model names, sweep model names)."""
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
  return models, head_models, [names[m] for m in cfg.sweep_models] or head_models[:1]


def _resolve_routing(cfg: StudyConfig, models: dict, used: list[str]):
  """(routing sources: label -> None for a preset or the trace path, (prompt
  tokens, output tokens, sequences per cell)); a trace must fit every model in
  ``used`` and the sizes given."""
  sources: dict[str, Any] = {}
  P, T, S = cfg.prompt_len, cfg.output_len, cfg.num_seqs
  if _is_trace(cfg.routing):
    P, T, S = _trace_sizes(cfg, models, used)
    sources[routing_label(cfg.routing)] = cfg.routing
  elif cfg.routing in R.PRESETS:
    sources[cfg.routing] = None
  else:
    raise ConfigError(f"--routing: {cfg.routing!r} is neither a preset nor a trace "
                      f"(.npz/.csv file, folder or glob of per-layer CSVs); write one of "
                      f"{list(R.PRESETS)} or a trace path")
  P, T, S = P or DEFAULT_PROMPT_LEN, T or DEFAULT_OUTPUT_LEN, S or DEFAULT_NUM_SEQS
  for flag, n in (("num_seqs", S), ("tune_num_seqs", cfg.tune_num_seqs)):
    if n % cfg.batch_size:
      raise ConfigError(f"--{flag}: {n} is not a multiple of --batch_size "
                        f"{cfg.batch_size}; write a multiple of {cfg.batch_size}")
  if "routing" in cfg.studies:
    for p in REAL_TRACE_PRESETS:
      sources.setdefault(p, None)
  return sources, (P, T, S)


def _trace_sizes(cfg: StudyConfig, models: dict, used: list[str]):
  """(prompt tokens, output tokens, evaluation sequences) of the ``--routing``
  trace, checked against the flags given and every model's shape."""
  P, T, S = cfg.prompt_len, cfg.output_len, cfg.num_seqs
  ks = {models[n].top_k for n in used}
  tr = _load_trace(cfg.routing, P, T, top_k=ks.pop() if len(ks) == 1 else None,
                   layout=cfg.routing_layout)
  tp, tt, ts = (tr.prefill_ids.shape[1], tr.decode_ids.shape[1], tr.prefill_ids.shape[0])
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
  for name in dict.fromkeys(used):  # in flag order
    traces.check_model_shape(tr, models[name], f"--routing: trace {cfg.routing!r}")
  return tp, tt, S or avail


def _resolve_systems(cfg: StudyConfig) -> dict[int, system_mod.SystemPreset]:
  """The platform at every NDP-unit count a study runs, ``--set`` applied."""
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
  return systems


def _make_cells(cfg: StudyConfig, head_models: list[str],
                sweep_models: list[str]) -> dict[str, list[Cell]]:
  """Every study's cells, in run order (see :mod:`ndpsim.studies`)."""
  rf = float(cfg.resident_fraction)
  n0 = cfg.num_ndp_units[0]
  base_routing = routing_label(cfg.routing)
  pols = list(dict.fromkeys((BASELINE,) + tuple(cfg.policies)))
  cells: dict[str, list[Cell]] = {}
  if "headline" in cfg.studies:
    cells["headline"] = [Cell(m, p, n, rf, base_routing) for m in head_models
                         for n in cfg.num_ndp_units for p in pols]
  if "ndp_units" in cfg.studies:
    sp = list(dict.fromkeys((BASELINE,) + tuple(cfg.sweep_policies)))
    cells["ndp_units"] = [Cell(m, p, n, rf, base_routing) for m in sweep_models
                          for n in cfg.sweep_ndp_units for p in sp]
  if "prefetch" in cfg.studies:
    cells["prefetch"] = [Cell(m, BASELINE, n0, rf, base_routing) for m in sweep_models]
    cells["prefetch"] += [Cell(m, p, n0, float(b), base_routing) for m in sweep_models
                          for p in cfg.prefetch_policies for b in cfg.resident_fractions]
  if "routing" in cfg.studies:
    cells["routing"] = [Cell(m, p, n0, rf, r) for r in REAL_TRACE_PRESETS
                        for m in head_models for p in pols]
  if "sensitivity" in cfg.studies:
    cells["sensitivity"] = []  # not cells: see sensitivity()
  return cells


def _check_every_pair_fits(res: Resolved) -> None:
  """Every (model, units) pair must fit the platform; one ConfigError listing
  every pair that does not, each with its fix."""
  pairs = {(c.model, c.num_ndp_units) for c in res.all_cells()}
  if "sensitivity" in res.config.studies:
    pairs.add((res.sweep_models[0], res.config.num_ndp_units[0]))
  problems = [p for m, n in sorted(pairs) if (p := fit_problem(res, m, n))]
  if problems:
    flag = "num_ndp_units" if all("NDP units (" in p for p in problems) else "models"
    raise ConfigError(f"--{flag}: platform {res.config.system!r} cannot run: "
                      + "; ".join(problems))


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


