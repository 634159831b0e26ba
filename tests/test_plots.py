"""The experiment's plots (issue 12 item 5): titles state the workload, long
model and policy names never overlap, the lane breakdown is a grid.  Rows
are made up here (no simulation): each test takes about a second."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ndpsim import plots

pytestmark = pytest.mark.e2e

MODELS = ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite", "qwen1.5-moe-a2.7b",
          "a-very-long-custom-model-name-from-a-config-json")
POLICIES = ("monde", "monde_eq6", "monde_resident", "ndp_ep", "ndp_tp", "tp_lb",
            "tp_lb_prefetch", "tp_lb_adaptive", "oracle", "gpu_offload")
WORKLOAD = ("paper_rtx5080_ndp_dimm (rtx5080 + ddr5_rank_ndp_dimm over pcie5_x16), 4 NDP "
            "units; 512 prompt + 512 output tokens; routing preset mixtral_8x7b, seed 0; 8 "
            "sequences per cell, batch 1")


def _rows():
  out = []
  for i, (m, p) in enumerate(itertools.product(MODELS, POLICIES)):
    out.append({"model": m, "policy": p, "num_ndp_units": 4, "prefetch_budget": 1.0,
                "speedup_vs_monde": 0.5 + (i % 7) / 3, "speedup_vs_monde_ci95": 0.01,
                "e2e_latency_s_mean": 2.0 + i % 3, "lane_gpu_s": 1.0, "lane_ndp_lane_s": 0.8,
                "lane_link_to_gpu_s": 0.5, "lane_link_to_ndp_s": 0.1})
  return out


@pytest.fixture
def figures(monkeypatch):
  """The figures the plot functions save (drawn, before they are closed)."""
  seen = []
  save = plots._save  # pylint: disable=protected-access

  def keep(fig, path):
    fig.canvas.draw()
    seen.append((fig, fig.canvas.get_renderer()))
    return save(fig, path)

  monkeypatch.setattr(plots, "_save", keep)
  return seen


def _text_frame_box(t, renderer):
  """A rotated tick label as an axis-aligned box in its own (unrotated) frame:
  the anchor rotated by -angle, extended by the unrotated size per alignment
  (labels of one axis share their angle, so boxes compare exactly there --
  the display bounding boxes of slanted labels overlap even when the glyphs
  do not)."""
  angle = np.deg2rad(t.get_rotation())
  x, y = t.get_transform().transform(t.get_position())
  rot = t.get_rotation()
  t.set_rotation(0)
  bb = t.get_window_extent(renderer)
  t.set_rotation(rot)
  w, h = bb.width, bb.height
  c, s = np.cos(-angle), np.sin(-angle)
  u, v = c * x - s * y, s * x + c * y
  x0 = {"left": u, "center": u - w / 2, "right": u - w}[t.get_ha()]
  y0 = {"top": v - h, "center": v - h / 2, "bottom": v, "baseline": v,
        "center_baseline": v - h / 2}[t.get_va()]
  return (x0, y0, x0 + w, y0 + h)


def _tick_boxes(fig, renderer):
  for ax in fig.axes:
    if ax.get_visible():
      yield ax, [_text_frame_box(t, renderer) for t in ax.get_xticklabels()
                 if t.get_text()]


def _no_overlap(boxes):
  return not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                 for a, b in itertools.combinations(boxes, 2))


def test_speedup_bars_state_the_workload_and_labels_do_not_overlap(tmp_path, figures):
  path = plots.speedup_bars(_rows(), tmp_path / "s.png", "Speedup over MoNDE, 4 NDP units",
                            workload=WORKLOAD)
  title = plots.png_title(path)
  assert title.startswith("Speedup over MoNDE, 4 NDP units") and WORKLOAD in title
  (fig, renderer), = figures
  for _, boxes in _tick_boxes(fig, renderer):
    assert len(boxes) == len(MODELS) and _no_overlap(boxes)


def test_lane_breakdown_is_a_grid_with_readable_policy_names(tmp_path, figures):
  path = plots.lane_breakdown(_rows(), tmp_path / "l.png", workload=WORKLOAD)
  assert WORKLOAD in plots.png_title(path)
  (fig, renderer), = figures
  shown = [ax for ax in fig.axes if ax.get_visible()]
  assert len(shown) == len(MODELS)
  rows = {round(ax.get_position().y0, 3) for ax in shown}
  cols = {round(ax.get_position().x0, 3) for ax in shown}
  assert len(cols) == plots.GRID_COLUMNS and len(rows) == 3  # 5 models: 2 x 3 grid
  w, h = fig.get_size_inches()
  assert w < 2 * h  # not one very wide row
  for _, boxes in _tick_boxes(fig, renderer):
    assert len(boxes) == len(POLICIES) and _no_overlap(boxes)


def test_the_overlap_check_sees_overlap(tmp_path, figures):
  """The check above is not vacuous: unwrapped, unrotated long names collide."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(3, 2))
  ax.set_xticks(range(len(MODELS)), MODELS)
  fig.canvas.draw()
  boxes = [_text_frame_box(t, fig.canvas.get_renderer()) for t in ax.get_xticklabels()]
  plt.close(fig)
  assert not _no_overlap(boxes)


def test_wrap_label_keeps_names_readable():
  assert plots.wrap_label("mixtral-8x7b") == "mixtral-8x7b"
  lines = plots.wrap_label(MODELS[-1]).split("\n")
  assert len(lines) > 1 and all(len(ln) <= plots.LABEL_WIDTH_CHARS for ln in lines)
  assert "".join(lines) == MODELS[-1]
  assert plots.title_text("T", "") == "T"
  assert plots.title_text("T", WORKLOAD).replace("\n", " ") == "T " + WORKLOAD
