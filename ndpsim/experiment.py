"""``ndpsim-experiment`` / ``python -m ndpsim.experiment``: the paper's study.

With no flags it runs the default study on the shipped platform (RTX 5080 +
4 NDP-DIMMs over PCIe 5.0): four MoE models, batch 1, 512 prompt + 512 output
tokens, eleven policies, routing from the ``mixtral_8x7b`` calibrated
preset; plus the NDP-unit sweep (2-6) and the ``resident_fraction`` (prefetch
budget) sweep on the first model.  It prints a table and writes into ``--out_dir``:
``results.json`` (resolved configuration, rows, speedup summaries),
``results.csv`` (the rows), ``requests.csv`` (one row per cell and sequence
group: TTFT, TPOT, e2e, bytes, hits), ``report.md`` (the printed tables under
a line stating the workload), ``timing.json`` (wall times), PNG plots, and
``cells/`` (one file per finished cell: ``--resume`` skips those).  Progress
lines on stderr end in an estimate of the time left.

The flags and their conversion to a ``StudyConfig`` are in
:mod:`ndpsim.experiment_flags`, the text outputs in
:mod:`ndpsim.experiment_report`, the work in :mod:`ndpsim.studies` and
:mod:`ndpsim.plots`; this module runs them.  Bad flags print one line
(``error: --flag: what to write``) on stderr and exit with status 2.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time

from absl import app, flags, logging

from ndpsim import experiment_flags
from ndpsim.base import ConfigError
from ndpsim.experiment_flags import FLAGS, config_from_flags  # noqa: F401
from ndpsim.experiment_report import (format_tables, paper_comparison,  # noqa: F401
                                      requests_csv, rows_csv, rows_of, workload_text)

# ---------------------------------------------------------------------------
# results.json and the plots.

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
          "routing, headline resident_fraction) / mean e2e latency of the row; ci95: 1.96 sd / "
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
                                                 "resident_fraction", "routing") if k in r},
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
  head = rows_of(rows, st.get("headline", []))
  n0 = cfg["flags"]["num_ndp_units"][0]
  head0 = [r for r in head if r["num_ndp_units"] == n0]
  swept = rows_of(rows, st.get("ndp_units", []))
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
      plots.speedup_lines([r for r in rows_of(rows, st.get("prefetch", []))
                           if r["policy"] != "monde"],
                          out_dir / "speedup_vs_prefetch_budget.png", "resident_fraction",
                          "resident_fraction (prefetch budget: fraction of the GPU memory "
                          "left for experts)",
                          "Speedup over MoNDE vs resident_fraction", workload=at_n0),
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
        f"{c.policy} N={c.num_ndp_units} resident_fraction={r['resident_fraction']:g} "
        f"{c.routing}: e2e "
        f"{r['e2e_latency_s_mean']:.4g} s ±{r['e2e_latency_s_ci95']:.2g} "
        f"({r['wall_s']:.1f} s)", file=sys.stderr, flush=True)


def run_experiment(fl=FLAGS) -> dict:
  """Runs the configured studies and writes every output; returns results.json."""
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  res = _resolve_flags(fl)
  out_dir = pathlib.Path(fl.out_dir)
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
  if "sensitivity" in res.config.studies:
    if lead:
      print("ndpsim-experiment: sensitivity (forward-mode derivatives)...",
            file=sys.stderr, flush=True)
    sens = studies.sensitivity(res)
  rows, requests = studies.split_requests(rows, res.config.batch_size)
  rows, fits, timing = split_timing(rows, tuned_fits)
  doc = build_document(res, rows, sens, fits)
  from ndpsim import study_io  # pylint: disable=import-outside-toplevel
  study_io.check_finite_document(doc)  # one line naming an overflowed number, not NaN
  if lead:
    _write_outputs(fl, res, doc, requests, timing, t0)
  return doc


def _resolve_flags(fl):
  """The flags -> a validated study (``studies.resolve``), after the user's
  policy modules load; every flag error (a trace request, ``--out_dir``)
  before anything runs."""
  from ndpsim import policies, studies  # pylint: disable=import-outside-toplevel
  if not (fl.out_dir or "").strip():
    raise ConfigError("--out_dir: empty; write a folder for the results, e.g. "
                      "--out_dir=ndpsim_results (--out_dir=. for the current folder)")
  for path in fl.policy_module:
    policies.load_module(path)
  res = studies.resolve(config_from_flags(fl))  # cfg.allow_implausible from the flag
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
  return res


def _write_outputs(fl, res, doc: dict, requests: list[dict], timing: dict,
                   t0: float) -> None:
  """Process 0's files: plots, results.json/.csv, requests.csv, timing.json,
  report.md (also printed) and the ``--trace_out`` trace."""
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  out_dir = pathlib.Path(fl.out_dir)
  rows = doc["rows"]
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
    from ndpsim import trace  # pylint: disable=import-outside-toplevel
    path = trace.write(fl.trace_out, trace.for_study(res, rows, fl.trace_cell,
                                                     fl.trace_seq))
    print(f"wrote trace {path} (open it in https://ui.perfetto.dev)", file=sys.stderr)


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
  """Console-script entry point (also ``python -m``)."""
  # --help lists the main module's key flags, the module named by argv[0] (the
  # console script or this file); the flags are defined in experiment_flags.
  for flag in FLAGS.get_key_flags_for_module(experiment_flags):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
