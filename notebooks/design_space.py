# %% [markdown]
# # Design space: NDP units x link generation x DIMM data rate, and co-design
#
# One MoE model (Qwen3-30B-A3B, the paper's model) on the shipped platform
# (`paper_rtx5080_ndp_dimm`: RTX 5080 + DDR5 NDP-DIMMs), a few short sequences so
# that the whole notebook runs in about a minute on a laptop CPU (most of it XLA
# compilation).  Three questions:
#
# 1. How do the NDP-unit count, the GPU link generation and the DIMM data rate
#    trade off, for the paper's framework (`tp_lb_prefetch`) and its speedup
#    over MoNDE?
# 2. Which NDP compute budgets are Pareto-optimal in (latency, total NDP GFLOPS)?
# 3. How fast does the gradient tuner (`ndpsim.tune.fit`) converge, next to a
#    brute-force grid over the same knobs (`ndpsim.tune.grid`)?
# 4. Under a cost budget, which hardware and policy knobs does the co-design
#    (`ndpsim.codesign`) choose per DIMM type and unit count, and how does its
#    path compare with a grid of equal cost?
#
# **How the sweep is vectorised.** Every timing, bandwidth and clock is a traced
# leaf of `SystemParams`, so the (link x DIMM) grid is one stacked pytree and one
# `jax.vmap` call evaluates all of its points.  The NDP-unit count is *static*
# (`SystemSpec.num_ndp_units` fixes array shapes), so it cannot be vmapped: the
# sweep is a plain Python loop over unit counts 2..6 with **one vmapped call per
# count and policy** (each count compiles once).
#
# The text twin of this notebook is `notebooks/design_space.py` (same cells,
# `# %%` markers); `tests/test_notebook.py` runs it headless.

# %%
import functools
import json
import os
import time

import jax
import matplotlib
import numpy as np

if "DESIGN_SPACE_OUT" in os.environ:  # headless run (the test): no display
  matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["figure.dpi"] = 72  # keeps the saved notebook small

from ndpsim import base, config, engine, policies, tune  # noqa: E402
from ndpsim.policies import monde as monde_mod  # noqa: E402
from ndpsim.hw import ndp as ndp_mod  # noqa: E402
from ndpsim.hw import system as system_mod  # noqa: E402
from ndpsim.workload import models as M  # noqa: E402
from ndpsim.workload import routing as R  # noqa: E402

OUT = os.environ.get("DESIGN_SPACE_OUT")  # folder for figures + values.json (optional)
T0 = time.perf_counter()
values = {}


def save(fig, name):
  """Shows the figure in the notebook; in a headless run also writes a PNG."""
  if OUT:
    os.makedirs(OUT, exist_ok=True)
    fig.savefig(os.path.join(OUT, name), dpi=80)
  plt.show()


# %% [markdown]
# ## Workload
#
# 4 evaluation sequences of 64 prompt + 16 output tokens, routing preset
# `mixtral_8x7b` (calibrated to real traces) at `PRNGKey(0)`.  MoNDE's
# profiling batches (for its alpha auto-tuning) and the offline profile counts
# come from a separate set at `fold_in(key, 1)` (as in the experiment binary);
# the tuner trains on a third set at `fold_in(key, 2)` and
# is never scored on the evaluation set here.

# %%
# The headless test runs a smaller model through DESIGN_SPACE_MODEL (the same
# code paths; most of its time would otherwise be running Qwen3's 48 x 128 experts).
SYSTEM = "paper_rtx5080_ndp_dimm"
MODEL = os.environ.get("DESIGN_SPACE_MODEL", "qwen3-30b-a3b")
NUM_SEQS, PROMPT, OUTPUT = 4, 64, 16
# Unit counts 2..6 (each compiles once per policy); the headless test runs a
# subset through DESIGN_SPACE_UNITS (it must include 4, the tuner's platform).
UNITS = tuple(int(u) for u in os.environ.get("DESIGN_SPACE_UNITS", "2,3,4,5,6").split(","))

model = M.get_model(MODEL)
L, E, K = M.num_moe_layers(model), model.num_experts, model.top_k
rspec = R.RoutingSpec(num_seqs=NUM_SEQS, prompt_len=PROMPT, output_len=OUTPUT,
                      num_layers=L, num_experts=E, top_k=K)
rparams = R.preset("mixtral_8x7b", E, K)
key = jax.random.PRNGKey(0)


def gen(k, n=NUM_SEQS):
  r = R.generate(k, rspec, rparams)  # one compile for all three sets (same shape)
  return R.Routing(np.asarray(r.prefill_ids[:n], np.int32), None,
                   np.asarray(r.decode_ids[:n], np.int32), None)


evaluation = gen(key)
profile = gen(jax.random.fold_in(key, 1))
training = gen(jax.random.fold_in(key, 2), n=2)
profile_counts = np.zeros((L, E), np.float32)
for ids in (profile.prefill_ids, profile.decode_ids):
  for layer in range(L):
    profile_counts[layer] += np.bincount(ids[:, :, layer].reshape(-1), minlength=E)
