"""``ndpsim-experiment`` / ``python -m ndpsim.experiment``: the paper's study.

With no flags it runs the default study on the shipped platform (RTX 5080 +
4 NDP-DIMMs over PCIe 5.0): four MoE models, batch 1, 512 prompt + 512 output
tokens, eleven policies, routing from the ``mixtral_8x7b`` calibrated
preset; plus the NDP-unit sweep (2-6) and the prefetch-budget sweep on the
first model.  It prints a table and writes into ``--out_dir``:
``results.json`` (resolved configuration, rows, speedup summaries),
``results.csv`` (the rows), ``requests.csv`` (one row per cell and sequence
group: TTFT, TPOT, e2e, bytes, hits), ``report.md`` (the printed tables under
a line stating the workload), ``timing.json`` (wall times), PNG plots, and
``cells/`` (one file per finished cell: ``--resume`` skips those).  Progress
lines on stderr end in an estimate of the time left.

This is the only module that reads absl FLAGS; the work is in
:mod:`ndpsim.studies` and :mod:`ndpsim.plots`.  Bad flags print one line
(``error: --flag: what to write``) on stderr and exit with status 2.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import signal
import sys
import time
from typing import Any

from absl import app, flags, logging

from ndpsim.base import ConfigError
from ndpsim.study_config import StudyConfig

FLAGS = flags.FLAGS
_D = StudyConfig()  # the one set of defaults (flags and the Python API share it)
flags.DEFINE_string("system", _D.system,
                    "system preset name (hw_configs/systems/) or path to a .json")
flags.DEFINE_list("models", list(_D.models),
                  "models: registry names, model .json files or HF config.json paths")
flags.DEFINE_list("policies", list(_D.policies),
                  "policies of the headline (monde, the speedup baseline, always runs, "
                  "its alpha auto-tuned on profiling sequences first); "
                  "tuned fits its knobs per model first (ndpsim.tune.fit on "
                  "--tune_num_seqs training sequences at fold_in(seed, 2))")
flags.DEFINE_integer("tune_num_seqs", _D.tune_num_seqs, "training sequences of each tuned fit (a "
                     "multiple of --batch_size); never the evaluation sequences")
flags.DEFINE_list("num_ndp_units", [str(n) for n in _D.num_ndp_units],
                  "NDP units of the headline; a list sweeps the headline over each")
flags.DEFINE_float("headline_budget", _D.headline_budget,
                   "prefetch/resident budget of the headline, a fraction in [0, 1] of "
                   "the GPU memory left for experts")
flags.DEFINE_list("prefetch_budgets", [f"{b:g}" for b in _D.prefetch_budgets],
                  "budgets the prefetch study sweeps (fractions in [0, 1])")
flags.DEFINE_multi_string("policy_module", [], "a Python file defining your own "
                          "ndpsim.policies.Policy (repeatable); its policies can then be "
                          "named in --policies and the sweep lists")
flags.DEFINE_list("prefetch_policies", list(_D.prefetch_policies),
                  "policies the prefetch study sweeps")
flags.DEFINE_list("sweep_ndp_units", [str(n) for n in _D.sweep_ndp_units],
                  "NDP-unit counts the ndp_units study sweeps")
flags.DEFINE_list("sweep_models", list(_D.sweep_models),
                  "models of the ndp_units and prefetch studies (empty: the first of "
                  "--models)")
flags.DEFINE_list("sweep_policies", list(_D.sweep_policies),
                  "policies of the ndp_units study")
flags.DEFINE_integer("prompt_len", None, "prompt tokens per sequence (default 512, or "
                     "the trace's)")
flags.DEFINE_integer("output_len", None, "output tokens per sequence (default 512, or "
                     "the trace's)")
flags.DEFINE_integer("batch_size", _D.batch_size, "sequences decoded together")
flags.DEFINE_integer("num_seqs", None, "sequences per cell (default 8, or the trace's "
                     "evaluation half); more narrows the 95% intervals")
flags.DEFINE_string("routing", _D.routing,
                    "routing preset name (ndpsim.workload.routing.PRESETS) or a "
                    ".npz/.csv trace file, or a folder or glob of per-layer CSV files")
flags.DEFINE_enum("routing_layout", _D.routing_layout, ["sequences", "decoder_batch"],
                  "how a CSV --routing trace maps to sequences: 'sequences' (token_id "
                  "counts one layer's tokens; sequences of prompt_len + output_len tokens "
                  "end to end) or 'decoder_batch' (NeuPIMs-MoE/DynaNDE decoder folders: "
                  "one folder or file per token position, token_id = request in the "
                  "batch; request s, position t -> sequence s, token t); see "
                  "docs/routing.md 'Trace formats'")
flags.DEFINE_integer("seed", _D.seed, "seed of the evaluation routing (MoNDE's profile uses "
                     "fold_in(seed, 1))")
flags.DEFINE_string("out_dir", "ndpsim_results", "folder for results, plots and cells")
flags.DEFINE_list("studies", list(_D.studies),
                  "studies to run: headline, ndp_units, prefetch, routing, sensitivity")
flags.DEFINE_multi_string("set", [], "hardware override component.field=value, e.g. "
                          "gpu.memory_bandwidth_gbps=800 (repeatable); the unit count "
                          "is --num_ndp_units, not system.num_ndp_units")
flags.DEFINE_string("dtype", _D.dtype, "storage dtype of every weight group (bf16, fp8, int4, "
                    "...); empty keeps each model's own")
flags.DEFINE_boolean("resume", False, "reuse the finished cells in --out_dir")
flags.DEFINE_boolean("overwrite", False, "replace the results of an earlier run in "
                     "--out_dir (without it, or --resume, such a folder is refused)")
flags.DEFINE_boolean("plots", True, "write the PNG plots")
flags.DEFINE_string("cache_dir", "", "persistent JAX compilation cache folder (speeds up "
                    "re-runs and --resume); empty = none")
flags.DEFINE_boolean("allow_implausible", False, "accept hardware values (presets, --set) "
                     "outside their plausible range for the unit, e.g. a 2.6 MHz GPU "
                     "clock; never outside what the float32 engine can carry (README "
                     "'Validation')")
flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() first "
                     "(one process per host; see docs/results.md)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed)")
flags.DEFINE_integer("num_processes", None, "number of processes (--distributed)")
flags.DEFINE_integer("process_id", None, "this process's index (--distributed)")
flags.DEFINE_string("trace_out", "", "write a Chrome/Perfetto trace JSON of one sequence "
                    "of one cell to this file: every layer's slices on the GPU, each NDP "
                    "unit and both link directions (open it in https://ui.perfetto.dev or "
                    "chrome://tracing; README 'Timeline'); empty: no trace")
flags.DEFINE_string("trace_cell", "", "MODEL,POLICY of the cell --trace_out traces (the "
                    "study's first cell with both, e.g. qwen3-30b-a3b,tp_lb_prefetch); "
                    "empty: the study's first cell")
flags.DEFINE_integer("trace_seq", 0, "the sequence of that cell --trace_out traces")

_LIST_TYPES = {"num_ndp_units": int, "sweep_ndp_units": int, "prefetch_budgets": float}


def _typed_list(name: str, values: list[str]) -> tuple:
  tp = _LIST_TYPES.get(name, str)
  out = []
  for v in values:
    try:
      x = tp(v)
    except ValueError:
      kind = "integers" if tp is int else "numbers"
      raise ConfigError(f"--{name}: {v!r} is not a number; write a comma-separated list "
                        f"of {kind}") from None
    out.append(x)
  return tuple(out)


def config_from_flags(fl=FLAGS):
  """A ``StudyConfig`` from parsed flags (ConfigError on a malformed list)."""
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  kw: dict[str, Any] = {}
  for name in ("models", "policies", "num_ndp_units", "prefetch_budgets",
               "prefetch_policies", "sweep_ndp_units", "sweep_models", "sweep_policies",
               "studies"):
    kw[name] = _typed_list(name, list(fl[name].value))
  for name in ("system", "headline_budget", "prompt_len", "output_len", "batch_size",
               "num_seqs", "routing", "seed", "dtype", "tune_num_seqs", "routing_layout",
               "allow_implausible"):
    kw[name] = fl[name].value
  kw["overrides"] = tuple(fl["set"].value)
  return studies.StudyConfig(**kw)


# ---------------------------------------------------------------------------
# Output.

def _units_text(units) -> str:
  """``4`` / ``2-6`` / ``2,4,8``: a list of unit counts, short."""
  us = sorted({int(u) for u in units})
  if len(us) > 2 and us == list(range(us[0], us[-1] + 1)):
    return f"{us[0]}-{us[-1]}"
  return ",".join(str(u) for u in us)


def workload_text(cfg: dict, num_ndp_units=None) -> str:
  """One line stating the workload of a run from results.json's ``config``:
  system and its parts, NDP units (``num_ndp_units``: the units of one figure;
  default the headline's), prompt/output lengths, routing, sequences, batch."""
  f = cfg["flags"]
  units = f["num_ndp_units"] if num_ndp_units is None else (
      num_ndp_units if isinstance(num_ndp_units, (list, tuple)) else [num_ndp_units])
  sysd = next(iter(cfg.get("systems", {}).values()), {})
  parts = sysd.get("parts", {})
  hw = (f" ({parts['gpu']} + {parts['ndp']} over {parts['link']})"
        if {"gpu", "ndp", "link"} <= set(parts) else "")
  routing = f["routing"]
  is_trace = any(v.get("kind") == "trace" for v in cfg.get("routing", {}).values())
  layout = f.get("routing_layout", "sequences")
  rt = (f"routing trace {routing}" + (f" ({layout} layout)" if layout != "sequences" else "")
        if is_trace else f"routing preset {routing}, seed {f['seed']}")
  extra = "".join(f", --set {o}" for o in f.get("overrides", []))
  extra += f", dtype {f['dtype']}" if f.get("dtype") else ""
  return (f"{f['system']}{hw}, {_units_text(units)} NDP units; {f['prompt_len']} prompt "
          f"+ {f['output_len']} output tokens; {rt}; {f['num_seqs']} sequences per "
          f"cell, batch {f['batch_size']}{extra}")


def format_tables(doc: dict) -> str:
  """The printed report: the workload, headline table, per-policy summary,
  the comparison with the paper (headline study only), sweeps."""
  rows = doc["rows"]
  out = io.StringIO()
  st = doc["config"]["studies"]
  out.write(f"Workload: {workload_text(doc['config'])}.\n\n")
  head = _rows_of(rows, st.get("headline", []))
  if head:
    out.write("## Headline: end-to-end latency and speedup over monde\n\n")
    out.write(_row_table(head))
    for n, summ in doc["summary_by_num_ndp_units"].items():
      out.write(f"\n## Speedup over monde per policy (N = {n}, over models)\n\n")
      out.write(_summary_table(summ))
    out.write(paper_comparison(doc))
  for name, key, label in (("ndp_units", "num_ndp_units", "N"),
                           ("prefetch", "prefetch_budget", "budget")):
    rs = [r for r in _rows_of(rows, st.get(name, []))
          if name != "prefetch" or r["policy"] != "monde"]
    if rs:
      out.write(f"\n## Study {name}: speedup over monde vs {label}\n\n")
      out.write(_pivot(rs, key, label))
  for preset, summ in doc.get("summary_by_routing", {}).items():
    out.write(f"\n## Study routing: preset {preset} (speedup over monde, over models)\n\n")
    out.write(_summary_table(summ))
  fits = [f for fs in doc.get("tuned", {}).values() for f in fs]
  if fits:
    out.write("\n## tuned: knobs fitted on training sequences (tune.fit)\n\n"
              "| model | N | routing | resident_fraction | gpu_bias | ndp_bias | "
              "training e2e s (heuristic) | evaluations |\n|---|---|---|---|---|---|---|---|\n")
    for f in fits:
      k = f["knobs"]
      out.write(f"| {f['model']} | {f['num_ndp_units']} | {f['routing']} | "
                f"{k['resident_fraction']:.3g} | {k['gpu_bias']:.3g} | {k['ndp_bias']:.3g} | "
                f"{f['train_e2e_s']:.4g} ({f['heuristic_train_e2e_s']:.4g}) | "
                f"{f['evaluations']} |\n")
  sens = doc.get("sensitivity")
  if sens:
    out.write(f"\n## Sensitivity ({sens['model']}, {sens['policy']}, mean e2e "
              f"{sens['e2e_latency_s_mean']:.4g} s): d latency / d log parameter, s\n\n")
    items = sorted(sens["elasticities"].items(), key=lambda kv: -abs(kv[1]))[:15]
    out.write("| parameter | value | d e2e / d log p (s) |\n|---|---|---|\n")
    for k, v in items:
      out.write(f"| {k} | {sens['values'][k]:.4g} | {v:+.4g} |\n")
  return out.getvalue()


def paper_comparison(doc: dict) -> str:
  """The paragraph comparing the headline's ``tp_lb_prefetch`` speedup with the
  paper's (empty when the headline did not run both it and monde): what is
  compared, this run's mean and max over its models, the paper's numbers."""
  st = doc["config"]["studies"]
  s = doc.get("summary", {}).get("tp_lb_prefetch")
  if not st.get("headline") or not s:
    return ""
  f = doc["config"]["flags"]
  p = doc.get("paper", {})
  return (f"\n## Comparison with the paper\n\n"
          f"`tp_lb_prefetch` (the paper's framework) over `monde`, mean e2e speedup over "
          f"the {s['num_models']} headline model(s) at {f['num_ndp_units'][0]} NDP units on "
          f"this workload: mean {s['mean_speedup']:.2f}x, max {s['max_speedup']:.2f}x "
          f"({s['max_model']}).  The paper (arXiv 2601.03992) reports "
          f"{p.get('tp_lb_prefetch_mean_speedup', 2.41)}x mean and "
          f"{p.get('tp_lb_prefetch_max_speedup', 2.56)}x max on its own models and "
          "workload; the two are comparable only as far as the workloads are.\n")


def _rows_of(rows, cells):
  want = {tuple(c) for c in cells}
  return [r for r in rows if (r["model"], r["policy"], r["num_ndp_units"],
                              r["prefetch_budget"], r["routing"]) in want]


def _fmt_speed(r):
  s = r.get("speedup_vs_monde")
  return "-" if s is None else f"{s:.2f}x ±{r['speedup_vs_monde_ci95']:.2f}"


def _row_table(rows) -> str:
  lines = ["| model | policy | N | e2e latency s (±95%) | TTFT s | TPOT ms | speedup |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['policy']} | {r['num_ndp_units']} | "
                 f"{r['e2e_latency_s_mean']:.4g} ±{r['e2e_latency_s_ci95']:.2g} | "
                 f"{r['ttft_s_mean']:.4g} | {1e3 * r['tpot_s_mean']:.4g} | "
                 f"{_fmt_speed(r)} |")
  return "\n".join(lines) + "\n"


def _summary_table(summ) -> str:
  lines = ["| policy | mean | geomean | max (model) |", "|---|---|---|---|"]
  for p, s in summ.items():
    lines.append(f"| {p} | {s['mean_speedup']:.2f}x | {s['geomean_speedup']:.2f}x | "
                 f"{s['max_speedup']:.2f}x ({s['max_model']}) |")
  return "\n".join(lines) + "\n"


def _pivot(rows, key, label) -> str:
  xs = sorted({r[key] for r in rows})
  series = list(dict.fromkeys((r["model"], r["policy"]) for r in rows))
  val = {(r["model"], r["policy"], r[key]): r for r in rows}
  lines = ["| model | policy | " + " | ".join(f"{label}={x:g}" for x in xs) + " |",
           "|---|---|" + "---|" * len(xs)]
  for m, p in series:
    cells = [_fmt_speed(val[(m, p, x)]).split(" ")[0] if (m, p, x) in val else ""
             for x in xs]
    lines.append(f"| {m} | {p} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


CSV_SKIP = ("e2e_latency_s_per_group",)


def rows_csv(rows: list[dict]) -> str:
  """The rows as CSV (list-valued fields left out; a field only some rows have,
  such as monde's alpha, is empty in the others)."""
  keys = list(dict.fromkeys(k for r in rows for k in r if k not in CSV_SKIP))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: r.get(k, "") for k in keys})
  return buf.getvalue()


