"""Timeline export: one sequence's simulated timeline as a Chrome trace.

:func:`timeline` runs the engine with ``record=True`` on one sequence group
and turns its per-layer records into the Chrome Trace Event Format (JSON),
which https://ui.perfetto.dev and ``chrome://tracing`` open; :func:`write`
saves it.  ``python -m ndpsim.experiment ... --trace_out=FILE`` writes the
trace of one cell of a study (:func:`for_study`).

Tracks (``pid`` / ``tid``, named by ``ph: "M"`` metadata events):

* GPU (pid 1): ``compute`` -- per layer ``attention+router``, ``shared
  experts``, one slice per routed expert computed on the GPU (residents first,
  then each fetched expert after its load: category ``expert_gpu``, args
  ``resident``/``fetched``) and ``reduction`` of the NDP partial sums; per
  step ``dense layers + LM head`` (category ``overhead``: the leading dense
  layers and the LM head, which the engine charges at the start of each step
  and does not count in ``SimResult.gpu_busy_s``); ``layers`` -- one span per
  MoE layer from its start to its end; ``steps`` -- the prefill and each
  decode step.
* NDP units (pid 2): one track per unit, the expert work the unit does in the
  layer (category ``expert_ndp``), from the end of the activation broadcast:
  under expert parallelism one slice per expert (the engine models each
  unit's total per layer; its experts are drawn one after another in the
  layer's issue order), under tensor parallelism one slice per layer (every
  unit runs a 1/N slice of every NDP expert; args list the experts and their
  times).
* Link (pid 3): ``to GPU`` -- demand loads (category ``demand_load``, one per
  expert, in issue order; named ``(kept)`` when the expert stays resident
  afterwards and ``(kept: prefetch)`` when the policy counts that as a
  prefetch, as ``tp_lb_prefetch`` does with the prefill's budget experts),
  background loads in idle link time (category ``prefetch``: prefetch and
  adaptive swaps, with the expert equivalents moved) and the partial-sum
  return (``return``); ``to NDP`` -- the activation broadcast
  (``broadcast``).

Times: ``ts`` and ``dur`` in microseconds from the start of the sequence;
every ``dur`` is the engine's own duration, so busy-time sums over a track
equal ``SimResult``'s (``gpu_busy_s``: the GPU compute track without
``overhead``; ``link_to_gpu_busy_s``: demand loads + return).  The engine's
clock is float32: a slice whose start rounds to just before the previous
slice's end on the same track is moved to that end (at most a few float32
ulps of the clock; the largest move is ``otherData.max_start_shift_us``), so
slices on a track never overlap.  Slices of zero duration are left out.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from ndpsim import costs, engine, policies
from ndpsim.base import ConfigError
from ndpsim.policies import base as pb
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

GPU_PID, NDP_PID, LINK_PID = 1, 2, 3
GPU_COMPUTE, GPU_LAYERS, GPU_STEPS = 1, 2, 3
LINK_TO_GPU, LINK_TO_NDP = 1, 2
US = 1e6  # microseconds per second


def timeline(system, model, routing, policy, policy_params=None, *, seq: int = 0,
             batch_size: int = 1, profile_counts=None, label: str = "") -> dict:
  """Chrome trace (a JSON-ready dict) of sequence ``seq``'s timeline.

  Args:
    system, model, routing, policy, policy_params, batch_size, profile_counts:
      as :func:`ndpsim.engine.simulate` (routing [S, ...] over all sequences).
    seq: the sequence; its group of ``batch_size`` sequences (``seq //
      batch_size``) is simulated alone -- policies do not depend on the
      sequences beside it (``ndpsim.policy_checks``), so its numbers are those
      of a run over every sequence.
    label: free text for the trace's ``otherData.label``.
  Returns:
    ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``;
    ``otherData`` holds the group's ``SimResult`` scalars (seconds, bytes).
  """
  pol = policies.get(policy) if isinstance(policy, str) else policy
  if pol.layer_bound is not None:
    raise ConfigError(f"trace: policy {pol.name!r} is a lower bound without a timeline "
                      "(its layer ends come from Policy.layer_bound, not from lanes); "
                      "trace another policy")
  pre, dec = np.asarray(routing.prefill_ids), np.asarray(routing.decode_ids)
  g = _sequence_group(pre.shape[0], seq, batch_size)
  rows = slice(g * batch_size, (g + 1) * batch_size)
  one = R.Routing(pre[rows], None, dec[rows], None)
  res, rec = engine.simulate(system, model, one, pol, policy_params, batch_size=batch_size,
                             profile_counts=profile_counts, record=True)
  res1 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64)[0], res)
  rec1 = jax.tree_util.tree_map(lambda x: _f64(np.asarray(x)[0]), rec)
  ss, sp = system[0], system[1]
  info = dict(
      expert_bytes=float(M.expert_bytes(model)),
      fetch_s=float(costs.fetch_s(ss, sp, model, pol.ndp_mode)),
      act_bytes=float(model.hidden_size * M.dtype_bytes(model.activation_dtype)),
      tokens={"prefill": pre.shape[1] * batch_size, "decode": batch_size},
      prompt_len=pre.shape[1], tp=pol.ndp_mode == "tp", units=ss.num_ndp_units)
  tracks = _Tracks()
  _prefill_events(tracks, rec1["prefill"], float(res1.ttft_s), info)
  dec_rec = rec1["decode"]
  for t in range(dec.shape[1]):
    _decode_step_events(tracks, jax.tree_util.tree_map(lambda x, t=t: x[t], dec_rec),
                        t, float(res1.step_s[t]), info)
  events = _metadata(ss.num_ndp_units) + tracks.events()
  other = dict(label=label, model=model.name, policy=pol.name, seq=int(seq),
               sequence_group=int(g), batch_size=batch_size, ndp_mode=pol.ndp_mode,
               num_ndp_units=ss.num_ndp_units, prompt_len=int(pre.shape[1]),
               output_len=int(dec.shape[1]), max_start_shift_us=tracks.max_shift_us,
               result=_result_scalars(res1), time_unit="ts and dur in microseconds")
  return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def _sequence_group(num_seqs: int, seq, batch_size) -> int:
  """The index of ``seq``'s group of ``batch_size`` sequences among
  ``num_seqs``; ConfigError naming the argument if either is out of range."""
  if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq < num_seqs:
    raise ConfigError(f"trace: seq is {seq!r}; write a sequence index in [0, {num_seqs})")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ConfigError(f"trace: batch_size is {batch_size!r}; write a positive integer")
  g = seq // batch_size
  if (g + 1) * batch_size > num_seqs:
    raise ConfigError(f"trace: sequence {seq} is in group {g} of batch_size {batch_size}, "
                      f"but routing has {num_seqs} sequences; give num_seqs a multiple of "
                      f"{batch_size}")
  return g


def _result_scalars(res1) -> dict:
  """One group's ``SimResult`` as JSON numbers (seconds, bytes; per-unit busy
  times as a list)."""
  scalars = {f: float(np.asarray(getattr(res1, f))) for f in (
      "ttft_s", "e2e_s", "tpot_s", "gpu_busy_s", "link_to_gpu_busy_s",
      "link_to_ndp_busy_s", "bytes_to_gpu", "bytes_to_ndp", "prefetched_bytes")}
  scalars["ndp_unit_busy_s"] = [float(x) for x in np.asarray(res1.ndp_unit_busy_s)]
  return scalars


def write(path, trace: dict) -> pathlib.Path:
  """Writes ``trace`` (from :func:`timeline`) as compact JSON; returns the path."""
  p = _check_path(path)
  try:
    p.write_text(json.dumps(trace, separators=(",", ":"), allow_nan=False))
  except OSError as e:
    raise ConfigError(f"trace: cannot write {str(p)!r} ({e.strerror or e}); give a file "
                      "in a folder you can write to") from None
  return p


def _check_path(path) -> pathlib.Path:
  p = pathlib.Path(path)
  if p.is_dir():
    raise ConfigError(f"trace: {str(p)!r} is a folder; give a file name, e.g. "
                      f"{str(p / 'trace.json')!r}")
  if not p.parent.is_dir():
    raise ConfigError(f"trace: folder {str(p.parent)!r} of {str(p)!r} does not exist; "
                      "create it or give a file in an existing folder")
  return p


# ---------------------------------------------------------------------------
# Events.

class _Tracks:
  """Complete ("X") events per track, in insertion (time) order; a start
  that rounds to before the previous slice's end is moved to it."""

  def __init__(self):
    self._by_track: dict[tuple[int, int], list[dict]] = {}
    self._end: dict[tuple[int, int], float] = {}
    self.max_shift_us = 0.0

  def add(self, pid: int, tid: int, name: str, cat: str, start_s, dur_s, **args):
    dur = float(dur_s) * US
    if not dur > 0.0:
      return
    ts = float(start_s) * US
    key = (pid, tid)
    prev = self._end.get(key, -np.inf)
    if ts < prev:
      self.max_shift_us = max(self.max_shift_us, prev - ts)
      ts = prev
    self._end[key] = ts + dur
    self._by_track.setdefault(key, []).append(
        {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": dur, "pid": pid,
         "tid": tid, "args": {k: _jsonable(v) for k, v in args.items()}})

  def events(self) -> list[dict]:
    return [e for key in sorted(self._by_track) for e in self._by_track[key]]


