"""Rows, speedups, fingerprints and atomic cell files of the experiment studies."""
from __future__ import annotations

import os
import pathlib
import re
from typing import Any, NamedTuple

import numpy as np

from ndpsim import results
from ndpsim.base import ConfigError
from ndpsim.study_config import BASELINE, TUNED


class Cell(NamedTuple):
  """One simulated configuration (a row of results).  ``resident_fraction``:
  ``PolicyParams.resident_fraction`` (a fraction in [0, 1] of the GPU memory
  left for experts); a ``tuned`` cell's is the fit's starting point, its row
  reports the fitted value."""
  model: str
  policy: str
  num_ndp_units: int
  resident_fraction: float
  routing: str


def cell_key(cell: Cell | dict | list | tuple) -> tuple:
  """What identifies a cell among rows, from a Cell, a row or results.json's
  list: its five fields, except a ``tuned`` cell's resident_fraction (its row
  holds the fitted value; a study has one ``tuned`` cell per model, NDP units
  and routing)."""
  if isinstance(cell, dict):
    cell = (cell["model"], cell["policy"], cell["num_ndp_units"], cell["resident_fraction"],
            cell["routing"])
  m, p, n, rf, r = cell
  return (m, p, int(n), None if p == TUNED else float(rf), r)


# ---------------------------------------------------------------------------
# Rows.

def make_row(cell: Cell, r: results.SimResult, wall_s: float) -> dict[str, Any]:
  """The result row of one cell (JSON-ready)."""
  s = results.summarize(r)
  lanes = results.lane_breakdown(r)
  e2e = np.asarray(r.e2e_s, np.float64).reshape(-1)
  return {
      **cell._asdict(),
      "e2e_latency_s_mean": s["e2e_s"]["mean"], "e2e_latency_s_ci95": s["e2e_s"]["ci95"],
      "ttft_s_mean": s["ttft_s"]["mean"], "ttft_s_ci95": s["ttft_s"]["ci95"],
      "tpot_s_mean": s["tpot_s"]["mean"], "tpot_s_ci95": s["tpot_s"]["ci95"],
      "gpu_hit_rate": s["gpu_hit_rate"]["mean"],
      "ndp_imbalance_mean": s["ndp_imbalance"]["mean"],
      **{f"lane_{k}": v for k, v in lanes.items() if k.endswith("_s") and k != "e2e_s"},
      "bytes_to_gpu_mean": s["bytes_to_gpu"]["mean"],
      "prefetched_bytes_mean": s["prefetched_bytes"]["mean"],
      "peak_gpu_bytes_mean": s["peak_gpu_bytes"]["mean"],
      "peak_gpu_bytes_max": float(np.max(np.asarray(r.peak_gpu_bytes, np.float64))),
      "gpu_capacity_bytes": float(np.max(np.asarray(r.gpu_capacity_bytes, np.float64))),
      "num_seq_groups": int(e2e.size), "wall_s": wall_s,
      "e2e_latency_s_per_group": e2e.tolist(),
  }


def first_non_finite(obj: Any, path: str = "") -> str | None:
  """Dotted path (``a.b[3]``) of the first inf/NaN number in a JSON-able value
  (nested dicts, lists, tuples, numpy scalars and arrays), or None."""
  if isinstance(obj, (float, np.floating)):
    return None if np.isfinite(obj) else (path or "the value")
  if isinstance(obj, np.ndarray):
    if obj.dtype.kind in "fc" and not np.isfinite(obj).all():
      i = tuple(int(x) for x in np.argwhere(~np.isfinite(obj))[0])
      return f"{path}{list(i)}"
    return None
  if isinstance(obj, dict):
    items = ((f"{path}.{k}" if path else str(k), v) for k, v in obj.items())
  elif isinstance(obj, (list, tuple)):
    items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
  else:
    return None
  for p, v in items:
    bad = first_non_finite(v, p)
    if bad is not None:
      return bad
  return None


def check_finite(row: dict[str, Any]) -> None:
  """Every number of a row (nested values included) is finite, or one
  ConfigError naming the cell and the first quantity that is not (float32 could
  not carry a setting)."""
  bad = first_non_finite(row)
  if bad is not None:
    raise ConfigError(
        f"{row.get('model')} {row.get('policy')} N={row.get('num_ndp_units')}: {bad} is not "
        "finite: a setting is beyond what the float32 engine can carry (e.g. a bandwidth "
        "near 0 or a time near 1e38); check the --set values and their units")


def check_finite_document(doc: Any, what: str = "results.json") -> None:
  """Every number of a document about to be written is finite, or one
  ConfigError naming the document and the quantity (nothing is written)."""
  bad = first_non_finite(doc)
  if bad is not None:
    raise ConfigError(f"{what}: {bad} is not finite (overflowed float32); nothing was "
                      "written: check the --set values and their units")


def add_speedups(rows: list[dict]) -> list[dict]:
  """Adds speedup_vs_monde (ratio of mean e2e latencies, same model, units and
  routing, monde at the headline resident_fraction) and the 95% half-width of the paired
  per-group ratio."""
  base_rows = {(r["model"], r["num_ndp_units"], r["routing"]): r for r in rows
               if r["policy"] == BASELINE}
  out = []
  for r in rows:
    b = base_rows.get((r["model"], r["num_ndp_units"], r["routing"]))
    r = dict(r)
    if b is None:
      r["speedup_vs_monde"], r["speedup_vs_monde_ci95"] = None, None
    else:
      r["speedup_vs_monde"] = b["e2e_latency_s_mean"] / r["e2e_latency_s_mean"]
      ratio = (np.asarray(b["e2e_latency_s_per_group"])
               / np.asarray(r["e2e_latency_s_per_group"]))
      r["speedup_vs_monde_ci95"] = (float(1.96 * ratio.std(ddof=1) / np.sqrt(ratio.size))
                                    if ratio.size > 1 else 0.0)
    out.append(r)
  return out


def speedup_summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
  """Per policy over models: arithmetic and geometric mean and max speedup."""
  by: dict[str, list[dict]] = {}
  for r in rows:
    if r.get("speedup_vs_monde") is not None:
      by.setdefault(r["policy"], []).append(r)
  out = {}
  for p, rs in by.items():
    sp = np.asarray([r["speedup_vs_monde"] for r in rs])
    i = int(np.argmax(sp))
    out[p] = {"mean_speedup": float(sp.mean()), "geomean_speedup":
              float(np.exp(np.log(sp).mean())), "max_speedup": float(sp[i]),
              "max_model": rs[i]["model"], "num_models": int(sp.size)}
  return out


def select(rows: list[dict], cells: list[Cell]) -> list[dict]:
  """The rows of ``cells``, in their order."""
  idx = {cell_key(r): r for r in rows}
  return [idx[k] for k in map(cell_key, cells) if k in idx]


# ---------------------------------------------------------------------------
# Atomic cell files.

def cell_path(out_dir: str | os.PathLike, cell: Cell) -> pathlib.Path:
  name = f"{cell.model}__{cell.policy}__n{cell.num_ndp_units}__b{cell.resident_fraction:g}" \
         f"__{cell.routing}"
  return pathlib.Path(out_dir) / "cells" / (re.sub(r"[^A-Za-z0-9_.=-]", "_", name) + ".json")


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
  """Writes ``path`` via a temporary file and ``os.replace`` (never half-written)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  mode = "wb" if isinstance(text, bytes) else "w"
  with open(tmp, mode) as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