print(f"{MODEL}: {L} MoE layers, {E} experts, top-{K}; "
      f"{M.expert_bytes_total(model) / 1e9:.1f} GB of experts")

# %% [markdown]
# ## Hardware axes
#
# * **Link** (GPU <-> host/NDP): per-direction line rates of the presets
#   `pcie4_x16` (31.5 GB/s) and `pcie5_x16` (63.0 GB/s); PCIe 6.0 x16 is
#   **derived**, not a preset: 64 GT/s x 16 lanes / 8 x 242/256 FLIT efficiency
#   = 121 GB/s (reference/hardware.md: "about 121 GB/s").  Protocol efficiency
#   and fixed per-copy costs are kept from the PCIe 5.0 preset (assumed).
# * **DIMM data rate** via the DRAM clock `tck_ns`: DDR5-4800 (the preset),
#   5600 and 6400.  The DRAM core timings are physical (ns), so the
#   cycle-valued ones (CL, tRCD, tRP, tRAS, tRTP, tRFC, tREFI, tFAW, tRRD_L,
#   tCCD_L) are rescaled to the same ns and rounded up to whole cycles (34-34-34
#   becomes 40-40-40 at 5600 and 46-46-46 at 6400, the JEDEC A bins); the
#   burst-bound tCCD_S / tRRD_S stay 8 cycles.  The DIMM's channel to the host
#   (`host_bus_bandwidth_gbps`) scales with the data rate.  Derived, not measured.

# %%
preset = system_mod.load_system(SYSTEM, 4)
LINKS = {"PCIe 4.0 x16": config.load("link", "pcie4_x16").params.bandwidth_gbps,
         "PCIe 5.0 x16": config.load("link", "pcie5_x16").params.bandwidth_gbps,
         "PCIe 6.0 x16 (derived)": 64 * 16 / 8 * 242 / 256}
DIMMS = {"DDR5-4800": 4800, "DDR5-5600": 5600, "DDR5-6400": 6400}
NS_TIMINGS = ("cl_cycles", "t_rcd_cycles", "t_rp_cycles", "t_ras_cycles", "t_rtp_cycles",
              "t_rfc_cycles", "t_refi_cycles", "t_faw_cycles", "t_rrd_l_cycles",
              "t_ccd_l_cycles")


def with_hardware(params, link_gbps=None, mts=None, macs=None):
  """SystemParams with the link rate, the DIMM data rate (MT/s) or the NDP MAC
  lanes replaced (None keeps the preset's)."""
  link, ndp = params.link, params.ndp
  if link_gbps is not None:
    link = base.replace(link, bandwidth_gbps=float(link_gbps))
  if mts is not None:
    d = ndp.dram
    tck = 2000.0 / mts  # ns per clock (two transfers per clock)
    scaled = {f: float(np.ceil(getattr(d, f) * d.tck_ns / tck - 1e-6)) for f in NS_TIMINGS}
    ndp = base.replace(ndp, dram=base.replace(d, tck_ns=tck, **scaled),
                       host_bus_bandwidth_gbps=ndp.host_bus_bandwidth_gbps * mts / 4800)
  if macs is not None:
    ndp = base.replace(ndp, macs_per_cycle=float(macs))
  return base.as_arrays(base.replace(params, link=link, ndp=ndp))


grid_points = [(ln, dn) for ln in LINKS for dn in DIMMS]
for mts in DIMMS.values():
  d = with_hardware(preset.params, mts=mts).ndp
  print(f"DDR5-{mts}: tCK {float(d.dram.tck_ns):.4f} ns, CL-tRCD-tRP "
        f"{int(d.dram.cl_cycles)}-{int(d.dram.t_rcd_cycles)}-{int(d.dram.t_rp_cycles)}, "
        f"NDP stream {float(ndp_mod.stream_bandwidth_gbps(preset.spec.ndp, d)):.0f} GB/s "
        "per DIMM")

# %% [markdown]
# ## The sweep: one vmapped call per (unit count, policy)
#
# `mean_e2e` is jitted with the system spec and the policy static; `jax.vmap`
# maps it over the stacked `SystemParams` of the 3 x 3 (link, DIMM) grid.
# `check=False` because the values are traced (the platform was validated when
# each unit count's preset was loaded).  The policy knobs are traced too, so
# MoNDE's alpha, auto-tuned per hardware point on profiling sequences as MoNDE
# does at deployment (`monde.autotune_alpha`), rides along in the same call.

# %%
@functools.partial(jax.jit, static_argnames=("ss", "policy"))
def mean_e2e(ss, stacked_params, policy, stacked_pparams, prefill_ids, decode_ids, counts):
  routing = R.Routing(prefill_ids, None, decode_ids, None)

  def one(sp, pp):
    r = engine.simulate((ss, sp), model, routing, policy, pp, profile_counts=counts,
                        check=False)
    return r.e2e_s.mean()

  return jax.vmap(one)(stacked_params, stacked_pparams)


