"""Hardware co-design under a cost (or power) budget: a Pareto front per model,
checked against a brute-force grid of equal cost (issue 15, item 2).

For every model and discrete choice (system preset = DIMM type, and NDP unit
count) it runs :func:`ndpsim.codesign.codesign` at K budgets spread over the
choice's cost range (one vmapped relaxed value-and-gradient call per step,
all budgets together), scores the projected candidates with the hard engine,
and keeps the non-dominated (cost, latency) points over all choices.  At
``--check`` budgets of the first choice it brute-forces a grid of MACs x link
bandwidth x DRAM rate x resident fraction (biases 1) with the hard engine and
reports the grid's fastest point within the same budget beside the
co-design's point.  Every latency is the hard engine's mean e2e over the
sequences.  Every point (co-design, preset, grid) also gets the hard run's
energy per output token (``codesign.energy_of``), and each model gets a
latency-vs-energy Pareto front over its co-design points.

    python3 benchmarks/codesign.py                       # writes docs/results/codesign.{json,png}
    python3 benchmarks/codesign.py --models=mixtral-8x7b --prompt_len=16 --output_len=4 --out=/tmp/cd
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ndpsim import codesign as C  # noqa: E402
from ndpsim import energy as E  # noqa: E402
from ndpsim.base import ConfigError  # noqa: E402
from ndpsim.hw import system as system_mod  # noqa: E402
from ndpsim.workload import models as M  # noqa: E402
from ndpsim.workload import routing as R  # noqa: E402


def _parser():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="mixtral-8x7b,deepseek-v2-lite",
                 help="comma-separated zoo models; default %(default)s")
  p.add_argument("--choices", default="paper_rtx5080_ndp_dimm:2,paper_rtx5080_ddr4_ndp_dimm:4",
                 help="comma-separated system_preset:num_ndp_units discrete choices; the "
                 "first is the one the grid checks; default %(default)s")
  p.add_argument("--budget_fractions", default="0.2,0.5,0.85",
                 help="budgets per choice, as fractions of its (cheapest, dearest) range")
  p.add_argument("--check", default="0.2,0.5,0.85",
                 help="budget fractions (a subset of --budget_fractions) of the first "
                 "choice at which the grid checks the co-design")
  p.add_argument("--kind", default="cost_usd", choices=C.BUDGET_KINDS)
  p.add_argument("--num_seqs", type=int, default=2)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--output_len", type=int, default=8)
  p.add_argument("--routing", default="mixtral_8x7b")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=C.CodesignConfig().steps)
  p.add_argument("--cache_dir", default="",
                 help="persistent JAX compilation cache folder (a rerun skips compiling)")
  p.add_argument("--out", default=str(ROOT / "docs" / "results" / "codesign"),
                 help="output path stem: writes STEM.json and STEM.png")
  return p


def _floats(s, name):
  try:
    v = [float(x) for x in s.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"--{name} is {s!r}; write comma-separated numbers") from None
  if not v or any(not 0 < x < 1 for x in v):
    raise ConfigError(f"--{name} is {s!r}; write fractions strictly between 0 and 1")
  return v


def _choices(text):
  out = []
  for c in text.split(","):
    preset, _, n = c.strip().partition(":")
    if not n.isdigit():
      raise ConfigError(f"--choices entry {c!r}; write system_preset:num_ndp_units, e.g. "
                        "paper_rtx5080_ndp_dimm:4")
    out.append((preset, int(n)))
  return out


def _grid_axes(bounds):
  return {"macs_per_cycle": np.geomspace(*bounds[0], 4),
          "link_bandwidth_gbps": np.geomspace(*bounds[1], 6),
          "dram_rate": np.geomspace(*bounds[2], 3),
          "resident_fraction": [0.0, 0.5, 1.0]}


def _uniform_best(res, k):
  """The fastest feasible uniformly projected candidate of budget k (what the
  co-design returned before the other projections), s."""
  h = res.history
  u = h["projections"].index("uniform")
  e = np.asarray(h["candidates_e2e_s"])[k, :, u]
  ok = np.asarray(h["candidates_feasible"])[k, :, u]
  return float(np.min(np.where(ok, e, np.inf)))


def _grid_check(a, name, choice, system, model, r, cp, m, res, budgets, fracs, checks, log,
                ep):
  """The grid of equal cost at the --check budgets: (check rows, path record)."""
  pts = C.grid_points(system, _grid_axes(C.Space().bounds(system[1])))
  t1 = time.time()
  e, ej = C.energy_of(system, model, r, pts, ep)
  log(f"  grid: {len(pts)} hard points (latency and energy) in {time.time() - t1:.0f} s")
  checked = []
  for f in checks:
    k = fracs.index(f)
    i, best = C.grid_best(cp, m, pts, e, budgets[k], a.kind)
    gap = float(res.e2e_s[k] / best - 1.0) if i >= 0 else float("nan")
    checked.append({"choice": choice, "budget": float(budgets[k]),
                    "codesign_e2e_s": float(res.e2e_s[k]), "grid_best_e2e_s": best,
                    "grid_points": int(len(pts)),
                    "grid_best_point": dict(zip(C.NAMES, map(float, pts[i]))) if i >= 0 else None,
                    "grid_best_spend": float(C.spend(cp, m, pts[i], a.kind)) if i >= 0 else None,
                    "codesign_vs_grid": gap, "within_1pct": bool(gap <= 0.01),
                    "projection": res.history["best_projection"][k],
                    "uniform_only_e2e_s": _uniform_best(res, k),
                    "codesign_evaluations": int(res.evaluations)})
    log(f"  check at {budgets[k]:.0f}: co-design {res.e2e_s[k]:.5g} s "
        f"({res.history['best_projection'][k]}; uniform projection alone "
        f"{_uniform_best(res, k):.5g} s) vs grid best {best:.5g} s ({gap:+.2%})")
  sp = np.asarray(C.spend(cp, m, pts, a.kind), np.float64)
  front = [{"point": dict(zip(C.NAMES, map(float, pts[i]))), "e2e_s": float(e[i]),
            "energy_per_token_j": float(ej[i]), "spend": float(sp[i])}
           for i in C.pareto(ej, e)]
  return checked, {"points": res.history["points"], "grid_points": pts.tolist(),
                   "grid_e2e_s": e.tolist(), "grid_energy_per_token_j": ej.tolist(),
                   "grid_spend": sp.tolist(), "grid_choice": choice,
                   "grid_energy_pareto": front}


def _rows(choice, cp, m, res, budgets, x0, e0, kind):
  out = [{"choice": choice, "budget": float(b), "feasible": bool(res.feasible[k]),
          "spend": float(res.spend[k]), "e2e_s": float(res.e2e_s[k]),
          "projection": res.history["best_projection"][k],
          "uniform_only_e2e_s": _uniform_best(res, k),
          "point": dict(zip(C.NAMES, map(float, res.points[k]))),
          "breakdown": {kk: float(v) for kk, v in C.breakdown(cp, m, res.points[k]).items()}}
         for k, b in enumerate(budgets)]
  return out + [{"choice": choice, "preset_point": True,
                 "spend": float(C.spend(cp, m, x0, kind)), "e2e_s": e0,
                 "point": dict(zip(C.NAMES, map(float, x0)))}]


def _add_energy(rows, system, model, r, ep, log):
  """Adds ``energy_per_token_j`` (and the energy run's e2e) to every row of one
  choice, from one :func:`codesign.energy_of` call over their points."""
  xs = np.array([[rw["point"][n] for n in C.NAMES] for rw in rows], np.float64)
  lat, ej = C.energy_of(system, model, r, xs, ep)
  for rw, t, e in zip(rows, lat, ej):
    if rw.get("feasible", True):
      rw["energy_per_token_j"] = float(e)
      if abs(t / rw["e2e_s"] - 1.0) > 1e-4:
        log(f"  warning: energy run's e2e {t:.6g} s != scored {rw['e2e_s']:.6g} s")
  log("  energy per token: " + ", ".join(f"{e:.4g}" for e in ej) + " J (last: the preset)")


def run_model(a, name, choices, fracs, checks, log):
  model = M.get_model(name)
  spec = R.RoutingSpec(num_seqs=a.num_seqs, prompt_len=a.prompt_len,
                       output_len=a.output_len, num_layers=M.num_moe_layers(model),
                       num_experts=model.num_experts, top_k=model.top_k)
  r = jax.tree_util.tree_map(np.asarray, R.generate(
      jax.random.PRNGKey(a.seed), spec, R.preset(a.routing, model.num_experts, model.top_k)))
  cfg = C.CodesignConfig(steps=a.steps, kind=a.kind)
  ctx = a.prompt_len + a.output_len
  rows, checked, path = [], [], None
  for ci, (preset, n) in enumerate(choices):
    s = system_mod.load_system(preset, num_ndp_units=n)
    system = (s.spec, s.params)
    cp = C.load_cost(s.spec.gpu_name, s.spec.ndp_name, s.spec.link_name)
    lo, hi = C.spend_range(system, model, ctx, cp, kind=a.kind)
    budgets = np.array([lo + f * (hi - lo) for f in fracs])
    t0 = time.time()
    log(f"{name} [{ci + 1}/{len(choices)}] {preset} x{n}: {len(budgets)} budgets "
        f"{', '.join(f'{b:.0f}' for b in budgets)} ({a.kind}), {cfg.steps} steps...")

    def prog(ev, t0=t0):
      if ev["step"] in (1, ev["steps"]) or ev["step"] % 6 == 0:
        log(f"  step {ev['step']}/{ev['steps']} ({time.time() - t0:.0f} s): relaxed e2e "
            + ", ".join(f"{v:.4g}" for v in ev["relaxed_e2e_s"]) + " s; spend "
            + ", ".join(f"{v:.0f}" for v in ev["spend"]))

    res = C.codesign(system, model, r, budgets, cp, cfg, progress=prog)
    m = C.machine(system, model, ctx)
    x0 = C.point_of(system)
    e0 = float(C.hard_latency(system, model, r, [x0])[0])
    log(f"  done in {time.time() - t0:.0f} s; hard e2e " +
        ", ".join(f"{v:.4g}" for v in res.e2e_s) + f" s; the preset itself {e0:.4g} s at "
        f"{float(C.spend(cp, m, x0, a.kind)):.0f}")
    ep = E.for_system(s)
    new = _rows(f"{preset}:{n}", cp, m, res, budgets, x0, e0, a.kind)
    _add_energy(new, system, model, r, ep, log)
    rows += new
    if ci == 0 and checks:
      checked, path = _grid_check(a, name, f"{preset}:{n}", system, model, r, cp, m, res,
                                  budgets, fracs, checks, log, ep)
  pts_ = [rw for rw in rows if rw.get("feasible", True) and not rw.get("preset_point")]
  front = C.pareto([rw["spend"] for rw in pts_], [rw["e2e_s"] for rw in pts_])
  efront = C.pareto([rw["energy_per_token_j"] for rw in pts_], [rw["e2e_s"] for rw in pts_])
  return {"model": name, "rows": rows, "pareto": [pts_[i] for i in front],
          "energy_pareto": [pts_[i] for i in efront], "checks": checked, "path": path}


def _cost_panel(ax, doc, mres):
  unit = "USD" if doc["workload"]["kind"] == "cost_usd" else "W"
  choices = sorted({rw["choice"] for rw in mres["rows"]})
  for j, ch in enumerate(choices):
    col = f"C{j}"
    rs = [rw for rw in mres["rows"] if rw["choice"] == ch and not rw.get("preset_point")
          and rw["feasible"]]
    ax.plot([rw["spend"] for rw in rs], [rw["e2e_s"] for rw in rs], "o", color=col,
            label=f"co-design {ch}")
    pp = [rw for rw in mres["rows"] if rw["choice"] == ch and rw.get("preset_point")]
    ax.plot([rw["spend"] for rw in pp], [rw["e2e_s"] for rw in pp], "*", ms=12, color=col,
            label=f"preset {ch} (tp_lb_prefetch)")
  f = mres["pareto"]
  ax.step([rw["spend"] for rw in f], [rw["e2e_s"] for rw in f], "k-", where="post", lw=1,
          label="Pareto front")
  for c in mres["checks"]:
    ax.plot([c["grid_best_spend"]], [c["grid_best_e2e_s"]], "kx", ms=9)
  ax.plot([], [], "kx", label="grid best at equal budget")
  ax.set_xlabel(f"system {doc['workload']['kind'].replace('_usd', '').replace('_w', '')} ({unit})")
  ax.set_ylabel("mean e2e latency, hard engine (s)")
  w = doc["workload"]
  ax.set_title(f"{mres['model']}: {w['num_seqs']} seqs of {w['prompt_len']}+"
               f"{w['output_len']} tokens", fontsize=10)


def _energy_panel(ax, mres):
  path = mres.get("path") or {}
  if path.get("grid_energy_per_token_j"):
    ax.plot(path["grid_energy_per_token_j"], path["grid_e2e_s"], ".", color="0.75", ms=3,
            label=f"grid {path['grid_choice']} (biases 1)")
  choices = sorted({rw["choice"] for rw in mres["rows"]})
  for j, ch in enumerate(choices):
    rs = [rw for rw in mres["rows"] if rw["choice"] == ch and "energy_per_token_j" in rw]
    for pre, mk, ms_, lab in ((False, "o", 6, "co-design"), (True, "*", 12, "preset")):
      sel = [rw for rw in rs if bool(rw.get("preset_point")) == pre]
      ax.plot([rw["energy_per_token_j"] for rw in sel], [rw["e2e_s"] for rw in sel], mk,
              ms=ms_, color=f"C{j}", label=f"{lab} {ch}")
  f = mres["energy_pareto"]
  ax.step([rw["energy_per_token_j"] for rw in f], [rw["e2e_s"] for rw in f], "k-",
          where="post", lw=1, label="co-design latency-energy front")
  ax.set_xlabel("energy per output token, hard engine (J)")
  ax.set_ylabel("mean e2e latency, hard engine (s)")
  ax.set_title(f"{mres['model']}: latency vs energy", fontsize=10)


def plot(doc, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ms = doc["models"]
  fig, axs = plt.subplots(2, len(ms), figsize=(6 * len(ms), 9), squeeze=False)
  for k, mres in enumerate(ms):
    _cost_panel(axs[0, k], doc, mres)
    if "energy_pareto" in mres:
      _energy_panel(axs[1, k], mres)
    for ax in axs[:, k]:
      ax.legend(fontsize=7)
      ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def print_tables(doc):
  """The Pareto-front and grid-check tables of a result document (Markdown)."""
  print("| model | choice | budget | spend | hard e2e s | MACs | link GB/s | DRAM rate | "
        "resident fraction | gpu_bias | ndp_bias | projection |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for mres in doc["models"]:
    for rw in mres["pareto"]:
      p = rw["point"]
      print(f"| {mres['model']} | {rw['choice']} | {rw['budget']:.0f} | {rw['spend']:.0f} | "
            f"{rw['e2e_s']:.4g} | {p['macs_per_cycle']:.0f} | {p['link_bandwidth_gbps']:.1f} | "
            f"{p['dram_rate']:.3f} | {p['resident_fraction']:.2f} | {p['gpu_bias']:.2f} | "
            f"{p['ndp_bias']:.2f} | {rw['projection']} |")
  print()
  print("| model | choice | budget | spend | hard e2e s | energy J/token | MACs | link GB/s | "
        "DRAM rate | resident fraction |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for mres in doc["models"]:
    for rw in mres.get("energy_pareto", []):
      p = rw["point"]
      print(f"| {mres['model']} | {rw['choice']} | {rw['budget']:.0f} | {rw['spend']:.0f} | "
            f"{rw['e2e_s']:.4g} | {rw['energy_per_token_j']:.4g} | {p['macs_per_cycle']:.0f} | "
            f"{p['link_bandwidth_gbps']:.1f} | {p['dram_rate']:.3f} | "
            f"{p['resident_fraction']:.2f} |")
  print()
  print("| model | choice | budget | co-design e2e s (projection) | uniform projection "
        "only e2e s | grid best e2e s (points) | co-design vs grid |")
  print("|---|---|---|---|---|---|---|")
  for mres in doc["models"]:
    for c in mres["checks"]:
      print(f"| {mres['model']} | {c['choice']} | {c['budget']:.0f} | "
            f"{c['codesign_e2e_s']:.5g} ({c['projection']}) | {c['uniform_only_e2e_s']:.5g} | "
            f"{c['grid_best_e2e_s']:.5g} ({c['grid_points']}) | {c['codesign_vs_grid']:+.2%} |")


def main(argv=None) -> int:
  a = _parser().parse_args(argv)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  try:
    fracs = _floats(a.budget_fractions, "budget_fractions")
    checks = _floats(a.check, "check") if a.check else []
    for f in checks:
      if f not in fracs:
        raise ConfigError(f"--check {f} is not one of --budget_fractions {fracs}; write a "
                          "subset")
    choices = _choices(a.choices)
  except ConfigError as e:
    print(f"codesign: {e}", file=sys.stderr)
    return 2
  if a.cache_dir:
    jax.config.update("jax_compilation_cache_dir", a.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  doc = {"command": "python3 benchmarks/codesign.py " + " ".join(
      x for x in (argv if argv is not None else sys.argv[1:]) if not x.startswith("--cache_dir")),
         "workload": {"models": a.models.split(","), "choices": a.choices, "kind": a.kind,
                      "num_seqs": a.num_seqs, "prompt_len": a.prompt_len,
                      "output_len": a.output_len, "routing": a.routing, "seed": a.seed,
                      "steps": a.steps, "budget_fractions": fracs, "check": checks,
                      "cost_file": str(C.cost_path("default").relative_to(ROOT)),
                      "projections": list(C.CodesignConfig().projections)},
         "models": []}
  for name in a.models.split(","):
    doc["models"].append(run_model(a, name.strip(), choices, fracs, checks, log))
    doc["wall_s"] = time.time() - t0
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
  plot(doc, out.with_suffix(".png"))
  print_tables(doc)
  log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in "
      f"{time.time() - t0:.0f} s")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
