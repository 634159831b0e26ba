"""What the experiment binary prints and writes as text: the report tables
(``report.md``, also printed), the one-line workload statement every title
carries, and ``results.csv`` / ``requests.csv``.  Pure functions of
results.json's document and rows; part of :mod:`ndpsim.experiment`.
"""
from __future__ import annotations

import csv
import io

from ndpsim.study_io import Cell, cell_key


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
  head = rows_of(rows, st.get("headline", []))
  if head:
    out.write("## Headline: end-to-end latency and speedup over monde\n\n")
    out.write(_row_table(head))
    for n, summ in doc["summary_by_num_ndp_units"].items():
      out.write(f"\n## Speedup over monde per policy (N = {n}, over models)\n\n")
      out.write(_summary_table(summ))
    out.write(paper_comparison(doc))
  for name, key, label in (("ndp_units", "num_ndp_units", "N"),
                           ("prefetch", "resident_fraction", "resident_fraction")):
    rs = [r for r in rows_of(rows, st.get(name, []))
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


def rows_of(rows: list[dict], cells) -> list[dict]:
  """The rows of ``cells`` (Cells or results.json's lists), in row order."""
  want = {cell_key(Cell(*c)) for c in cells}
  return [r for r in rows if cell_key(r) in want]


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
  from ndpsim import results  # pylint: disable=import-outside-toplevel
  from ndpsim.study_runner import REQUEST_CELL_KEYS  # pylint: disable=import-outside-toplevel
  keys = [*REQUEST_CELL_KEYS, "sequence_group", "sequences",
          *results.REQUEST_FIELDS]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
  w.writeheader()
  for r in requests:
    w.writerow({k: r[k] for k in keys})
  return buf.getvalue()