def sweep(ss, points, policy, pparams=None):
  """Mean e2e at each hardware point; ``pparams``: one PolicyParams per point
  (defaults if None)."""
  pparams = pparams or [policies.PolicyParams()] * len(points)
  return np.asarray(mean_e2e(ss, base.stack(points), policy, base.stack(pparams),
                             evaluation.prefill_ids, evaluation.decode_ids,
                             profile_counts), np.float64)


def monde_params(ss, sp):
  """MoNDE's alpha (Eq. 6), auto-tuned as MoNDE does at deployment: on
  profiling batches (here the first two profile sequences) of this hardware."""
  fit = monde_mod.autotune_alpha((ss, sp), model, R.Routing(
      profile.prefill_ids[:2], None, profile.decode_ids[:2], None))
  return policies.PolicyParams(monde_alpha_prefill=fit["monde_alpha_prefill"],
                               monde_alpha_decode=fit["monde_alpha_decode"])


POLICIES = ("tp_lb_prefetch", "monde")
e2e = {p: np.zeros((len(UNITS), len(LINKS), len(DIMMS))) for p in POLICIES}
systems, alphas = {}, {}
t = time.perf_counter()
for i, n in enumerate(UNITS):
  systems[n] = system_mod.load_system(SYSTEM, n)  # checks the model fits n units
  pts = [with_hardware(systems[n].params, LINKS[ln], DIMMS[dn]) for ln, dn in grid_points]
  # One alpha per point (the tuning reuses one compiled program per unit count).
  mparams = [monde_params(systems[n].spec, pt) for pt in pts]
  alphas[n] = [(float(m.monde_alpha_prefill), float(m.monde_alpha_decode))
               for m in mparams]
  for p in POLICIES:  # ONE vmapped call over the 9 (link, DIMM) points
    e2e[p][i] = sweep(systems[n].spec, pts, p, mparams if p == "monde" else None
                      ).reshape(len(LINKS), len(DIMMS))
sweep_s = time.perf_counter() - t
for n, a in alphas.items():
  print(f"MoNDE alpha (prefill, decode), N={n}: " + ", ".join(
      f"{ln.split(' x16')[0]}/{dn}: {ap:.2f}, {ad:.2f}"
      for (ln, dn), (ap, ad) in zip(grid_points, a)))
speedup = e2e["monde"] / e2e["tp_lb_prefetch"]
print(f"{len(UNITS)} unit counts x {len(POLICIES)} policies x {len(grid_points)} points "
      f"in {sweep_s:.1f} s ({len(UNITS) * len(POLICIES)} compiled calls)")

# %%
hdr = "| N | link | " + " | ".join(DIMMS) + " |"
print("tp_lb_prefetch mean e2e s (speedup over monde)\n" + hdr)
print("|---|---|" + "---|" * len(DIMMS))
for i, n in enumerate(UNITS):
  for j, ln in enumerate(LINKS):
    cells = [f"{e2e['tp_lb_prefetch'][i, j, k]:.4f} ({speedup[i, j, k]:.2f}x)"
             for k in range(len(DIMMS))]
    print(f"| {n} | {ln} | " + " | ".join(cells) + " |")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
colors = ("tab:blue", "tab:orange", "tab:green")
styles = ("-", "--", ":")
for j, ln in enumerate(LINKS):
  for k, dn in enumerate(DIMMS):
    kw = dict(color=colors[j], ls=styles[k], marker="o", ms=3, label=f"{ln}, {dn}")
    axes[0].plot(UNITS, e2e["tp_lb_prefetch"][:, j, k], **kw)
    axes[1].plot(UNITS, speedup[:, j, k], **kw)
axes[0].set(xlabel="NDP units", ylabel="mean e2e latency, s",
            title=f"tp_lb_prefetch, {MODEL}")
axes[1].set(xlabel="NDP units", ylabel="speedup over MoNDE", title="speedup over monde")
axes[1].axhline(1.0, color="grey", lw=0.5)
for ax in axes:
  ax.set_xticks(UNITS)
axes[1].legend(fontsize=7, ncol=1, loc="best")
fig.tight_layout()
save(fig, "sweep.png")
values["sweep"] = {"units": list(UNITS), "links": LINKS, "dimms": DIMMS,
                   "e2e_s": {p: v.tolist() for p, v in e2e.items()},
                   "speedup_vs_monde": speedup.tolist(), "monde_alpha": alphas, "wall_s": sweep_s}

# %% [markdown]
# ## Pareto front: latency vs NDP compute
#
# NDP compute = units x MAC lanes x 2 FLOP x clock.  Per unit count, one vmapped
# call over 9 MAC-lane counts per DIMM (PCIe 5.0, DDR5-4800); 9 points, the
# same shape as the (link x DIMM) grid, so each call reuses that count's
# compiled `tp_lb_prefetch` program.  A configuration is on the front when no
# other one is both faster and has less NDP compute.

