"""PNG plots of a study's rows (matplotlib, Agg backend; no display needed).

Each function takes result rows (dicts as in ``results.json``) and a path,
writes one PNG and returns the path, or returns None when the rows hold
nothing to plot (e.g. the study was not run).
"""
from __future__ import annotations

import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

Rows = list[dict[str, Any]]
LANE_LABELS = {"lane_gpu_s": "GPU", "lane_ndp_lane_s": "NDP (slowest unit)",
               "lane_ndp_max_unit_s": "NDP (busiest unit)",
               "lane_link_to_gpu_s": "link to GPU", "lane_link_to_ndp_s": "link to NDP"}


def lane_keys(row: dict[str, Any]) -> list[str]:
  """The per-lane busy-time fields of a row (``lane_*_s``)."""
  return [k for k in row if k.startswith("lane_") and k.endswith("_s")]


def _uniq(xs):
  return list(dict.fromkeys(xs))


def _save(fig, path) -> str:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  plt.close(fig)
  tmp.replace(path)
  return str(path)


def speedup_bars(rows: Rows, path, title: str = "") -> str | None:
  """Grouped bars: speedup over monde per model (groups) and policy (bars)."""
  rows = [r for r in rows if r.get("speedup_vs_monde") is not None]
  if not rows:
    return None
  models, pols = _uniq(r["model"] for r in rows), _uniq(r["policy"] for r in rows)
  val = {(r["model"], r["policy"]): r for r in rows}
  fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(models) * max(1, len(pols)) / 4, 4))
  w = 0.8 / len(pols)
  x = np.arange(len(models))
  for i, p in enumerate(pols):
    ys = [val[(m, p)]["speedup_vs_monde"] if (m, p) in val else np.nan for m in models]
    es = [val[(m, p)].get("speedup_vs_monde_ci95") or 0.0 if (m, p) in val else 0.0
          for m in models]
    ax.bar(x + (i - (len(pols) - 1) / 2) * w, ys, w, yerr=es, label=p, capsize=2)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks(x, models, rotation=15)
  ax.set_ylabel("end-to-end speedup over monde")
  ax.set_title(title or "Speedup over MoNDE")
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, path)


def lane_breakdown(rows: Rows, path) -> str | None:
  """Per model (subplots): busy seconds of each lane side by side, one group per
  policy, next to the end-to-end latency (lanes overlap in time, so they do
  not add up to it)."""
  if not rows:
    return None
  models = _uniq(r["model"] for r in rows)
  fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 4), squeeze=False)
  for ax, m in zip(axes[0], models):
    rs = [r for r in rows if r["model"] == m]
    keys = ["e2e_latency_s_mean"] + lane_keys(rs[0])
    x = np.arange(len(rs))
    w = 0.85 / len(keys)
    for i, key in enumerate(keys):
      label = "end-to-end" if i == 0 else LANE_LABELS.get(key, key[5:-2])
      ax.bar(x + (i - (len(keys) - 1) / 2) * w, [r[key] for r in rs], w, label=label,
             color="k" if i == 0 else None)
    ax.set_xticks(x, [r["policy"] for r in rs], rotation=60, fontsize=7)
    ax.set_title(m, fontsize=9)
    ax.set_ylabel("seconds")
  axes[0][0].legend(fontsize=7)
  fig.suptitle("End-to-end latency and busy time per lane")
  return _save(fig, path)


def speedup_lines(rows: Rows, path, x_key: str, x_label: str, title: str) -> str | None:
  """Speedup over monde against ``x_key``, one line per (model, policy)."""
  rows = [r for r in rows if r.get("speedup_vs_monde") is not None]
  if len({r[x_key] for r in rows}) < 2:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  models = _uniq(r["model"] for r in rows)
  for m in models:
    for p in _uniq(r["policy"] for r in rows if r["model"] == m):
      rs = sorted((r for r in rows if r["model"] == m and r["policy"] == p),
                  key=lambda r: r[x_key])
      label = p if len(models) == 1 else f"{m}: {p}"
      ax.errorbar([r[x_key] for r in rs], [r["speedup_vs_monde"] for r in rs],
                  yerr=[r.get("speedup_vs_monde_ci95") or 0.0 for r in rs], marker="o",
                  capsize=2, label=label)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xlabel(x_label)
  ax.set_ylabel("end-to-end speedup over monde")
  ax.set_title(title + (f" ({models[0]})" if len(models) == 1 else ""))
  ax.legend(fontsize=7)
  return _save(fig, path)


def sensitivity_bars(sens: dict[str, Any], path) -> str | None:
  """Horizontal bars of d latency / d log(parameter), largest magnitude first."""
  if not sens or not sens.get("elasticities"):
    return None
  items = sorted(sens["elasticities"].items(), key=lambda kv: -abs(kv[1]))[:20]
  fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
  ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
  ax.set_xlabel("d(mean end-to-end latency, s) / d(log parameter)")
  ax.set_title(f"Sensitivity: {sens['model']}, {sens['policy']}", fontsize=9)
  ax.tick_params(axis="y", labelsize=7)
  return _save(fig, path)
