"""Gradient-based tuning of the ``tuned`` policy's continuous knobs.

:func:`fit` minimises the *relaxed* mean end-to-end latency over a vmapped
batch of training sequences with optax Adam, in a bounded parameterisation
(``resident_fraction = sigmoid(u0)``, ``gpu_bias = exp(u1)``,
``ndp_bias = exp(u2)``), annealing the temperatures from smooth to sharp; it
then scores the visited iterates (and the heuristic's own point, so the
result is never worse on the training set than ``tp_lb_prefetch``) with the
*hard* engine and keeps the best.  :func:`grid` is the brute-force baseline
over the same knobs.

Evaluation counts: one relaxed forward+gradient call on the training batch
counts as one evaluation, one hard forward call at one parameter point counts
as one (a vmapped call at K points counts K).  ``FitResult.evaluations`` and
``GridResult.evaluations`` report them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndpsim import engine, policies
from ndpsim.policies.base import PolicyParams

KNOBS = ("resident_fraction", "gpu_bias", "ndp_bias")


@dataclasses.dataclass(frozen=True)
class TuneConfig:
  """steps: Adam steps (one relaxed forward+grad each).  lr: Adam step size
  per unconstrained coordinate (logit of resident_fraction, log gpu_bias,
  log ndp_bias): the balancer is calibrated at bias 1 and its makespan is
  sharply curved there, so the biases move in smaller steps.  temperature_s: (start, end) of the geometric
  annealing of the time temperature, s.  rank_temperature: (start, end) of
  the soft top-M temperature, ranks.  hard_every: score the iterate with the
  hard engine every this many steps (and the last one).  start: initial
  knobs (None: resident_fraction 0.5, biases 1)."""
  steps: int = 16
  lr: tuple = (0.25, 0.02, 0.02)
  temperature_s: tuple = (4e-5, 5e-6)
  rank_temperature: tuple = (3.0, 0.5)
  hard_every: int = 2
  start: tuple | None = None


class FitResult(NamedTuple):
  params: PolicyParams     # best knobs by hard training latency
  train_e2e_s: float       # hard mean e2e on the training set at ``params``
  evaluations: int         # relaxed forward+grad calls + hard point evaluations
  history: dict            # per step: knobs, relaxed loss, temperatures; hard scores


class GridResult(NamedTuple):
  params: PolicyParams     # grid point with the lowest hard training latency
  train_e2e_s: float
  evaluations: int
  points: np.ndarray       # [K, 3] knob values
  e2e_s: np.ndarray        # [K] hard mean e2e on the training set


def knobs_of(u) -> tuple:
  """Unconstrained u [3] -> (resident_fraction, gpu_bias, ndp_bias)."""
  return jax.nn.sigmoid(u[0]), jnp.exp(u[1]), jnp.exp(u[2])


def unconstrain(resident_fraction, gpu_bias, ndp_bias) -> np.ndarray:
  rf = float(np.clip(resident_fraction, 1e-3, 1 - 1e-3))
  return np.array([math.log(rf / (1 - rf)), math.log(gpu_bias), math.log(ndp_bias)],
                  np.float32)


def with_knobs(base_params: PolicyParams, k) -> PolicyParams:
  return dataclasses.replace(base_params, resident_fraction=k[0], gpu_bias=k[1],
                             ndp_bias=k[2])


def _mean_e2e(ss, sp, model, pre, dec, params, batch_size, relaxed):
  r = engine.simulate_core(ss, sp, model, policies.get("tuned"), params, pre, dec, None,
                           batch_size, relaxed=relaxed)
  return jnp.mean(r.e2e_s)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch_size"))
def _hard_points(ss, sp, model, pre, dec, pts, batch_size):
  f = lambda k: _mean_e2e(ss, sp, model, pre, dec, with_knobs(PolicyParams(), k),
                          batch_size, False)
  return jax.vmap(f)(pts)


@functools.partial(jax.jit, static_argnames=("ss", "model", "batch_size"))
def _relaxed_value_grad(ss, sp, model, pre, dec, u, temp, rank_temp, batch_size):
  def loss(u):
    pp = with_knobs(PolicyParams(temperature_s=temp, rank_temperature=rank_temp),
                    knobs_of(u))
    return _mean_e2e(ss, sp, model, pre, dec, pp, batch_size, True)
  return jax.value_and_grad(loss)(u)


def _ids(routing):
  return (jnp.asarray(routing.prefill_ids, jnp.int32),
          jnp.asarray(routing.decode_ids, jnp.int32))


def hard_batch(system, model, routing, points, batch_size=1):
  """Hard mean e2e of ``tuned`` at each of K knob points [K, 3] (one vmapped,
  cached compile per shape)."""
  pre, dec = _ids(routing)
  out = _hard_points(system[0], system[1], model, pre, dec,
                     jnp.asarray(points, jnp.float32), batch_size)
  return np.asarray(out, np.float64)


def fit(system, model, routing, config: TuneConfig = TuneConfig(), *,
        batch_size: int = 1, reference: tuple = (1.0, 1.0, 1.0),
        progress=None) -> FitResult:
  """Fits the ``tuned`` knobs on ``routing`` (training sequences).

  ``reference``: the heuristic's own knobs (``tp_lb_prefetch`` defaults),
  scored in hard mode alongside the iterates.  ``progress``: called after each
  Adam step with ``{"step", "steps", "relaxed_e2e_s", "knobs"}`` (knobs by
  name, before the step's update).
  """
  c = config
  engine.validate(system[0], system[1], model, routing.prefill_ids, routing.decode_ids,
                  batch_size)
  start = c.start or (0.5, 1.0, 1.0)
  u = jnp.asarray(unconstrain(*start))
  n = max(c.steps - 1, 1)
  temps = [c.temperature_s[0] * (c.temperature_s[1] / c.temperature_s[0]) ** (i / n)
           for i in range(c.steps)]
  ranks = [c.rank_temperature[0] * (c.rank_temperature[1] / c.rank_temperature[0])
           ** (i / n) for i in range(c.steps)]

  pre, dec = _ids(routing)
  vg = lambda u, t, r: _relaxed_value_grad(system[0], system[1], model, pre, dec, u, t, r,
                                           batch_size)
  opt = optax.adam(1.0)  # unit step; per-coordinate step sizes below
  lr = jnp.asarray(c.lr, jnp.float32)
  st = opt.init(u)
  scale = None
  hist = {"knobs": [], "relaxed_e2e_s": [], "temperature_s": temps, "rank_temperature": ranks}
  candidates = [np.asarray(reference, np.float32)]
  evals = 0
  for i in range(c.steps):
    val, g = vg(u, jnp.float32(temps[i]), jnp.float32(ranks[i]))
    evals += 1
    hist["knobs"].append([float(x) for x in knobs_of(u)])
    hist["relaxed_e2e_s"].append(float(val))
    if progress is not None:
      progress({"step": i + 1, "steps": c.steps, "relaxed_e2e_s": float(val),
                "knobs": dict(zip(KNOBS, hist["knobs"][-1]))})
    scale = scale or float(val)
    if (i + 1) % c.hard_every == 0 or i == c.steps - 1:
      candidates.append(np.asarray([float(x) for x in knobs_of(u)], np.float32))
    upd, st = opt.update(g / scale, st, u)
    u = optax.apply_updates(u, lr * (1.0 - 0.75 * i / n) * upd)  # linear decay
  candidates.append(np.asarray([float(x) for x in knobs_of(u)], np.float32))
  pts = np.stack(candidates)
  scores = hard_batch(system, model, routing, pts, batch_size=batch_size)
  evals += len(pts)
  best = int(np.argmin(scores))
  hist["hard_points"] = pts.tolist()
  hist["hard_e2e_s"] = scores.tolist()
  k = pts[best]
  return FitResult(params=PolicyParams(resident_fraction=float(k[0]), gpu_bias=float(k[1]),
                                       ndp_bias=float(k[2])),
                   train_e2e_s=float(scores[best]), evaluations=evals, history=hist)


def hard_many(system, model, routing, points, *, batch_size: int = 1, chunk: int = 64):
  """:func:`hard_batch` over any number of points, in padded chunks of
  ``chunk`` (one compile)."""
  pts = np.asarray(points, np.float32)
  out = []
  for i in range(0, len(pts), chunk):
    blk = pts[i:i + chunk]
    pad = np.concatenate([blk, np.repeat(blk[-1:], chunk - len(blk), 0)])
    out.append(hard_batch(system, model, routing, pad, batch_size=batch_size)[:len(blk)])
  return np.concatenate(out)


DEFAULT_GRID = (tuple(np.round(np.linspace(0.0, 1.0, 11), 2)),
                (0.5, 0.75, 1.0, 1.5, 2.0), (0.5, 0.75, 1.0, 1.5, 2.0))


def grid(system, model, routing, axes=DEFAULT_GRID, *, batch_size: int = 1,
         chunk: int = 64) -> GridResult:
  """Brute force over the product of ``axes`` (resident_fraction, gpu_bias,
  ndp_bias) with the hard engine; one evaluation per point."""
  pts = np.array(np.meshgrid(*axes, indexing="ij"), np.float32).reshape(3, -1).T
  e = hard_many(system, model, routing, pts, batch_size=batch_size, chunk=chunk)
  b = int(np.argmin(e))
  k = pts[b]
  return GridResult(params=PolicyParams(resident_fraction=float(k[0]), gpu_bias=float(k[1]),
                                        ndp_bias=float(k[2])),
                    train_e2e_s=float(e[b]), evaluations=len(pts), points=pts, e2e_s=e)


def evaluate(system, model, routing, params: PolicyParams, policy: str = "tuned",
             batch_size: int = 1) -> float:
  """Hard mean e2e of ``policy`` at ``params`` on (held-out) ``routing``."""
  r = engine.simulate(system, model, routing, policy, params, batch_size=batch_size)
  return float(np.mean(np.asarray(r.e2e_s, np.float64)))


def compare(system, model, train, test, config: TuneConfig = TuneConfig(), *,
            batch_size: int = 1, progress=None) -> dict:
  """Tuner vs heuristic vs grid: fitted on ``train``, scored (hard) on ``test``.

  Returns held-out mean e2e of ``tp_lb_prefetch`` (its default knobs),
  ``tuned``, the grid point best on ``train`` and the grid point best on
  ``test`` (an upper bound on what the grid can reach), evaluation counts and
  the fitted knobs (lists in :data:`KNOBS` order); ``progress``: :func:`fit`'s.
  """
  f = fit(system, model, train, config, batch_size=batch_size, progress=progress)
  g = grid(system, model, train, batch_size=batch_size)
  kn = lambda p: [p.resident_fraction, p.gpu_bias, p.ndp_bias]  # noqa: E731
  heur, tuned, grid_train = hard_batch(system, model, test,
                                       [[1.0, 1.0, 1.0], kn(f.params), kn(g.params)],
                                       batch_size=batch_size)
  held = hard_many(system, model, test, g.points, batch_size=batch_size)
  b = int(np.argmin(held))
  return {"model": model.name, "heldout_e2e_s": {
              "tp_lb_prefetch": heur, "tuned": tuned, "grid_best_on_train": grid_train,
              "grid_best_on_heldout": float(held[b])},
          "tuned_vs_heuristic": tuned / heur - 1.0,
          "tuned_vs_grid_best": tuned / float(held[b]) - 1.0,
          "evaluations": {"tuner": f.evaluations, "grid": g.evaluations},
          "knobs": {"tuned": kn(f.params), "grid_best_on_train": kn(g.params),
                    "grid_best_on_heldout": g.points[b].tolist()},
          "history": f.history}


DEFAULT_CLI_MODELS = ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite",
                      "qwen1.5-moe-a2.7b")


def _cli_parser():
  import argparse  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(
      prog="python -m ndpsim.tune",
      description="Tuner vs heuristic vs grid per model: `tuned` is fitted on training "
      "sequences (seed --train_seed) and every latency printed is a held-out hard-mode "
      "mean over other sequences (seed --heldout_seed).")
  p.add_argument("--models", default=",".join(DEFAULT_CLI_MODELS),
                 help="comma-separated zoo names or paths (model JSON, HuggingFace "
                 "config.json or its folder); default %(default)s")
  p.add_argument("--system", default="paper_rtx5080_ndp_dimm",
                 help="system preset name or path; default %(default)s")
  p.add_argument("--num_ndp_units", type=int, default=None,
                 help="NDP units (default: the preset's)")
  p.add_argument("--num_seqs", type=int, default=2,
                 help="sequences in the training set and in the held-out set; default 2")
  p.add_argument("--prompt_len", type=int, default=128, help="prompt tokens; default 128")
  p.add_argument("--output_len", type=int, default=16, help="output tokens; default 16")
  p.add_argument("--routing", default="mixtral_8x7b",
                 help="routing preset; default %(default)s")
  p.add_argument("--train_seed", type=int, default=0, help="training routing seed")
  p.add_argument("--heldout_seed", type=int, default=1, help="held-out routing seed")
  p.add_argument("--steps", type=int, default=TuneConfig().steps,
                 help="Adam steps of the fit; default %(default)s")
  p.add_argument("--allow_implausible", action="store_true",
                 help="accept hardware values outside their plausible range (never "
                 "outside the range the engine can represent)")
  p.add_argument("--out", default=None, metavar="PATH",
                 help="also write the result as JSON to PATH: per model the knobs by "
                 "name (tuned, grid best on training / held-out), the held-out mean "
                 "e2e latencies, evaluations, and the workload")
  return p


def knobs_by_name(values) -> dict[str, float]:
  """[resident_fraction, gpu_bias, ndp_bias] -> {name: value}."""
  return {k: float(f"{float(v):.7g}") for k, v in zip(KNOBS, values)}  # float32 digits


def result_document(workload: dict, results: list[dict]) -> dict:
  """The ``--out`` JSON: the workload and, per model, the knobs by name and the
  held-out mean e2e latencies of :func:`compare` (history left out)."""
  models = []
  for c in results:
    models.append({
        "model": c["model"],
        "knobs": {k: knobs_by_name(v) for k, v in c["knobs"].items()},
        "heldout_mean_e2e_s": {k: float(v) for k, v in c["heldout_e2e_s"].items()},
        "tuned_vs_heuristic": float(c["tuned_vs_heuristic"]),
        "tuned_vs_grid_best_on_heldout": float(c["tuned_vs_grid_best"]),
        "evaluations": c["evaluations"], "wall_s": c.get("wall_s")})
  return {"workload": workload, "models": models,
          "heldout_mean_e2e_s": "mean end-to-end latency, s, of the hard engine over the "
          "held-out sequences (seed heldout_seed), never the training ones (seed "
          "train_seed): tp_lb_prefetch at its default knobs, tuned at the knobs fitted "
          "on training, the grid point best on training, and the grid point best on "
          "the held-out set itself (a bound on what the grid can reach, not a fair "
          "held-out number)"}


class _CliError(Exception):
  """A bad ``python -m ndpsim.tune`` input: one line on stderr, exit 2."""


def _main(argv=None) -> int:
  import sys  # pylint: disable=import-outside-toplevel
  a = _cli_parser().parse_args(argv)
  try:
    s, models, out = _check_cli_args(a)
    cfg = dataclasses.replace(TuneConfig(), steps=a.steps)
    workload = {"system": a.system, "num_ndp_units": int(s.spec.num_ndp_units),
                "routing": a.routing, "prompt_len": a.prompt_len,
                "output_len": a.output_len, "num_seqs_training": a.num_seqs,
                "num_seqs_heldout": a.num_seqs, "train_seed": a.train_seed,
                "heldout_seed": a.heldout_seed, "steps": a.steps, "batch_size": 1}
    _print_cli_header(a, s)
    done: list[dict] = []
    for i, model in enumerate(models):
      done.append(_cli_compare(a, s, model, cfg, f"[{i + 1}/{len(models)}]"))
      if out is not None:  # after every model, so that an interrupted run keeps some
        _write_cli_out(out, a.out, result_document(workload, done))
  except _CliError as e:
    print(f"ndpsim.tune: {e}", file=sys.stderr)
    return 2
  if out is not None:
    print(f"wrote {out}", file=sys.stderr)
  return 0


def _check_cli_args(a):
  """(system preset, model specs, ``--out`` path or None) of the parsed
  arguments; _CliError naming the flag otherwise."""
  from ndpsim.base import ConfigError  # pylint: disable=import-outside-toplevel
  from ndpsim.hw import system as system_mod  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import model_io  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import routing as R  # pylint: disable=import-outside-toplevel
  for name in ("num_seqs", "prompt_len", "output_len", "steps"):
    if getattr(a, name) < 1:
      raise _CliError(f"--{name} is {getattr(a, name)}; write a positive integer")
  if a.train_seed == a.heldout_seed:
    raise _CliError("--train_seed equals --heldout_seed; held-out sequences must differ "
                    "from the training ones: write two different seeds")
  try:
    s = system_mod.load_system(a.system, num_ndp_units=a.num_ndp_units,
                               allow_implausible=a.allow_implausible)
    models = [model_io.model_from_any(m.strip()) for m in a.models.split(",") if m.strip()]
    if not models:
      raise _CliError("--models is empty; write at least one model name or path")
    for m in models:
      R.preset(a.routing, m.num_experts, m.top_k)
  except ConfigError as e:
    raise _CliError(str(e).splitlines()[0]) from None
  out = pathlib.Path(a.out) if a.out else None
  if out is not None and (out.is_dir() or not out.parent.is_dir()):
    raise _CliError(f"--out: {a.out!r} is " + ("a folder" if out.is_dir() else
                                                "in a folder that does not exist")
                    + "; write a file path in an existing folder, e.g. --out=tune.json")
  return s, models, out


def _print_cli_header(a, s) -> None:
  """The workload line and the table header on stdout."""
  print(f"# {s.spec.num_ndp_units} NDP units on {a.system}; {a.num_seqs} training "
        f"(seed {a.train_seed}) and {a.num_seqs} held-out (seed {a.heldout_seed}) "
        f"sequences of {a.prompt_len}+{a.output_len} tokens, routing {a.routing}; "
        "latencies are held-out hard-mode means, s: every latency column is the mean "
        "e2e over the held-out sequences, which no fit saw; 'grid, best on held-out' "
        "picks its point on those sequences (a bound, not a fair comparison)")
  print("| model | held-out s: tp_lb_prefetch | held-out s: tuned | held-out s: grid, "
        "best on training | held-out s: grid, best on held-out | tuned vs heuristic | "
        "tuned vs grid (held-out best) | evals tuner / grid | tuned knobs (fitted on "
        "training) | wall s |")
  print("|---|---|---|---|---|---|---|---|---|---|", flush=True)


def _cli_routing(a, s, model) -> list:
  """[training, held-out] routing of ``model`` (seeds --train_seed and
  --heldout_seed), checked against the platform."""
  from ndpsim.base import ConfigError  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import routing as R  # pylint: disable=import-outside-toplevel
  spec = R.RoutingSpec(num_seqs=a.num_seqs, prompt_len=a.prompt_len,
                       output_len=a.output_len, num_layers=M.num_moe_layers(model),
                       num_experts=model.num_experts, top_k=model.top_k)
  try:
    rs = [jax.tree_util.tree_map(np.asarray, R.generate(
        jax.random.PRNGKey(seed), spec, R.preset(a.routing, model.num_experts, model.top_k)))
          for seed in (a.train_seed, a.heldout_seed)]
    engine.validate(s.spec, s.params, model, rs[0].prefill_ids, rs[0].decode_ids, 1)
  except ConfigError as e:
    raise _CliError(f"{model.name}: {str(e).splitlines()[0]}") from None
  return rs


def _cli_compare(a, s, model, cfg: TuneConfig, tag: str) -> dict:
  """:func:`compare` on one model, its progress on stderr and its table row on
  stdout; returns compare's dict with ``wall_s``."""
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  rs = _cli_routing(a, s, model)
  points = len(DEFAULT_GRID[0]) * len(DEFAULT_GRID[1]) * len(DEFAULT_GRID[2])
  print(f"{tag} {model.name}: fitting ({cfg.steps} Adam steps on the relaxed engine), "
        f"then the grid ({points} hard points) and held-out scoring...",
        file=sys.stderr, flush=True)

  def step(ev, name=model.name):
    k = ", ".join(f"{n} {v:.3g}" for n, v in ev["knobs"].items())
    print(f"  {name} step {ev['step']}/{ev['steps']}: relaxed training e2e "
          f"{ev['relaxed_e2e_s']:.4g} s at {k}", file=sys.stderr, flush=True)

  c = compare((s.spec, s.params), model, rs[0], rs[1], cfg, progress=step)
  c["wall_s"] = time.time() - t0
  h = c["heldout_e2e_s"]
  knobs = ", ".join(f"{n}={v:.3g}" for n, v in knobs_by_name(c["knobs"]["tuned"]).items())
  print(f"| {model.name} | {h['tp_lb_prefetch']:.4g} | {h['tuned']:.4g} | "
        f"{h['grid_best_on_train']:.4g} | {h['grid_best_on_heldout']:.4g} | "
        f"{c['tuned_vs_heuristic']:+.2%} | {c['tuned_vs_grid_best']:+.2%} | "
        f"{c['evaluations']['tuner']} / {c['evaluations']['grid']} | {knobs} | "
        f"{c['wall_s']:.0f} |", flush=True)
  return c


def _write_cli_out(out: pathlib.Path, flag_value: str, doc: dict) -> None:
  """``--out``: written whole via a temporary file."""
  try:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
  except OSError as e:
    raise _CliError(f"--out: cannot write {flag_value!r} ({e.strerror or e}); give a file "
                    "path you can write to") from None


if __name__ == "__main__":
  raise SystemExit(_main())