# %%
MACS = (16, 32, 48, 64, 96, 128, 192, 256, 512)
pareto_rows = []  # (units, macs, total GFLOPS, e2e s)
for n in UNITS:
  sp = systems[n]
  pts = [with_hardware(sp.params, macs=m) for m in MACS]
  lat = sweep(sp.spec, pts, "tp_lb_prefetch")
  for m, pt, e in zip(MACS, pts, lat):
    gflops = n * float(ndp_mod.peak_flops(sp.spec.ndp, pt.ndp)) / 1e9
    pareto_rows.append((n, m, gflops, float(e)))
pr = np.asarray(pareto_rows)
order = np.lexsort((pr[:, 3], pr[:, 2]))  # by compute, then latency
front, best = [], np.inf
for idx in order:
  if pr[idx, 3] < best - 1e-12:
    front.append(int(idx))
    best = pr[idx, 3]

def place_labels(ax, points, texts, fontsize=7):
  """Labels beside points, never overlapping: each tries a few offsets in turn
  (above-right, below-left, then further out with a leader line) and keeps the
  first whose box meets no label placed before it and stays inside the axes;
  a label with no free spot is left out.  Returns the number placed."""
  fig = ax.figure
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  box = ax.get_window_extent(renderer)
  spots = [(5, 5, "left", "bottom"), (-5, -5, "right", "top"), (12, 14, "left", "bottom"),
           (-12, -14, "right", "top"), (16, -4, "left", "top"), (-16, 6, "right", "bottom")]
  legend = ax.get_legend()
  placed = [legend.get_window_extent(renderer)] if legend else []
  first = len(placed)
  for (x, y), text in zip(points, texts):
    for dx, dy, ha, va in spots:
      far = abs(dx) > 8
      a = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha,
                      va=va, fontsize=fontsize,
                      arrowprops=dict(arrowstyle="-", lw=0.4, color="grey") if far else None)
      bb = a.get_window_extent(renderer).expanded(1.04, 1.15)
      inside = (bb.x0 >= box.x0 and bb.x1 <= box.x1 and bb.y0 >= box.y0
                and bb.y1 <= box.y1)
      if inside and not any(bb.overlaps(p) for p in placed):
        placed.append(bb)
        break
      a.remove()
  return len(placed) - first


fig, ax = plt.subplots(figsize=(8, 5))
sc = ax.scatter(pr[:, 2], pr[:, 3], c=pr[:, 0], cmap="viridis", s=22)
fr = pr[front]
ax.step(fr[:, 2], fr[:, 3], where="post", color="crimson", lw=1.2, label="Pareto front")
ax.scatter(fr[:, 2], fr[:, 3], facecolors="none", edgecolors="crimson", s=60)
ax.set(xscale="log", xlabel="total NDP compute, GFLOPS (units x MAC lanes)",
       ylabel="mean e2e latency, s",
       title="tp_lb_prefetch: latency vs NDP compute (labels: units x MAC lanes)")
ax.margins(x=0.08, y=0.1)
fig.colorbar(sc, ax=ax, label="NDP units")
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()
n_labelled = place_labels(ax, fr[:, 2:4], [f"{int(r[0])}x{int(r[1])}" for r in fr])
save(fig, "pareto.png")
print(f"{n_labelled} of {len(fr)} front points labelled (the rest have no free spot; "
      "all listed below)")
print("Pareto front (units x MAC lanes: GFLOPS, e2e s):")
for r in fr:
  print(f"  {int(r[0])} x {int(r[1]):3d}: {r[2]:7.0f} GFLOPS, {r[3]:.4f} s")
values["pareto"] = {"rows": pareto_rows, "front": [pareto_rows[i] for i in front]}

# %% [markdown]
# ## Tuner convergence beside the grid
#
# `tune.fit` (16 Adam steps on the relaxed engine, one forward+gradient call
# each, then hard scoring of every second iterate, the final one and the
# heuristic's point) against `tune.grid` (11 budgets x 5 GPU biases x 5 NDP
# biases = 275 hard evaluations), both on the 2 training sequences, 4 NDP units,
# PCIe 5.0, DDR5-4800.  x axis: evaluations spent (a relaxed call counts one, a
# hard point counts one); y: the best hard training latency found so far.  The
# tuner's iterates are hard-scored at the end; each is charged here at the point
# where it became available.  The grid runs in chunks of the tuner's
# hard-scoring size so that it reuses the tuner's compiled hard program.

# %%
sys4 = (systems[4].spec, systems[4].params)
cfg = tune.TuneConfig()
t = time.perf_counter()
fit = tune.fit(sys4, model, training, cfg)
fit_s = time.perf_counter() - t
n_hard = len(fit.history["hard_points"])
t = time.perf_counter()
grd = tune.grid(sys4, model, training, chunk=n_hard)
grid_s = time.perf_counter() - t