def requests_csv(requests: list[dict]) -> str:
  """requests.csv: one line per (cell, sequence group) of
  :func:`ndpsim.studies.split_requests`, a fixed header even when empty."""
  from ndpsim import results, studies  # pylint: disable=import-outside-toplevel
  keys = [*studies.REQUEST_CELL_KEYS, "sequence_group", "sequences",
          *results.REQUEST_FIELDS]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
  w.writeheader()
  for r in requests:
    w.writerow({k: r[k] for k in keys})
  return buf.getvalue()


def build_document(res, rows: list[dict], sens: dict | None,
                   tuned_fits: dict | None = None) -> dict:
  """results.json: configuration, rows and summaries; ``tuned``: per model the
  fitted knobs of the ``tuned`` policy and the tuner's evaluation counts."""
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  cfg = res.config
  cells = res.cells.get("headline", [])
  by_n = {}
  for n in cfg.num_ndp_units:
    by_n[str(n)] = studies.speedup_summary(
        studies.select(rows, [c for c in cells if c.num_ndp_units == n]))
  by_routing = {}
  for preset in studies.REAL_TRACE_PRESETS:
    sel = [c for c in res.cells.get("routing", []) if c.routing == preset]
    if sel:
      by_routing[preset] = studies.speedup_summary(studies.select(rows, sel))
  first = str(cfg.num_ndp_units[0])
  return {"config": studies.resolved_config(res), "rows": rows,
          "summary": by_n.get(first, {}), "summary_by_num_ndp_units": by_n,
          "summary_by_routing": by_routing, "sensitivity": sens,
          "tuned": studies.tuned_summary(tuned_fits or {}),
          "paper": {"tp_lb_prefetch_mean_speedup": 2.41, "tp_lb_prefetch_max_speedup": 2.56},
          "speedup_definition": "mean e2e latency of monde (same model, NDP units and "
          "routing, headline budget) / mean e2e latency of the row; ci95: 1.96 sd / "
          "sqrt(n) of the paired per-sequence-group ratio",
          "timing": "wall times are in timing.json, so that two runs of the same "
          "settings write byte-identical results.json and results.csv"}


