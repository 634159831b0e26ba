"""PNG plots of a study's rows (matplotlib, Agg backend; no display needed).

Each function takes result rows (dicts as in ``results.json``) and a path,
writes one PNG and returns the path, or returns None when the rows hold
nothing to plot (e.g. the study was not run).  ``workload``: a line stating
the workload (system, units, lengths, routing, sequences, batch), wrapped
under the title.  Long tick labels (model and policy names) are wrapped and
rotated so that they never overlap; the lane breakdown is a grid of at most
:data:`GRID_COLUMNS` models per row.
"""
from __future__ import annotations

import pathlib
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

Rows = list[dict[str, Any]]
LANE_LABELS = {"lane_gpu_s": "GPU", "lane_ndp_lane_s": "NDP (slowest unit)",
               "lane_ndp_max_unit_s": "NDP (busiest unit)",
               "lane_link_to_gpu_s": "link to GPU", "lane_link_to_ndp_s": "link to NDP"}


GRID_COLUMNS = 2
TITLE_WIDTH_CHARS = 80
LABEL_WIDTH_CHARS = 14


def title_text(title: str, workload: str = "", width_chars: int = TITLE_WIDTH_CHARS) -> str:
  """``title`` with ``workload`` wrapped below it (lines of ``width_chars``)."""
  if not workload:
    return title
  return title + "\n" + "\n".join(textwrap.wrap(workload, width_chars, break_long_words=False,
                                                 break_on_hyphens=False))


def wrap_label(label: str, width_chars: int = LABEL_WIDTH_CHARS) -> str:
  """A tick label broken into lines of at most ``width_chars`` (at ``-``, ``_``
  or ``.`` where possible, so model names stay readable)."""
  if len(label) <= width_chars:
    return label
  parts = label.replace("-", "-\0").replace("_", "_\0").replace(".", ".\0").split("\0")
  lines, cur = [], ""
  for part in parts:
    if cur and len(cur) + len(part) > width_chars:
      lines.append(cur)
      cur = ""
    cur += part
    while len(cur) > width_chars:
      lines.append(cur[:width_chars])
      cur = cur[width_chars:]
  lines.append(cur)
  return "\n".join(ln for ln in lines if ln)


def _set_title(ax, title: str, workload: str) -> None:
  ax.set_title(title_text(title, workload), fontsize=9 if workload else None)


def lane_keys(row: dict[str, Any]) -> list[str]:
  """The per-lane busy-time fields of a row (``lane_*_s``)."""
  return [k for k in row if k.startswith("lane_") and k.endswith("_s")]


def _uniq(xs):
  return list(dict.fromkeys(xs))


def figure_titles(fig) -> list[str]:
  """The figure's title and every visible subplot title, in order."""
  out = [fig.get_suptitle()] if fig.get_suptitle() else []
  return out + [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]