# Tuner: candidate j = [heuristic, iterates at steps hard_every, 2 hard_every, ...,
# the last step, the final update]; relaxed calls spent before it existed:
steps = [i + 1 for i in range(cfg.steps) if (i + 1) % cfg.hard_every == 0 or
         i == cfg.steps - 1]
relaxed_before = [0] + steps + [cfg.steps]
tuner_x = np.asarray(relaxed_before) + np.arange(1, n_hard + 1)
tuner_y = np.minimum.accumulate(np.asarray(fit.history["hard_e2e_s"]))
grid_y = np.minimum.accumulate(grd.e2e_s)
rng = np.random.default_rng(0)
rand_y = np.median([np.minimum.accumulate(rng.permutation(grd.e2e_s))
                    for _ in range(200)], axis=0)
heur = float(fit.history["hard_e2e_s"][0])
assert fit.evaluations == int(tuner_x[-1])

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
ax = axes[0]
ax.step(tuner_x, 1e3 * tuner_y, where="post", color="crimson", lw=1.5, marker="o", ms=3,
        label=f"tune.fit ({fit.evaluations} evals)")
ev = np.arange(1, grd.evaluations + 1)
ax.step(ev, 1e3 * grid_y, where="post", color="tab:blue",
        label=f"tune.grid, grid order ({grd.evaluations} evals)")
ax.step(ev, 1e3 * rand_y, where="post", color="tab:blue", ls="--", lw=0.8,
        label="tune.grid, random order (median of 200)")
ax.axhline(1e3 * heur, color="grey", lw=0.8, ls=":", label="tp_lb_prefetch (heuristic)")
ax.set(xscale="log", xlabel="evaluations", ylabel="best hard training e2e so far, ms",
       title="tuner vs grid: convergence")
ax.legend(fontsize=7)
ax = axes[1]
budgets = np.unique(grd.points[:, 0])
best_per_budget = [grd.e2e_s[grd.points[:, 0] == b].min() for b in budgets]
at_11 = [grd.e2e_s[(grd.points[:, 0] == b) & (grd.points[:, 1] == 1) &
                   (grd.points[:, 2] == 1)][0] for b in budgets]
ax.plot(budgets, 1e3 * np.asarray(best_per_budget), "o-", color="tab:blue", ms=3,
        label="grid: best over biases")
ax.plot(budgets, 1e3 * np.asarray(at_11), "s--", color="tab:cyan", ms=3,
        label="grid: biases 1, 1")
hp = np.asarray(fit.history["hard_points"])
ax.scatter(hp[:, 0], 1e3 * np.asarray(fit.history["hard_e2e_s"]), color="crimson", s=18,
           zorder=3, label="tuner iterates (hard)")
ax.scatter([fit.params.resident_fraction], [1e3 * fit.train_e2e_s], marker="*", s=150,
           color="crimson", edgecolors="k", zorder=4, label="tuned")
ax.set(xlabel="resident_fraction (prefetch budget)", ylabel="hard training e2e, ms",
       title="the same knobs, seen by both")
ax.legend(fontsize=7)
fig.tight_layout()
save(fig, "tuner_vs_grid.png")
kn = (fit.params.resident_fraction, fit.params.gpu_bias, fit.params.ndp_bias)
print(f"heuristic {heur:.4f} s; tuned {fit.train_e2e_s:.4f} s at knobs "
      f"({', '.join(f'{x:.3g}' for x in kn)}) after {fit.evaluations} evals "
      f"({fit_s:.1f} s); grid best {grd.train_e2e_s:.4f} s after {grd.evaluations} "
      f"evals ({grid_s:.1f} s)")
values["tuner"] = {"heuristic_e2e_s": heur, "tuned_e2e_s": fit.train_e2e_s,
                   "tuned_knobs": list(kn), "tuner_evaluations": fit.evaluations,
                   "grid_e2e_s": grd.train_e2e_s, "grid_evaluations": grd.evaluations,
                   "tuner_curve": [tuner_x.tolist(), tuner_y.tolist()],
                   "fit_s": fit_s, "grid_s": grid_s}

# %%
lat = e2e["tp_lb_prefetch"]
i2, i6, j5, k48 = 0, len(UNITS) - 1, 1, 0
print(f"units {UNITS[0]} -> {UNITS[-1]} (PCIe 5.0, DDR5-4800): "
      f"{lat[i2, j5, k48] / lat[i6, j5, k48]:.2f}x faster")
for i, n in ((i2, UNITS[0]), (i6, UNITS[-1])):
  print(f"N={n}: PCIe 4.0 -> 6.0 {lat[i, -1, k48] / lat[i, 0, k48] - 1:+.1%}, "
        f"DDR5-4800 -> 6400 {lat[i, j5, -1] / lat[i, j5, 0] - 1:+.1%}; speedup over "
        f"monde {speedup[i].min():.2f}-{speedup[i].max():.2f}x")