_WALL_KEYS = ("wall_s",)


def split_timing(rows: list[dict], tuned_fits: dict) -> tuple[list[dict], dict, dict]:
  """(rows, tuned fits) without wall times, and the timing document they had."""
  timing = {"cells": [], "tuned_fits": []}
  out_rows = []
  for r in rows:
    timing["cells"].append({**{k: r[k] for k in ("model", "policy", "num_ndp_units",
                                                 "prefetch_budget", "routing") if k in r},
                            "wall_s": r.get("wall_s")})
    out_rows.append({k: v for k, v in r.items() if k not in _WALL_KEYS})
  fits = {}
  for key, f in tuned_fits.items():
    timing["tuned_fits"].append({"model": f.get("model"), "num_ndp_units": f.get(
        "num_ndp_units"), "routing": f.get("routing"), "wall_s": f.get("wall_s")})
    fits[key] = {k: v for k, v in f.items() if k not in _WALL_KEYS}
  return out_rows, fits, timing


def write_plots(doc: dict, out_dir: pathlib.Path) -> list[str]:
  """The PNG plots of results.json ``doc``; every title states its workload
  (:func:`workload_text` at the figure's NDP units).  Returns their paths."""
  from ndpsim import plots  # pylint: disable=import-outside-toplevel
  rows, cfg = doc["rows"], doc["config"]
  st = cfg["studies"]
  head = _rows_of(rows, st.get("headline", []))
  n0 = cfg["flags"]["num_ndp_units"][0]
  head0 = [r for r in head if r["num_ndp_units"] == n0]
  swept = _rows_of(rows, st.get("ndp_units", []))
  at_n0 = workload_text(cfg, n0)
  sens = doc.get("sensitivity")
  made = [
      plots.speedup_bars(head0, out_dir / "speedup.png",
                         f"Speedup over MoNDE, {n0} NDP units", workload=at_n0),
      plots.lane_breakdown(head0, out_dir / "lane_breakdown.png", workload=at_n0),
      plots.energy_vs_latency(head0, out_dir / "energy_vs_latency.png", workload=at_n0),
      plots.speedup_lines(swept, out_dir / "speedup_vs_ndp_units.png", "num_ndp_units",
                          "NDP-DIMMs", "Speedup over MoNDE vs NDP units",
                          workload=workload_text(cfg, [r["num_ndp_units"] for r in swept])),
      plots.speedup_lines([r for r in _rows_of(rows, st.get("prefetch", []))
                           if r["policy"] != "monde"],
                          out_dir / "speedup_vs_prefetch_budget.png", "prefetch_budget",
                          "prefetch budget (fraction of GPU memory left for experts)",
                          "Speedup over MoNDE vs prefetch budget", workload=at_n0),
      plots.sensitivity_bars(sens, out_dir / "sensitivity.png",
                             workload=workload_text(cfg, sens["num_ndp_units"])
                             if sens else ""),
  ]
  return [p for p in made if p]