def _f64(a: np.ndarray) -> np.ndarray:
  """Float arrays in float64 (sums and differences of the engine's float32
  values are then exact to float64 rounding); ints and bools unchanged."""
  return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


def _jsonable(v):
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    return float(v)
  if isinstance(v, (np.bool_,)):
    return bool(v)
  return v


def _metadata(num_units: int) -> list[dict]:
  def meta(name, pid, tid, value, key="name"):
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {key: value}}

  out = [meta("process_name", GPU_PID, 0, "GPU"), meta("process_sort_index", GPU_PID, 0,
                                                        0, "sort_index"),
         meta("process_name", NDP_PID, 0, "NDP units"),
         meta("process_sort_index", NDP_PID, 0, 1, "sort_index"),
         meta("process_name", LINK_PID, 0, "Link"),
         meta("process_sort_index", LINK_PID, 0, 2, "sort_index")]
  for tid, name in ((GPU_COMPUTE, "compute"), (GPU_LAYERS, "layers"), (GPU_STEPS, "steps")):
    out += [meta("thread_name", GPU_PID, tid, name),
            meta("thread_sort_index", GPU_PID, tid, tid, "sort_index")]
  for u in range(num_units):
    out += [meta("thread_name", NDP_PID, u + 1, f"NDP unit {u}"),
            meta("thread_sort_index", NDP_PID, u + 1, u, "sort_index")]
  for tid, name in ((LINK_TO_GPU, "to GPU"), (LINK_TO_NDP, "to NDP")):
    out += [meta("thread_name", LINK_PID, tid, name),
            meta("thread_sort_index", LINK_PID, tid, tid, "sort_index")]
  return out