# %% [markdown]
# ## Reading the results
#
# * The unit count dominates: 2 -> 6 units is 1.93x faster (PCIe 5.0,
#   DDR5-4800), as more DIMMs add aggregate streaming bandwidth and MAC lanes
#   under tensor parallelism.  The link generation is next (PCIe 4.0 -> 6.0:
#   -22% at 2 units, -17% at 6: expert copies and the activation broadcast
#   share it); the DIMM data rate gives about -7% at every count.
# * The speedup over MoNDE (its alpha auto-tuned per hardware point) grows with
#   the unit count and the link (1.19-1.43x at 2 units, 1.36-1.66x at 6) and
#   shrinks with the DIMM rate (MoNDE's cold experts run on the same DIMMs).
#   MoNDE's tuned decode alpha is 0 from 3 units on (at batch 1 a copied
#   expert costs more than the NDP units' work on it), and its prefill alpha
#   falls as the link gets faster: the tuning undoes Eq. 6's bandwidth share.
#   These speedups are far below the paper's 2.41x: 64 prompt and 16 output
#   tokens, not 512 + 512 (README, "Compared with the paper").
# * The Pareto front mixes 2-, 3- and 5-unit configurations at low NDP compute
#   and holds only 5- and 6-unit ones above about 600 GFLOPS: past that, each
#   DIMM is bound by its DRAM streaming, and at equal GFLOPS more units with
#   fewer lanes win because they also add bandwidth.
# * Tuner vs grid on this workload: the grid's optimum is the heuristic's own
#   point (full prefetch budget, biases 1, 1), so `tune.fit` can only confirm
#   it -- it does, in 26 evaluations against the grid's 275.  The knobs matter
#   where the heuristic's start is off (the tuner tests use GPT-OSS 20B, whose
#   default budget is about 7% off the optimum; `docs/tuning.md`).

# %% [markdown]
# ## Co-design under a cost budget
#
# `ndpsim.codesign` chooses hardware and the `tuned` policy's knobs together:
# NDP MAC lanes per unit, link bandwidth, the DIMMs' data rate, the GPU memory
# bought for resident experts (`resident_fraction`) and the balancer's biases,
# minimising mean e2e latency under `cost_usd <= budget` (prices and their
# sources: `hw_configs/cost/default.json`, `docs/codesign.md`; most are
# assumed).  The discrete choices -- DIMM type (system preset) and unit count
# -- fix array shapes, so they are a Python loop with **one jitted, vmapped
# relaxed value-and-gradient call per choice and Adam step**, over the 3
# budgets of that choice together (20, 50, 85 % of its cost range,
# `codesign.spend_range`).  The iterates are projected exactly onto each budget
# and scored by the hard engine in one vmapped call; every returned point meets
# its budget.
#
# Workload, for time: the 2 training sequences cut to 32 prompt + 8 output
# tokens (prefill-heavy); 12 Adam steps.  Compilation dominates: each choice
# compiles the relaxed gradient and the hard scorer once.  The full run
# compares two NDP-DIMMs of DDR5 with four of DDR4, at similar prices; the
# headless test runs the first choice only (`DESIGN_SPACE_CHOICES`).
#
# Right panel: each budget's Adam iterates (one descent per start, the
# costed coordinates at 0.5, 0.15 and 0.85 of their ranges: latency is not
# convex in the hardware), hard-scored afterwards (one more
# call of the same compiled program), as spend vs latency, beside a grid on the
# first choice (4 MAC counts x 4 link bandwidths x 3 DRAM rates x 3 resident
# fractions, biases 1: 144 hard points, `codesign.grid_points`) and the grid's
# fastest point within each budget (`codesign.grid_best`).

# %%
from ndpsim import codesign as C  # noqa: E402

CHOICES = tuple((c.split(":")[0], int(c.split(":")[1])) for c in os.environ.get(
    "DESIGN_SPACE_CHOICES", "paper_rtx5080_ndp_dimm:2,paper_rtx5080_ddr4_ndp_dimm:4"
).split(","))
# 32 + 8 tokens, 12 Adam steps; the headless test shortens them through
# DESIGN_SPACE_CODESIGN ("prompt,output,steps"; the same code paths).
CD_PROMPT, CD_OUTPUT, CD_STEPS = (int(v) for v in os.environ.get(
    "DESIGN_SPACE_CODESIGN", "32,8,12").split(","))
FRACTIONS = (0.2, 0.5, 0.85)
cd_routing = R.Routing(training.prefill_ids[:, :CD_PROMPT], None,
                       training.decode_ids[:, :CD_OUTPUT], None)
cd_cfg = C.CodesignConfig(steps=CD_STEPS)
cd = {}
t = time.perf_counter()
for preset_name, n in CHOICES:
  s = system_mod.load_system(preset_name, n)
  system = (s.spec, s.params)
  cp = C.load_cost(s.spec.gpu_name, s.spec.ndp_name, s.spec.link_name)
  lo, hi = C.spend_range(system, model, CD_PROMPT + CD_OUTPUT, cp)
  cd_budgets = np.array([lo + f * (hi - lo) for f in FRACTIONS])
  res = C.codesign(system, model, cd_routing, cd_budgets, cp, cd_cfg)
  x0 = C.point_of(system)  # the preset's own point (tp_lb_prefetch's knobs)
  cd[f"{preset_name}:{n}"] = dict(
      system=system, cp=cp, m=C.machine(system, model, CD_PROMPT + CD_OUTPUT), res=res,
      preset_x=x0, preset_e2e_s=float(C.hard_latency(system, model, cd_routing, [x0])[0]))