# ---------------------------------------------------------------------------
# Main.

_INTERRUPTED = False


def _on_sigint(signum, frame) -> None:  # pylint: disable=unused-argument
  """First Ctrl-C: remember it and raise; a second one kills at once.

  The raise can land inside a callback that swallows it (JAX's garbage-collection
  hook does), so the flag is also checked at every cell boundary (`_check_interrupt`):
  the run then stops after the cell in flight instead of finishing silently.
  """
  global _INTERRUPTED  # pylint: disable=global-statement
  _INTERRUPTED = True
  signal.signal(signal.SIGINT, signal.default_int_handler)
  raise KeyboardInterrupt


def _check_interrupt(ev: dict, lead: bool) -> None:
  """run_cells' progress callback: stops at a cell boundary after Ctrl-C; the
  lead process prints the event.

  Test hook: with ``NDPSIM_INTERRUPT_AFTER_CELLS=k`` in the environment the
  process sends itself SIGINT right after the k-th cell this run computed is
  written -- a deterministic Ctrl-C through the same handler (tests only).
  """
  if _INTERRUPTED:
    raise KeyboardInterrupt
  if lead:
    _progress(ev)
  after = os.environ.get("NDPSIM_INTERRUPT_AFTER_CELLS")
  if after is not None and ev["event"] == "cell":
    if not after.isdigit() or int(after) < 1:
      raise ConfigError(f"NDPSIM_INTERRUPT_AFTER_CELLS is {after!r}; write a positive "
                        "integer (a test hook) or unset it")
    if ev["done"] - ev["skipped"] == int(after):
      signal.raise_signal(signal.SIGINT)