def _prefill_events(tr: _Tracks, rec: dict, ttft_s: float, info: dict) -> None:
  first = float(rec["t0"][0])
  tr.add(GPU_PID, GPU_STEPS, "prefill", "step", 0.0, ttft_s, phase="prefill",
         tokens=info["tokens"]["prefill"])
  tr.add(GPU_PID, GPU_COMPUTE, "dense layers + LM head", "overhead", 0.0, first,
         phase="prefill")
  for layer in range(rec["t0"].shape[0]):
    _layer_events(tr, {k: v[layer] for k, v in rec.items()}, layer, "prefill", None, info)


def _decode_step_events(tr: _Tracks, rec: dict, step: int, step_s: float,
                        info: dict) -> None:
  start = float(rec["step_start"])
  token = info["prompt_len"] + step
  tr.add(GPU_PID, GPU_STEPS, f"decode step {step}", "step", start, step_s,
         phase="decode", step=step, token=token)
  tr.add(GPU_PID, GPU_COMPUTE, "dense layers + LM head", "overhead", start,
         rec["step_over_s"], phase="decode", step=step, token=token)
  lay = rec["layers"]
  for layer in range(lay["t0"].shape[0]):
    _layer_events(tr, {k: v[layer] for k, v in lay.items()}, layer, "decode", step, info)


def _layer_events(tr: _Tracks, r: dict, layer: int, phase: str, step, info: dict) -> None:
  """Every slice of one layer (``r``: that layer's record, seconds)."""
  base = dict(layer=layer, phase=phase)
  if step is not None:
    base.update(step=step, token=info["prompt_len"] + step)
  where = "prefill" if step is None else f"step {step}"
  tr.add(GPU_PID, GPU_LAYERS, f"{where} L{layer}", "layer", r["t0"], r["end"] - r["t0"],
         **base, hits=int(np.sum(r["slot_valid"] & r["slot_resident"])),
         fetched=int(np.sum(r["slot_fetched"])), gpu_lane_end_s=r["gpu_end"],
         ndp_lane_end_s=r["ndp_end"], return_end_s=r["ret_end"])
  # When each demand-loaded expert's weights have arrived (float64 seconds, [slots]).
  arrive = float(r["fetch_start"]) + np.cumsum(r["slot_fetch_s"].astype(np.float64))
  _gpu_compute_events(tr, r, base, arrive)
  _link_events(tr, r, base, arrive, info)
  _ndp_events(tr, r, base, info)


