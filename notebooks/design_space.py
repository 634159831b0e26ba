# %% [markdown]
# # Design space: NDP units x link generation x DIMM data rate
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
SYSTEM, MODEL = "paper_rtx5080_ndp_dimm", "qwen3-30b-a3b"
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

# %%
values["wall_s"] = time.perf_counter() - T0
if OUT:
  with open(os.path.join(OUT, "values.json"), "w") as f:
    json.dump(values, f, indent=1)
print(f"notebook wall time {values['wall_s']:.0f} s")