def _clock(seconds: float) -> str:
  """``m:ss`` (``h:mm:ss`` from an hour on)."""
  s = max(int(round(seconds)), 0)
  h, m = divmod(s // 60, 60)
  return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def eta_text(done: int, total: int, skipped: int, elapsed_s: float) -> str:
  """Estimated time left, ``~m:ss``: the cells still to run times the mean
  wall time of the cells this run computed so far (``done - skipped`` in
  ``elapsed_s``).  Rough: the first cells of each model and policy carry their
  compile, later ones reuse it -- hence the ``~``."""
  computed = done - skipped
  if computed <= 0:
    return "~?"
  return "~" + _clock(elapsed_s / computed * max(total - done, 0))


def _progress(ev: dict) -> None:
  if ev["event"] == "start":
    print(f"ndpsim-experiment: {ev['total']} cells, {ev['skipped']} already finished",
          file=sys.stderr, flush=True)
    bad = ev.get("distrusted") or []
    if bad:
      print(f"ndpsim-experiment: {len(bad)} cell file(s) not trusted, recomputed: "
            + "; ".join(f"{name}: {why}" for name, why in bad[:5])
            + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""),
            file=sys.stderr, flush=True)
    return
  if ev["event"] == "tuned":
    f = ev["fit"]
    k = f["knobs"]
    print(f"tuned fit {f['model']} N={f['num_ndp_units']} {f['routing']}: "
          f"resident_fraction {k['resident_fraction']:.3g}, gpu_bias {k['gpu_bias']:.3g}, "
          f"ndp_bias {k['ndp_bias']:.3g}; training e2e {f['train_e2e_s']:.4g} s "
          f"(heuristic {f['heuristic_train_e2e_s']:.4g} s), {f['evaluations']} "
          f"evaluations ({ev['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    return
  c, r = ev["cell"], ev["row"]
  t = ev["elapsed_s"]
  eta = eta_text(ev["done"], ev["total"], ev.get("skipped", 0), t)
  print(f"[{ev['done']:3d}/{ev['total']} {_clock(t)} ETA {eta}] {c.model} "
        f"{c.policy} N={c.num_ndp_units} budget={c.prefetch_budget:g} {c.routing}: e2e "
        f"{r['e2e_latency_s_mean']:.4g} s ±{r['e2e_latency_s_ci95']:.2g} "
        f"({r['wall_s']:.1f} s)", file=sys.stderr, flush=True)


def run_experiment(fl=FLAGS) -> dict:
  """Runs the configured studies and writes every output; returns results.json."""
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  if not (fl.out_dir or "").strip():
    raise ConfigError("--out_dir: empty; write a folder for the results, e.g. "
                      "--out_dir=ndpsim_results (--out_dir=. for the current folder)")
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  for path in fl.policy_module:
    policies.load_module(path)
  cfg = config_from_flags(fl)
  res = studies.resolve(cfg)  # cfg.allow_implausible from the flag
  if fl.trace_out:  # a bad trace request fails before the study runs
    from ndpsim import trace  # pylint: disable=import-outside-toplevel
    trace.check_request(res, fl.trace_out, fl.trace_cell, fl.trace_seq)
  elif fl.trace_cell or fl.trace_seq:
    raise ConfigError("--trace_cell/--trace_seq: given without --trace_out; add "
                      "--trace_out=FILE.json or leave them out")
  out_dir = pathlib.Path(fl.out_dir)
  if fl.resume and fl.overwrite:
    raise ConfigError("--overwrite: given with --resume; keep one (--resume continues "
                      "the earlier run, --overwrite replaces it)")
  earlier = (any((out_dir / p).exists() for p in ("results.json", "run_settings.json"))
             or any((out_dir / "cells").glob("*.json")))
  if out_dir.is_dir() and earlier and not (fl.resume or fl.overwrite):
    raise ConfigError(f"--out_dir: {str(out_dir)!r} holds an earlier run; add --resume to "
                      "continue it, --overwrite to replace it, or give another --out_dir")
  lead = jax.process_index() == 0
  if jax.process_count() > 1:  # every process checks --out_dir before process 0 writes
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("ndpsim-experiment: --out_dir checked")
  tuned_fits: dict = {}
  rows = studies.run_cells(res, out_dir, resume=fl.resume,
                           progress=lambda ev: _check_interrupt(ev, lead), write=lead,
                           tuned_fits=tuned_fits)
  if jax.process_count() > 1:  # each process states the shard it simulated
    from ndpsim.sharding import LOCAL_WORK  # pylint: disable=import-outside-toplevel
    spans = ",".join(f"{a}-{b - 1}" for a, b in sorted(LOCAL_WORK["rows"]))
    print(f"ndpsim-experiment: process {jax.process_index()} of {jax.process_count()} "
          f"simulated {LOCAL_WORK['sequences']} of {LOCAL_WORK['total']} sequence rows "
          f"(rows {spans or 'none'} of each cell)", file=sys.stderr, flush=True)
  sens = None
  if "sensitivity" in cfg.studies:
    if lead:
      print("ndpsim-experiment: sensitivity (forward-mode derivatives)...",
            file=sys.stderr, flush=True)
    sens = studies.sensitivity(res)
  rows, requests = studies.split_requests(rows, cfg.batch_size)
  rows, fits, timing = split_timing(rows, tuned_fits)
  doc = build_document(res, rows, sens, fits)
  from ndpsim import study_io  # pylint: disable=import-outside-toplevel
  study_io.check_finite_document(doc)  # one line naming an overflowed number, not NaN
  if lead:
    if fl.plots:
      doc["plots"] = [os.path.basename(p) for p in write_plots(doc, out_dir)]
    timing["total_wall_s"] = time.perf_counter() - t0
    studies.write_atomic(out_dir / "results.json", json.dumps(doc, indent=1, default=str))
    studies.write_atomic(out_dir / "results.csv", rows_csv(rows))
    studies.write_atomic(out_dir / "requests.csv", requests_csv(requests))
    studies.write_atomic(out_dir / "timing.json", json.dumps(timing, indent=1))
    tables = format_tables(doc)
    studies.write_atomic(out_dir / "report.md", tables + "\n")
    print(tables)
    print(f"wrote {out_dir}/results.json, results.csv, requests.csv, report.md, "
          "timing.json"
          + "".join(f", {p}" for p in doc.get("plots", []))
          + f" in {timing['total_wall_s']:.0f} s", file=sys.stderr)
    if fl.trace_out:
      path = trace.write(fl.trace_out, trace.for_study(res, rows, fl.trace_cell,
                                                       fl.trace_seq))
      print(f"wrote trace {path} (open it in https://ui.perfetto.dev)", file=sys.stderr)
  return doc


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0] + "; see --helpfull")
  return []