def _gpu_compute_events(tr: _Tracks, r: dict, base: dict, arrive: np.ndarray) -> None:
  """GPU compute track of one layer: attention + router, shared experts,
  residents, each fetched expert after its load (``arrive``), the reduction."""
  ids, tok, gpu_s, fetched = r["slot_ids"], r["slot_tokens"], r["slot_gpu_s"], r["slot_fetched"]
  tr.add(GPU_PID, GPU_COMPUTE, "attention+router", "attention", r["t0"], r["attn_s"], **base)
  tr.add(GPU_PID, GPU_COMPUTE, "shared experts", "shared_expert", r["tr"], r["shared_s"],
         **base)
  cur = float(r["tr"]) + float(r["shared_s"])
  for i in np.flatnonzero(~fetched & (gpu_s > 0)):
    tr.add(GPU_PID, GPU_COMPUTE, f"expert {int(ids[i])}", "expert_gpu", cur, gpu_s[i],
           **base, expert=ids[i], tokens=tok[i], gpu_share=r["slot_gfrac"][i],
           resident=bool(r["slot_resident"][i]), fetched=False)
    cur += float(gpu_s[i])
  for i in np.flatnonzero(fetched):
    begin = max(cur, arrive[i])
    tr.add(GPU_PID, GPU_COMPUTE, f"expert {int(ids[i])}", "expert_gpu", begin, gpu_s[i],
           **base, expert=ids[i], tokens=tok[i], gpu_share=r["slot_gfrac"][i],
           resident=False, fetched=True, kept=bool(r["slot_kept"][i]))
    cur = begin + float(gpu_s[i])
  tr.add(GPU_PID, GPU_COMPUTE, "reduction", "reduction", r["end"] - r["red"], r["red"],
         **base, partials=int(r["n_partials"]))


def _link_events(tr: _Tracks, r: dict, base: dict, arrive: np.ndarray, info: dict) -> None:
  """Link tracks of one layer.  To GPU: background loads before the router,
  demand loads (ending at ``arrive``), background loads in the idle window,
  partial-sum return; to NDP: the activation broadcast."""
  eb, f_s, act_tokens = info["expert_bytes"], info["fetch_s"], info["tokens"][base["phase"]]
  ids, fetch_link = r["slot_ids"], r["slot_fetch_s"]
  tr.add(LINK_PID, LINK_TO_GPU, "prefetch", "prefetch", r["bg_pre_start"], r["bg_pre_s"],
         **base, expert_equivalents=float(r["bg_pre_s"]) / f_s,
         bytes=float(r["bg_pre_s"]) / f_s * eb)
  kept, kept_pf = r["slot_kept"], r["slot_kept_as_prefetch"]
  for i in np.flatnonzero(r["slot_fetched"]):
    note = " (kept: prefetch)" if kept_pf[i] else " (kept)" if kept[i] else ""
    tr.add(LINK_PID, LINK_TO_GPU, f"load expert {int(ids[i])}{note}", "demand_load",
           arrive[i] - float(fetch_link[i]), fetch_link[i], **base, expert=ids[i],
           bytes=float(r["slot_gfrac"][i]) * eb, kept=bool(kept[i]),
           prefetch=bool(kept_pf[i]))
  tr.add(LINK_PID, LINK_TO_GPU, "prefetch", "prefetch", r["bg_post_start"], r["bg_post_s"],
         **base, expert_equivalents=float(r["bg_post_s"]) / f_s,
         bytes=float(r["bg_post_s"]) / f_s * eb)
  n_part = int(r["n_partials"])
  tr.add(LINK_PID, LINK_TO_GPU, "partial sums", "return",
         max(float(r["ndp_end"]), float(r["fetch_end"])), r["ret"], **base,
         partials=n_part, bytes=n_part * act_tokens * info["act_bytes"])
  tr.add(LINK_PID, LINK_TO_NDP, "broadcast", "broadcast", r["bcast_start"], r["bcast"],
         **base, bytes=act_tokens * info["act_bytes"] if bool(r["w"]) else 0.0)


