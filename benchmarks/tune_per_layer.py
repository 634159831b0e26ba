"""Per-layer ``tuned`` against ``tp_lb_prefetch`` on held-out sequences
(issue 15 items 1 and 3).

Per model: fits the per-layer knobs (:mod:`ndpsim.tune_layers`: one
prefetch-budget share and two balancer biases per MoE layer) through the
relaxed engine on a few training sequences (seed ``--train_seed``), runs a
random search with the same number of simulator evaluations on the same
training set, and a small grid over the scalar knobs (budget x GPU bias x NDP
bias, all layers alike); then scores ``tp_lb_prefetch``, the fit and the
random search's best *in hard mode* on held-out sequences (seed
``--heldout_seed``) at the evaluation lengths, with a bootstrap confidence
interval of the mean per-sequence gain, and the ``oracle`` lower bound on the
same sequences (how much any policy could gain at all).

Training sequences may be shorter than the held-out ones (``--train_output_len``):
the knobs act through the prompt's counts and the per-layer balance, which a
short decode already exercises, and the relaxed fit's cost grows with the
decode length.  Progress goes to stderr; the JSON (rewritten after every
model, so ``--resume`` skips the models done) and a plot go to ``--out``.

  python benchmarks/tune_per_layer.py --out docs/results/tune_per_layer

``--fit scored`` fits the learned residency score of ``scored`` instead
(:mod:`ndpsim.tune_scored`: weights of the prefill rate, decode rate, decode
recency and layer position, and the swap margin) and scores on held-out
sequences ``tp_lb_prefetch``, the fit, a random search of equal budget,
``tp_lb_adaptive`` (the hand-made decode re-ranking) and ``oracle``:

  python benchmarks/tune_per_layer.py --fit scored --out docs/results/tune_scored
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from ndpsim import costs, engine, tune_layers, tune_scored  # noqa: E402
from ndpsim.hw import system as system_mod  # noqa: E402
from ndpsim.study_config import DEFAULT_MODELS, DEFAULT_SYSTEM  # noqa: E402
from ndpsim.workload import models as M  # noqa: E402
from ndpsim.workload import routing as R  # noqa: E402

GRID = ((0.25, 0.5, 0.75, 1.0), (0.75, 1.0, 1.5), (0.75, 1.0, 1.5))


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def bootstrap_ci(x: np.ndarray, *, n: int = 10000, level: float = 0.95, seed: int = 0):
  """Percentile bootstrap CI of the mean of ``x``: (low, high)."""
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
  a = (1 - level) / 2
  return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _routing(model, seed, num_seqs, prompt_len, output_len, preset):
  spec = R.RoutingSpec(num_seqs=num_seqs, prompt_len=prompt_len, output_len=output_len,
                       num_layers=M.num_moe_layers(model), num_experts=model.num_experts,
                       top_k=model.top_k)
  r = R.generate(jax.random.PRNGKey(seed), spec,
                 R.preset(preset, model.num_experts, model.top_k))
  return jax.tree_util.tree_map(np.asarray, r)


def grid_points(L: int) -> np.ndarray:
  return np.stack([tune_layers.vector(L, rf, 1.0, gb, nb)
                   for rf in GRID[0] for gb in GRID[1] for nb in GRID[2]])


def run_model(system, model, a) -> dict:
  t0 = time.time()
  L = M.num_moe_layers(model)
  train = _routing(model, a.train_seed, a.num_train, a.prompt_len, a.train_output_len,
                   a.routing)
  held = _routing(model, a.heldout_seed, a.num_heldout, a.prompt_len, a.output_len,
                  a.routing)
  engine.validate(system[0], system[1], model, held.prefill_ids, held.decode_ids, 1)
  cfg = tune_layers.LayerTuneConfig(steps=a.steps, restarts=a.restarts)
  _log(f"  fitting {3 * L + 1} knobs: {cfg.steps} Adam steps x {cfg.restarts} restarts on "
       f"{a.num_train} training sequences of {a.prompt_len}+{a.train_output_len}")

  def step(ev):
    v = ", ".join(f"{x:.4g}" for x in ev["relaxed_e2e_s"])
    _log(f"    step {ev['step']}/{ev['steps']}: relaxed training e2e {v} s "
         f"({time.time() - t0:.0f} s)")

  start = None if a.start_fraction is None else tune_layers.vector(L, a.start_fraction)
  f = tune_layers.fit(system, model, train, cfg, start=start, progress=step)
  _log(f"  fit: training {f.train_e2e_s:.5g} s vs heuristic {f.heuristic_train_e2e_s:.5g} s"
       f" ({f.evaluations} evaluations; heuristic optimal: {f.heuristic_optimal}); "
       f"random search of {f.evaluations} ({time.time() - t0:.0f} s)")
  rv, re_, rn = tune_layers.random_search(system, model, train, f.evaluations,
                                          seed=a.train_seed)
  gp = grid_points(L)
  _log(f"  grid over the scalar knobs: {len(gp)} hard points ({time.time() - t0:.0f} s)")
  ge = tune_layers.hard_batch(system, model, train, gp)
  gb = int(np.argmin(ge))
  _log(f"  held-out: {a.num_heldout} sequences of {a.prompt_len}+{a.output_len}, hard "
       f"({time.time() - t0:.0f} s)")
  pts = np.stack([tune_layers.vector(L), f.vector, rv, gp[gb]])
  per = tune_layers.hard_per_sequence(system, model, held, pts, chunk=4)
  orc = np.asarray(engine.simulate(system, model, held, "oracle").e2e_s, np.float64)
  heur = per[0]
  gain = lambda x: heur / x - 1.0  # noqa: E731  speedup - 1, per sequence
  out = {"model": model.name, "num_moe_layers": L, "num_experts": model.num_experts}
  ctx_cap = float(costs.resident_capacity(system[0], system[1], model,
                                          a.prompt_len + a.output_len, 1))
  b = np.floor(ctx_cap + 1e-6)
  share = f.vector[1:1 + L] * (L / np.sum(f.vector[1:1 + L]))
  out["uniform_budget_experts_per_layer"] = float(b)
  out["tuned_budget_experts_per_layer"] = np.floor(b * share + 1e-3).tolist()
  out["tuned_layer_gpu_bias"] = f.vector[1 + L:1 + 2 * L].tolist()
  out["tuned_layer_ndp_bias"] = f.vector[1 + 2 * L:].tolist()
  out["tuned_resident_fraction"] = float(f.vector[0])
  out["training"] = {"tp_lb_prefetch_e2e_s": f.heuristic_train_e2e_s,
                     "tuned_e2e_s": f.train_e2e_s, "random_search_e2e_s": re_,
                     "scalar_grid_best_e2e_s": float(ge[gb]),
                     "scalar_grid_best_knobs": gp[gb][[0, 1 + L, 1 + 2 * L]].tolist(),
                     "heuristic_optimal": bool(f.heuristic_optimal),
                     "start_resident_fraction": a.start_fraction,
                     "iterates_best_e2e_s": float(min(f.history["hard_e2e_s"][1:])),
                     "evaluations": {"tuned": f.evaluations, "random_search": rn,
                                     "scalar_grid": len(gp)}}
  names = ("tp_lb_prefetch", "tuned", "random_search", "scalar_grid_best_on_training")
  out["heldout_mean_e2e_s"] = {n: float(np.mean(p)) for n, p in zip(names, per)}
  out["heldout_mean_e2e_s"]["oracle"] = float(np.mean(orc))
  out["heldout_gain_vs_tp_lb_prefetch"] = {}
  for n, p in zip(names[1:] + ("oracle",), list(per[1:]) + [orc]):
    g = gain(p)
    lo, hi = bootstrap_ci(g)
    out["heldout_gain_vs_tp_lb_prefetch"][n] = {"mean": float(np.mean(g)), "ci95": [lo, hi]}
  out["history"] = {"relaxed_e2e_s": f.history["relaxed_e2e_s"],
                    "hard_e2e_s": f.history["hard_e2e_s"]}
  out["wall_s"] = time.time() - t0
  return out


def run_model_scored(system, model, a) -> dict:
  """``--fit scored``: the learned residency score (module docstring)."""
  t0 = time.time()
  train = _routing(model, a.train_seed, a.num_train, a.prompt_len, a.train_output_len,
                   a.routing)
  held = _routing(model, a.heldout_seed, a.num_heldout, a.prompt_len, a.output_len,
                  a.routing)
  engine.validate(system[0], system[1], model, held.prefill_ids, held.decode_ids, 1)
  cfg = tune_scored.ScoredTuneConfig(steps=a.steps, restarts=a.restarts)
  _log(f"  fitting {tune_scored.N_KNOBS} score knobs: {cfg.steps} Adam steps x "
       f"{cfg.restarts} restarts on {a.num_train} training sequences of "
       f"{a.prompt_len}+{a.train_output_len}")

  def step(ev):
    v = ", ".join(f"{x:.4g}" for x in ev["relaxed_e2e_s"])
    _log(f"    step {ev['step']}/{ev['steps']}: relaxed training e2e {v} s "
         f"({time.time() - t0:.0f} s)")

  f = tune_scored.fit(system, model, train, cfg, progress=step)
  _log(f"  fit: training {f.train_e2e_s:.5g} s vs heuristic {f.heuristic_train_e2e_s:.5g} s"
       f" ({f.evaluations} evaluations; heuristic optimal: {f.heuristic_optimal}); "
       f"random search of {f.evaluations} ({time.time() - t0:.0f} s)")
  rv, re_, rn = tune_scored.random_search(system, model, train, f.evaluations,
                                          seed=a.train_seed, config=cfg)
  _log(f"  held-out: {a.num_heldout} sequences of {a.prompt_len}+{a.output_len}, hard "
       f"({time.time() - t0:.0f} s)")
  pts = np.stack([tune_scored.vector(), f.vector, rv])
  per = tune_scored.hard_per_sequence(system, model, held, pts, chunk=3)
  others = {n: np.asarray(engine.simulate(system, model, held, n).e2e_s, np.float64)
            for n in ("tp_lb_adaptive", "oracle")}
  heur = per[0]
  out = {"model": model.name, "num_moe_layers": M.num_moe_layers(model),
         "num_experts": model.num_experts, "knobs": list(tune_scored.KNOBS),
         "scored_vector": f.vector.tolist(), "random_search_vector": rv.tolist()}
  out["training"] = {"tp_lb_prefetch_e2e_s": f.heuristic_train_e2e_s,
                     "scored_e2e_s": f.train_e2e_s, "random_search_e2e_s": re_,
                     "heuristic_optimal": bool(f.heuristic_optimal),
                     "iterates_best_e2e_s": float(min(f.history["hard_e2e_s"][1:])),
                     "evaluations": {"scored": f.evaluations, "random_search": rn}}
  runs = {"scored": per[1], "random_search": per[2], **others}
  out["heldout_mean_e2e_s"] = {"tp_lb_prefetch": float(np.mean(heur)),
                               **{n: float(np.mean(p)) for n, p in runs.items()}}
  out["heldout_gain_vs_tp_lb_prefetch"] = {}
  for n, p in runs.items():
    g = heur / p - 1.0
    lo, hi = bootstrap_ci(g)
    out["heldout_gain_vs_tp_lb_prefetch"][n] = {"mean": float(np.mean(g)), "ci95": [lo, hi]}
  out["history"] = {k: f.history[k] for k in ("relaxed_e2e_s", "relaxed_grad", "starts",
                                              "hard_e2e_s", "hard_points")}
  out["wall_s"] = time.time() - t0
  return out


def plot_scored(doc: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ms = doc["models"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  names = ("scored", "random_search", "tp_lb_adaptive", "oracle")
  w = 0.2
  for j, n in enumerate(names):
    g = np.array([100 * m["heldout_gain_vs_tp_lb_prefetch"][n]["mean"] for m in ms])
    ci = np.array([[100 * v for v in m["heldout_gain_vs_tp_lb_prefetch"][n]["ci95"]]
                   for m in ms]).reshape(-1, 2)
    x = np.arange(len(ms)) + (j - 1.5) * w
    ax.bar(x, g, w, label=n, yerr=[g - ci[:, 0], ci[:, 1] - g])
  ax.set_xticks(range(len(ms)), [m["model"] for m in ms], rotation=15, fontsize=8)
  ax.set_ylabel("held-out speedup over tp_lb_prefetch, % (95% CI)")
  ax.legend(fontsize=7)
  k = len(ms[0]["knobs"])
  for j, m in enumerate(ms):
    bx.bar(np.arange(k) + (j - 1.5) * w, m["scored_vector"], w, label=m["model"])
  bx.set_xticks(range(k), ms[0]["knobs"], fontsize=8)
  bx.set_ylabel("fitted score weights (heuristic: 1, 0, 0, 0, 0.02)")
  bx.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def plot(doc: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ms = doc["models"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  names = ("tuned", "random_search", "scalar_grid_best_on_training", "oracle")
  w = 0.2
  for j, n in enumerate(names):
    g = [100 * m["heldout_gain_vs_tp_lb_prefetch"][n]["mean"] for m in ms]
    ci = np.array([[100 * v for v in m["heldout_gain_vs_tp_lb_prefetch"][n]["ci95"]]
                   for m in ms]).reshape(-1, 2)
    x = np.arange(len(ms)) + (j - 1.5) * w
    ax.bar(x, g, w, label=n, yerr=[np.asarray(g) - ci[:, 0], ci[:, 1] - np.asarray(g)])
  ax.axhline(5, ls=":", c="k", lw=0.8)
  ax.set_xticks(range(len(ms)), [m["model"] for m in ms], rotation=15, fontsize=8)
  ax.set_ylabel("held-out speedup over tp_lb_prefetch, % (95% CI)")
  ax.legend(fontsize=7)
  for m in ms:
    bx.plot(np.asarray(m["tuned_budget_experts_per_layer"])
            / max(m["uniform_budget_experts_per_layer"], 1), label=m["model"])
  bx.axhline(1, ls=":", c="k", lw=0.8)
  bx.set_xlabel("MoE layer")
  bx.set_ylabel("fitted budget / uniform budget")
  bx.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _report_scored(doc: dict, stem: pathlib.Path, jpath: pathlib.Path) -> int:
  plot_scored(doc, stem.with_suffix(".png"))
  print("| model | held-out gain: scored (95% CI) | random search, equal evals | "
        "tp_lb_adaptive | oracle bound | evals | heuristic optimal on training | "
        "fitted w_prefill, w_decode, w_recency, w_layer, margin |")
  print("|---|---|---|---|---|---|---|---|")
  for m in doc["models"]:
    g = m["heldout_gain_vs_tp_lb_prefetch"]
    t = m["training"]
    print(f"| {m['model']} | {g['scored']['mean']:+.2%} ({g['scored']['ci95'][0]:+.2%}, "
          f"{g['scored']['ci95'][1]:+.2%}) | {g['random_search']['mean']:+.2%} | "
          f"{g['tp_lb_adaptive']['mean']:+.2%} | {g['oracle']['mean']:+.2%} | "
          f"{t['evaluations']['scored']} | {'yes' if t['heuristic_optimal'] else 'no'} | "
          f"{', '.join(f'{x:.3g}' for x in m['scored_vector'])} |")
  _log(f"wrote {jpath} and {stem.with_suffix('.png')}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--fit", choices=("layers", "scored"), default="layers",
                 help="layers: tuned's per-layer knobs (ndpsim.tune_layers); scored: the "
                 "learned residency score of the scored policy (ndpsim.tune_scored)")
  p.add_argument("--models", default=",".join(DEFAULT_MODELS))
  p.add_argument("--system", default=DEFAULT_SYSTEM)
  p.add_argument("--num_ndp_units", type=int, default=4)
  p.add_argument("--routing", default="mixtral_8x7b")
  p.add_argument("--prompt_len", type=int, default=512)
  p.add_argument("--output_len", type=int, default=512, help="held-out decode tokens")
  p.add_argument("--train_output_len", type=int, default=64)
  p.add_argument("--num_train", type=int, default=2)
  p.add_argument("--num_heldout", type=int, default=8)
  p.add_argument("--train_seed", type=int, default=0)
  p.add_argument("--heldout_seed", type=int, default=1)
  p.add_argument("--steps", type=int, default=tune_layers.LayerTuneConfig().steps)
  p.add_argument("--restarts", type=int, default=tune_layers.LayerTuneConfig().restarts)
  p.add_argument("--start_fraction", type=float, default=None,
                 help="start the restarts at this uniform budget instead of the "
                 "heuristic's (which stays a candidate): tests that the annealing "
                 "reaches the optimum from off it")
  p.add_argument("--out", default="docs/results/tune_per_layer",
                 help="path stem: writes STEM.json and STEM.png")
  p.add_argument("--resume", action="store_true", help="skip models already in STEM.json")
  a = p.parse_args(argv)
  if a.train_seed == a.heldout_seed:
    p.error("--train_seed equals --heldout_seed: held-out sequences must differ")
  stem = pathlib.Path(a.out)
  stem.parent.mkdir(parents=True, exist_ok=True)
  jpath = stem.with_suffix(".json")
  s = system_mod.load_system(a.system, num_ndp_units=a.num_ndp_units)
  system = (s.spec, s.params)
  done = []
  if a.resume and jpath.exists():
    done = json.loads(jpath.read_text())["models"]
  names = [m.strip() for m in a.models.split(",") if m.strip()]
  workload = {k: getattr(a, k) for k in ("system", "num_ndp_units", "routing", "prompt_len",
                                         "output_len", "train_output_len", "num_train",
                                         "num_heldout", "train_seed", "heldout_seed",
                                         "steps", "restarts", "start_fraction", "fit")}
  for i, name in enumerate(names):
    if any(d["model"] == name for d in done):
      _log(f"[{i + 1}/{len(names)}] {name}: in {jpath}, skipped")
      continue
    _log(f"[{i + 1}/{len(names)}] {name}")
    if a.fit == "scored":
      done.append(run_model_scored(system, M.get_model(name), a))
      g = done[-1]["heldout_gain_vs_tp_lb_prefetch"]
      _log(f"  {name}: held-out gain scored {g['scored']['mean']:+.2%} "
           f"[{g['scored']['ci95'][0]:+.2%}, {g['scored']['ci95'][1]:+.2%}], random search "
           f"{g['random_search']['mean']:+.2%}, tp_lb_adaptive "
           f"{g['tp_lb_adaptive']['mean']:+.2%}, oracle bound {g['oracle']['mean']:+.2%} "
           f"({done[-1]['wall_s']:.0f} s)")
    else:
      done.append(run_model(system, M.get_model(name), a))
      g = done[-1]["heldout_gain_vs_tp_lb_prefetch"]
      _log(f"  {name}: held-out gain tuned {g['tuned']['mean']:+.2%} "
           f"[{g['tuned']['ci95'][0]:+.2%}, {g['tuned']['ci95'][1]:+.2%}], random search "
           f"{g['random_search']['mean']:+.2%}, oracle bound {g['oracle']['mean']:+.2%} "
           f"({done[-1]['wall_s']:.0f} s)")
    doc = {"workload": workload, "models": done,
           "gain": "per held-out sequence, e2e(tp_lb_prefetch) / e2e(policy) - 1, hard "
           "engine; mean and 95% percentile-bootstrap CI over the held-out sequences"}
    tmp = jpath.with_name(f".{jpath.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(jpath)
  doc = json.loads(jpath.read_text())
  if a.fit == "scored":
    return _report_scored(doc, stem, jpath)
  plot(doc, stem.with_suffix(".png"))
  print("| model | held-out gain: tuned (95% CI) | random search, equal evals | scalar grid "
        "best | oracle bound | evals tuned / grid | heuristic optimal on training | "
        "training: Adam iterates' best vs scalar grid best |")
  print("|---|---|---|---|---|---|---|---|")
  for m in doc["models"]:
    g = m["heldout_gain_vs_tp_lb_prefetch"]
    t = m["training"]
    print(f"| {m['model']} | {g['tuned']['mean']:+.2%} ({g['tuned']['ci95'][0]:+.2%}, "
          f"{g['tuned']['ci95'][1]:+.2%}) | {g['random_search']['mean']:+.2%} | "
          f"{g['scalar_grid_best_on_training']['mean']:+.2%} | {g['oracle']['mean']:+.2%} | "
          f"{t['evaluations']['tuned']} / {t['evaluations']['scalar_grid']} | "
          f"{'yes' if t['heuristic_optimal'] else 'no'} | "
          f"{min(m['history']['hard_e2e_s'][1:]) / t['scalar_grid_best_e2e_s'] - 1:+.2%} |")
  _log(f"wrote {jpath} and {stem.with_suffix('.png')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