def _check_cache_dir(path: str) -> None:
  """--cache_dir must be a folder this process can create and write (JAX itself
  only logs a multi-line warning and runs uncached)."""
  p = pathlib.Path(path)
  if p.exists() and not p.is_dir():
    _fail(f"--cache_dir: {path!r} is a file; give a folder (it is created if missing)")
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".ndpsim_write_test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    _fail(f"--cache_dir: cannot write {path!r} ({e.strerror or e}); give a folder you "
          "can write to, or leave --cache_dir empty for no compilation cache")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected argument {argv[1]!r}; every setting is a --flag=value "
          "(see --helpfull)")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.cache_dir:
    _check_cache_dir(FLAGS.cache_dir)
  import jax  # pylint: disable=import-outside-toplevel
  if FLAGS.cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if FLAGS.distributed:
    try:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes,
                                 process_id=FLAGS.process_id)
    except (ValueError, RuntimeError) as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      _fail(f"--distributed: jax.distributed.initialize failed ({first[:200]}); give "
            "--coordinator_address=HOST:PORT, --num_processes and --process_id, or run "
            "under a cluster manager JAX detects (SLURM, Cloud TPU)")
  signal.signal(signal.SIGINT, _on_sigint)
  try:
    run_experiment(FLAGS)
  except ConfigError as e:
    _fail(str(e).splitlines()[0])
  except OSError as e:  # results, cells or plots could not be written
    _fail(f"--out_dir: cannot write {e.filename or FLAGS.out_dir!r} ({e.strerror or e}); "
          "give a folder you can write to")
  except KeyboardInterrupt:
    print(f"interrupted: finished cells are in {FLAGS.out_dir}/cells; rerun with "
          "--resume to continue", file=sys.stderr)
    sys.exit(130)


def run() -> None:
  """Console-script entry point."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