codesign_s = time.perf_counter() - t

# The grid and the hard-scored path, on the first choice (same compiled hard program).
name0 = next(iter(cd))
c0 = cd[name0]
b0 = C.Space().bounds(c0["system"][1])
gpts = C.grid_points(c0["system"], {
    "macs_per_cycle": np.geomspace(*b0[0], 4), "link_bandwidth_gbps": np.geomspace(*b0[1], 4),
    "dram_rate": np.geomspace(*b0[2], 3), "resident_fraction": [0.0, 0.5, 1.0]})
t = time.perf_counter()
g_e2e = C.hard_latency(c0["system"], model, cd_routing, gpts)
g_spend = np.asarray(C.spend(c0["cp"], c0["m"], gpts), np.float64)
# Iterates per step: row k S + j = budget k, start j (S = len(cd_cfg.starts)).
path_x = np.asarray(c0["res"].history["points"])  # [steps + 1, K S, 6]
path_e2e = C.hard_latency(c0["system"], model, cd_routing,
                          path_x.reshape(-1, 6)).reshape(path_x.shape[:2])
path_spend = np.asarray(c0["res"].history["spend"])
S = len(cd_cfg.starts)
grid_s = time.perf_counter() - t

print(f"{len(CHOICES)} choices x {len(FRACTIONS)} budgets, {cd_cfg.steps} steps: "
      f"{codesign_s:.1f} s; grid ({len(gpts)} points) + path: {grid_s:.1f} s")
print("| choice | budget $ | spend $ | e2e ms | MACs | link GB/s | DRAM rate | "
      "resident | gpu_bias | ndp_bias |\n|---|---|---|---|---|---|---|---|---|---|")
cd_rows = []
for name, c in cd.items():
  r = c["res"]
  for k, bud in enumerate(r.budgets):
    cd_rows.append({"choice": name, "budget": float(bud), "feasible": bool(r.feasible[k]),
                 "spend": float(r.spend[k]), "e2e_s": float(r.e2e_s[k]),
                 "point": dict(zip(C.NAMES, map(float, r.points[k])))})
    p = r.points[k]
    print(f"| {name} | {bud:.0f} | {r.spend[k]:.0f} | {1e3 * r.e2e_s[k]:.1f} | {p[0]:.0f} | "
          f"{p[1]:.1f} | {p[2]:.3f} | {p[3]:.2f} | {p[4]:.2f} | {p[5]:.2f} |")
  ps = float(C.spend(c["cp"], c["m"], c["preset_x"]))
  c["preset_spend"] = ps
  print(f"| {name} preset | - | {ps:.0f} | {1e3 * c['preset_e2e_s']:.1f} | "
        + " | ".join(f"{v:.3g}" for v in c["preset_x"]) + " |")
ok = [r for r in cd_rows if r["feasible"]]
cd_front = [ok[i] for i in C.pareto([r["spend"] for r in ok], [r["e2e_s"] for r in ok])]
cd_checks = []
for k, bud in enumerate(c0["res"].budgets):
  i, best = C.grid_best(c0["cp"], c0["m"], gpts, g_e2e, bud)
  cd_checks.append({"budget": float(bud), "codesign_e2e_s": float(c0["res"].e2e_s[k]),
                 "grid_best_e2e_s": best, "grid_best_spend": float(g_spend[i]) if i >= 0
                 else None, "grid_best_point": dict(zip(C.NAMES, map(float, gpts[i])))
                 if i >= 0 else None})
  print(f"{name0} at ${bud:.0f}: co-design {1e3 * c0['res'].e2e_s[k]:.1f} ms, grid best "
        f"{1e3 * best:.1f} ms ({c0['res'].e2e_s[k] / best - 1:+.1%}) of {len(gpts)} points")
for name, c in cd.items():  # the fastest co-designed point costing no more than the preset
  r = c["res"]
  cheaper = r.feasible & (r.spend <= c["preset_spend"])
  if cheaper.any():
    k = int(np.argmin(np.where(cheaper, r.e2e_s, np.inf)))
    print(f"{name}: co-design {1e3 * r.e2e_s[k]:.1f} ms at ${r.spend[k]:.0f}, the preset "
          f"{1e3 * c['preset_e2e_s']:.1f} ms at ${c['preset_spend']:.0f} "
          f"({c['preset_e2e_s'] / r.e2e_s[k]:.2f}x)")
print("Pareto front: " + "; ".join(f"{r['choice']} ${r['spend']:.0f} {1e3 * r['e2e_s']:.1f} ms"
                                   for r in cd_front))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