def _ndp_events(tr: _Tracks, r: dict, base: dict, info: dict) -> None:
  """NDP unit tracks of one layer: the units' expert work from the end of the
  broadcast (one slice per expert under EP, one per unit per layer under TP)."""
  eb, ids, tok = info["expert_bytes"], r["slot_ids"], r["slot_tokens"]
  ndp_s, unit = r["slot_ndp_s"], r["slot_unit"]
  start = float(r["bcast_start"]) + float(r["bcast"])
  if info["tp"]:  # every unit runs a 1/N slice of every NDP expert: one slice each
    on = np.flatnonzero(ndp_s > 0)
    if on.size:
      share = 1.0 - r["slot_gfrac"][on]
      for u in range(info["units"]):
        tr.add(NDP_PID, u + 1, f"TP slices of {on.size} expert(s)", "expert_ndp", start,
               np.sum(ndp_s[on]), **base, experts=[int(x) for x in ids[on]],
               expert_us=[float(x) * US for x in ndp_s[on]],
               weight_bytes=float(np.sum(share)) * eb / info["units"])
    return
  for u in range(info["units"]):
    cur = start
    for i in np.flatnonzero((ndp_s > 0) & (unit == u)):
      share = 1.0 - float(r["slot_gfrac"][i])
      tr.add(NDP_PID, u + 1, f"expert {int(ids[i])}", "expert_ndp", cur, ndp_s[i], **base,
             expert=ids[i], tokens=tok[i], ndp_share=share, weight_bytes=share * eb)
      cur += float(ndp_s[i])


# ---------------------------------------------------------------------------
# Reading a trace back.

def summary(trace: dict) -> dict:
  """What a trace shows, in numbers (a trace from :func:`timeline` or its
  JSON file loaded back).  Per phase: ``layers``; ``mean_us_per_layer`` of
  each slice category (GPU compute, NDP unit 0, both link directions: summed
  over the layer's slices, averaged over the phase's layers);
  ``layers_gpu_and_ndp`` (layers with expert work on both sides) and
  ``layers_ndp_only`` / ``layers_gpu_only``.  Plus the event count and the
  sequence's TTFT and e2e (``otherData``)."""
  per = {}
  for e in trace["traceEvents"]:
    if e["ph"] != "X" or e["cat"] in ("step", "overhead"):
      continue
    if e["pid"] == NDP_PID and e["tid"] != 1:
      continue  # NDP unit 0 stands for the units
    a = e["args"]
    lay = per.setdefault(a["phase"], {}).setdefault((a.get("step"), a["layer"]), {})
    lay[e["cat"]] = lay.get(e["cat"], 0.0) + e["dur"]
  out = {"events": len(trace["traceEvents"]),
         **{k: trace["otherData"]["result"][k] for k in ("ttft_s", "e2e_s")}}
  for phase, layers in per.items():
    cats = sorted({c for lay in layers.values() for c in lay} - {"layer"})
    gpu = [("expert_gpu" in lay) for lay in layers.values()]
    ndp = [("expert_ndp" in lay) for lay in layers.values()]
    out[phase] = {
        "layers": len(layers),
        "mean_us_per_layer": {c: float(np.mean([lay.get(c, 0.0) for lay in layers.values()]))
                              for c in ["layer", *cats]},
        "layers_gpu_and_ndp": int(np.sum(np.logical_and(gpu, ndp))),
        "layers_ndp_only": int(np.sum(np.logical_and(ndp, np.logical_not(gpu)))),
        "layers_gpu_only": int(np.sum(np.logical_and(gpu, np.logical_not(ndp))))}
  return out


_COLORS = {"attention": "#4c72b0", "shared_expert": "#64b5cd", "expert_gpu": "#55a868",
           "reduction": "#8172b2", "expert_ndp": "#dd8452", "demand_load": "#c44e52",
           "prefetch": "#937860", "return": "#da8bc3", "broadcast": "#8c8c8c"}