def png_title(path) -> str:
  """The ``Title`` a plot of this module stored in its PNG (its figure titles,
  workload included), so that what a figure says can be checked without
  reading pixels."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as im:
    return im.text.get("Title", "")


def _save(fig, path) -> str:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=110, bbox_inches="tight",
              metadata={"Title": " | ".join(figure_titles(fig)).replace("\n", " "),
                        "Software": "ndpsim"})
  plt.close(fig)
  tmp.replace(path)
  return str(path)


def speedup_bars(rows: Rows, path, title: str = "", workload: str = "") -> str | None:
  """Grouped bars: speedup over monde per model (groups) and policy (bars);
  model names wrapped and rotated under their group."""
  rows = [r for r in rows if r.get("speedup_vs_monde") is not None]
  if not rows:
    return None
  models, pols = _uniq(r["model"] for r in rows), _uniq(r["policy"] for r in rows)
  val = {(r["model"], r["policy"]): r for r in rows}
  fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 1.1 * len(models) * max(1, len(pols)) / 4),
                                  4.4))
  w = 0.8 / len(pols)
  x = np.arange(len(models))
  for i, p in enumerate(pols):
    ys = [val[(m, p)]["speedup_vs_monde"] if (m, p) in val else np.nan for m in models]
    es = [val[(m, p)].get("speedup_vs_monde_ci95") or 0.0 if (m, p) in val else 0.0
          for m in models]
    ax.bar(x + (i - (len(pols) - 1) / 2) * w, ys, w, yerr=es, label=p, capsize=2)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks(x, [wrap_label(m) for m in models], rotation=30, ha="right",
                rotation_mode="anchor", fontsize=8)
  ax.set_ylabel("end-to-end speedup over monde")
  _set_title(ax, title or "Speedup over MoNDE", workload)
  ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return _save(fig, path)


def _model_grid(n: int, columns: int):
  """(figure, flat axes, columns used) of a grid with one subplot per model,
  ``columns`` per row; the unused cells are hidden."""
  ncol = max(1, min(columns, n))
  nrow = -(-n // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.9 * nrow + 0.8),
                           squeeze=False)
  flat = axes.reshape(-1)
  for ax in flat[n:]:
    ax.set_visible(False)
  return fig, flat, ncol


def lane_breakdown(rows: Rows, path, workload: str = "",
                   columns: int = GRID_COLUMNS) -> str | None:
  """Per model (subplots in a grid of ``columns`` per row): busy seconds of each
  lane side by side, one group per policy, next to the end-to-end latency
  (lanes overlap in time, so they do not add up to it)."""
  if not rows:
    return None
  models = _uniq(r["model"] for r in rows)
  fig, flat, ncol = _model_grid(len(models), columns)
  for ax, m in zip(flat, models):
    rs = [r for r in rows if r["model"] == m]
    keys = ["e2e_latency_s_mean"] + lane_keys(rs[0])
    x = np.arange(len(rs))
    w = 0.85 / len(keys)
    for i, key in enumerate(keys):
      label = "end-to-end" if i == 0 else LANE_LABELS.get(key, key[5:-2])
      ax.bar(x + (i - (len(keys) - 1) / 2) * w, [r[key] for r in rs], w, label=label,
             color="k" if i == 0 else None)
    ax.set_xticks(x, [wrap_label(r["policy"]) for r in rs], rotation=45, ha="right",
                  rotation_mode="anchor", fontsize=7)
    ax.set_title(m, fontsize=9)
    ax.set_ylabel("seconds")
  handles, labels = flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=len(labels),
             bbox_to_anchor=(0.5, 0.0))
  fig.suptitle(title_text("End-to-end latency and busy time per lane", workload,
                          max(TITLE_WIDTH_CHARS, 50 * ncol)),
               fontsize=10 if workload else None)
  fig.tight_layout()
  return _save(fig, path)


def speedup_lines(rows: Rows, path, x_key: str, x_label: str, title: str,
                  workload: str = "") -> str | None:
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
  _set_title(ax, title + (f" ({models[0]})" if len(models) == 1 else ""), workload)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return _save(fig, path)


def sensitivity_bars(sens: dict[str, Any], path, workload: str = "") -> str | None:
  """Horizontal bars of d latency / d log(parameter), largest magnitude first."""
  if not sens or not sens.get("elasticities"):
    return None
  items = sorted(sens["elasticities"].items(), key=lambda kv: -abs(kv[1]))[:20]
  fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
  ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
  ax.set_xlabel("d(mean end-to-end latency, s) / d(log parameter)")
  ax.set_title(title_text(f"Sensitivity: {sens['model']}, {sens['policy']}", workload,
                          60), fontsize=9)
  ax.tick_params(axis="y", labelsize=7)
  return _save(fig, path)


def energy_vs_latency(rows: Rows, path, workload: str = "",
                      columns: int = GRID_COLUMNS) -> str | None:
  """Per model (subplots, ``columns`` per row): energy per output token (J,
  ``energy_per_token_j``) against mean end-to-end latency (s), one point per
  policy, the same colour and marker for a policy in every subplot.  Lower-left is
  better on both; None when no row carries energy."""
  rows = [r for r in rows if r.get("energy_per_token_j") is not None]
  if not rows:
    return None
  models, pols = _uniq(r["model"] for r in rows), _uniq(r["policy"] for r in rows)
  style = {p: (plt.get_cmap("tab10")(i % 10), "os^D"[(i // 10) % 4])
           for i, p in enumerate(pols)}
  fig, flat, ncol = _model_grid(len(models), columns)
  for ax, m in zip(flat, models):
    for r in (r for r in rows if r["model"] == m):
      ax.errorbar(r["e2e_latency_s_mean"], r["energy_per_token_j"],
                  xerr=r.get("e2e_latency_s_ci95") or 0.0, ls="none",
                  color=style[r["policy"]][0], marker=style[r["policy"]][1],
                  label=r["policy"], capsize=2)
    ax.set_title(m, fontsize=9)
    ax.set_xlabel("end-to-end latency, s")
    ax.set_ylabel("energy per output token, J")
    ax.grid(alpha=0.3)
  handles = [plt.Line2D([], [], marker=style[p][1], ls="none", color=style[p][0])
             for p in pols]
  fig.legend(handles, pols, fontsize=7, loc="upper center", ncol=min(len(pols), 6),
             bbox_to_anchor=(0.5, 0.0))
  fig.suptitle(title_text("Energy per output token vs end-to-end latency", workload,
                          max(TITLE_WIDTH_CHARS, 50 * ncol)),
               fontsize=10 if workload else None)
  fig.tight_layout()
  return _save(fig, path)