ax = axes[0]
for j, (name, c) in enumerate(cd.items()):
  r = c["res"]
  ax.plot(r.spend[r.feasible], 1e3 * r.e2e_s[r.feasible], "o", color=f"C{j}",
          label=f"co-design, {name}")
  ax.plot([c["preset_spend"]], [1e3 * c["preset_e2e_s"]], "*", ms=13, color=f"C{j}",
          markeredgecolor="k", label=f"preset, {name}")
ax.step([r["spend"] for r in cd_front], [1e3 * r["e2e_s"] for r in cd_front], "k-",
        where="post", lw=1, label="Pareto front")
ax.set(xlabel="system cost, USD", ylabel="mean e2e latency (hard), ms",
       title=f"{MODEL}, {len(cd_routing.prefill_ids)} seqs of {CD_PROMPT}+{CD_OUTPUT} tokens")
ax.legend(fontsize=7)
ax = axes[1]
ax.scatter(g_spend, 1e3 * g_e2e, s=8, color="lightgrey", label=f"grid ({len(gpts)} points)")
gf = C.pareto(g_spend, g_e2e)
ax.step(g_spend[gf], 1e3 * g_e2e[gf], "-", where="post", color="grey", lw=0.8,
        label="grid's Pareto front")
for k, bud in enumerate(c0["res"].budgets):
  col = f"C{k + 2}"
  for j in range(S):  # one descent per start
    ax.plot(path_spend[:, k * S + j], 1e3 * path_e2e[:, k * S + j], ".-", color=col, lw=0.8,
            ms=3, label=f"Adam iterates, budget ${bud:.0f}" if j == 0 else None)
    ax.plot(path_spend[0, k * S + j], 1e3 * path_e2e[0, k * S + j], "o", color=col, mfc="none")
  ax.axvline(bud, color=col, ls=":", lw=0.8)
  ax.plot([c0["res"].spend[k]], [1e3 * c0["res"].e2e_s[k]], "*", ms=13, color=col,
          markeredgecolor="k")
  if cd_checks[k]["grid_best_spend"] is not None:
    ax.plot([cd_checks[k]["grid_best_spend"]], [1e3 * cd_checks[k]["grid_best_e2e_s"]], "x",
            ms=9, color=col)
ax.plot([], [], "ko", mfc="none", label="starts")
ax.plot([], [], "k*", ms=9, label="projected and returned")
ax.plot([], [], "kx", label="grid's best within the budget")
ax.set(xlabel="system cost, USD", ylabel="mean e2e latency (hard), ms",
       title=f"co-design path beside the grid, {name0}")
ax.legend(fontsize=7)
fig.tight_layout()
save(fig, "codesign.png")
values["codesign"] = {
    "choices": list(cd), "prompt_len": CD_PROMPT, "output_len": CD_OUTPUT,
    "steps": cd_cfg.steps, "rows": cd_rows, "front": cd_front,
    "presets": {k: {"spend": c["preset_spend"], "e2e_s": c["preset_e2e_s"]}
                for k, c in cd.items()},
    "evaluations": {k: c["res"].evaluations for k, c in cd.items()},
    "grid": {"choice": name0, "points": len(gpts), "checks": cd_checks},
    "path": {"spend": path_spend.tolist(), "hard_e2e_s": path_e2e.tolist(),
             "starts": list(cd_cfg.starts)},
    "codesign_s": codesign_s, "grid_s": grid_s}

# %% [markdown]
# ## Reading the co-design (on this cost model and this short workload)
#
# * Four DDR4 NDP-DIMMs beat two DDR5 ones at every budget of about the same
#   price: the whole Pareto front is DDR4 x 4 (181 ms at $1290 against DDR5
#   x 2's 249 ms at $1303 in the saved run).  More units add streaming
#   bandwidth and lanes; DDR4 is cheaper per GB.
# * At no more than a preset's own cost, the co-designed point is 1.27-1.30x
#   faster than the preset's (MAC lanes 128 -> 559-799 and a DRAM rate near the
#   top of its range: 32 + 8 tokens is prefill-heavy and MAC-bound on the
#   DIMMs).  GPU memory for resident experts is bought last
#   (`resident_fraction` 0-0.04 at the lowest budgets, 0.63-0.74 at the top);
#   the link falls to 10-12 GB/s at the lowest.  The biases stay within
#   0.88-1.11.
# * The grid of equal cost (DDR5 x 2) is within 0.2 % and 2.0 % of the
#   co-design at the middle and top budgets, but 7.7 % faster at the lowest
#   ($1303: 231 ms against 249 ms).  Every figure rests on assumed prices
#   (`docs/codesign.md`).

# %%
values["wall_s"] = time.perf_counter() - T0
if OUT:
  with open(os.path.join(OUT, "values.json"), "w") as f:
    json.dump(values, f, indent=1)
print(f"notebook wall time {values['wall_s']:.0f} s")