def plot_layer(trace: dict, path, layer: int, step: int | None = None):
  """PNG of one layer's slices (``step`` None: the prefill's layer ``layer``,
  else decode step ``step``'s), one row per track, time from the layer's
  start in microseconds (matplotlib, Agg).  Returns the path."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  phase = "prefill" if step is None else "decode"
  mine = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] != "step"
          and e["args"].get("phase") == phase and e["args"].get("layer") == layer
          and e["args"].get("step") == step]
  span = [e for e in mine if e["cat"] == "layer"]
  if not span:
    raise ConfigError(f"trace.plot_layer: no {phase} layer {layer}"
                      + ("" if step is None else f" in step {step}")
                      + "; give a layer and step the trace has")
  t0 = span[0]["ts"]
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
           if e["ph"] == "M" and e["name"] == "thread_name"}
  rows = [k for k in sorted(names) if k[0] != GPU_PID or k[1] == GPU_COMPUTE]
  fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
  seen = set()
  for y, key in enumerate(rows):
    for e in (e for e in mine if (e["pid"], e["tid"]) == key):
      lab = None if e["cat"] in seen else e["cat"]
      seen.add(e["cat"])
      ax.barh(y, e["dur"], left=e["ts"] - t0, height=0.6, color=_COLORS.get(e["cat"], "k"),
              edgecolor="white", linewidth=0.3, label=lab)
  ax.set_yticks(range(len(rows)), [names[k] for k in rows])
  ax.invert_yaxis()
  ax.axvline(span[0]["dur"], color="k", linewidth=0.8, linestyle=":")
  ax.set_xlabel("time from the layer's start (us); dotted: layer end")
  o = trace["otherData"]
  ax.set_title(f"{o.get('model')} {o.get('policy')}, sequence {o.get('seq')}: "
               + (f"prefill layer {layer}" if step is None else
                  f"decode step {step}, layer {layer}"), fontsize=9)
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=5,
            frameon=False)
  fig.tight_layout()
  p = _check_path(path)
  fig.savefig(p, dpi=110)
  plt.close(fig)
  return p


# ---------------------------------------------------------------------------
# Studies (the experiment binary's --trace_out).

def pick_cell(res, spec: str = ""):
  """The study cell to trace: ``spec`` "model,policy" names the first cell of
  the study with that model and policy; "" = the study's first cell."""
  cells = res.all_cells()
  if not spec.strip():
    return cells[0]
  parts = [p.strip() for p in spec.split(",")]
  if len(parts) != 2 or not all(parts):
    raise ConfigError(f"--trace_cell: {spec!r}; write MODEL,POLICY, e.g. "
                      "qwen3-30b-a3b,tp_lb_prefetch")
  for c in cells:
    if (c.model, c.policy) == tuple(parts):
      return c
  have = sorted({f"{c.model},{c.policy}" for c in cells})
  raise ConfigError(f"--trace_cell: {spec!r} is not a cell of this study; write one of "
                    + ", ".join(have[:12]) + (" ..." if len(have) > 12 else ""))


def check_request(res, path, cell_spec: str = "", seq: int = 0) -> None:
  """Checks a study trace request before the study runs (the binary's
  ``--trace_out`` / ``--trace_cell`` / ``--trace_seq``): one ConfigError each."""
  _check_path(path)
  pick_cell(res, cell_spec)
  if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < res.num_seqs:
    raise ConfigError(f"--trace_seq: {seq!r}; write a sequence index in [0, "
                      f"{res.num_seqs}) (the study's --num_seqs)")


def for_study(res, rows: list[dict], cell_spec: str = "", seq: int = 0) -> dict:
  """Trace of sequence ``seq`` of a study cell (:func:`pick_cell`), simulated
  with the knobs its row records (``resident_fraction``, MoNDE's
  alphas, the ``tuned`` biases).  ``res``: ``studies.Resolved``; ``rows``:
  the study's rows."""
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  cell = pick_cell(res, cell_spec)
  row = next((r for r in rows if studies.cell_key(r) == studies.cell_key(cell)), None)
  if row is None:
    raise ConfigError(f"--trace_cell: cell {tuple(cell)} has no row; run its study first")
  kw = {"resident_fraction": float(row["resident_fraction"])}
  for k in ("monde_alpha_prefill", "monde_alpha_decode"):
    if k in row:
      kw[k] = float(row[k])
  for k in ("gpu_bias", "ndp_bias"):
    if f"param_{k}" in row:
      kw[k] = float(row[f"param_{k}"])
  wl = studies.make_workload(res, cell.model, cell.routing)
  sysp = res.systems[cell.num_ndp_units]
  label = (f"{cell.model} {cell.policy} N={cell.num_ndp_units} resident_fraction="
           f"{kw['resident_fraction']:g} routing={cell.routing}, sequence {seq}")
  return timeline((sysp.spec, sysp.params), res.models[cell.model],
                  R.Routing(wl.prefill_ids, None, wl.decode_ids, None), cell.policy,
                  pb.PolicyParams(**kw), seq=seq, batch_size=res.config.batch_size,
                  profile_counts=wl.profile_counts, label=label)
