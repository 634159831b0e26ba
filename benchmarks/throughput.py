"""How fast ndpsim simulates, as users run it; writes one JSON object.

Suites (``--suite``, comma-separated; ``--quick`` is a one-minute smoke run):

* ``throughput``: simulated (token x layer) steps per second for each model
  under ``--policy`` at each ``--seqs`` count, batch 1.  Decode steps =
  sequences x decode tokens x MoE layers; prefill steps = sequences x prompt
  tokens x MoE layers.  Compile time (``lower().compile()``) is reported apart
  from run time (the median of ``--repeats`` calls of the compiled function).
  Decode and prefill rates are separated by a second run with ``T_short``
  decode tokens: decode rate = the marginal rate between the two, prefill
  rate = prompt steps / (short run - its decode share).  ``whole_call`` rates
  divide decode steps by the full call (prefill included).
* ``reference``: the NumPy reference (benchmarks/reference_engine.py) on a
  few sequences of the same workload, its decode steps/s and the ratio.
* ``scaling``: run time against sequences, decode tokens, MoE layers, experts
  and NDP units (one varied at a time) with the fitted log-log exponent.
* ``grad``: ``jax.grad`` of mean end-to-end latency with respect to every
  system parameter, against the forward pass (both compiled, same inputs).
* ``memory``: peak resident memory of a child process simulating ``--seqs``'
  largest count (``ru_maxrss``) and XLA's compiled memory analysis.
* ``sharding``: the sequence axis sharded over 8 forced host devices against
  1 device (child processes; ``XLA_FLAGS`` must precede the jax import).
* ``hlo``: operations per decode-layer and prefill-layer loop iteration in
  the optimized HLO (fusions, sorts, copies; compile only, so independent of
  machine load).
* ``profile``: where one call's time goes: ``jax.profiler`` over one call of
  the compiled simulation at ``--seqs``' largest count (first model), summed
  per XLA op kind (the op name without its numeric suffix: every ``sort.N``
  is ``sort``): thunks executed, op-seconds (summed over threads, so they can
  exceed the wall time), the top ``--profile_top`` kinds; with
  ``--profile_group=op`` per op instead, each with its calls, time per call
  and Python source line, and the op time of the decode-layer loop.
* ``compare``: old against new side by side: the ``throughput`` point at
  ``--seqs``' largest count (first model) and its peak resident memory, in
  child processes that import ndpsim from ``--baseline_root`` (a checkout of
  the old code) and from this checkout, alternating, ``--rounds`` times each;
  reports the medians, their ratios and the load average around each child.

Routing for speed runs is random top-k ids (distinct ids per token: a random
start and a stride coprime with E), made by JAX before timing, so routing
generation is not timed.  Example::

  python benchmarks/throughput.py --quick
  python benchmarks/throughput.py --suite=throughput,reference --out=bench.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ``compare`` children import ndpsim from another checkout (NDPSIM_BENCH_ROOT).
IMPORT_ROOT = os.environ.get("NDPSIM_BENCH_ROOT", ROOT)
if IMPORT_ROOT not in sys.path:
  sys.path.insert(0, IMPORT_ROOT)

SYSTEM = "paper_rtx5080_ndp_dimm"
# dtype of the routing ids (--id_dtype; children inherit it): int32 is the
# routing generator's default, uint8 / int16 its narrow ``id_dtype`` options.
ID_DTYPE_ENV = "NDPSIM_BENCH_ID_DTYPE"


def random_ids(rng, shape, num_experts: int, top_k: int) -> np.ndarray:
  """[*shape, top_k] distinct expert ids per token (start + i x stride mod E)."""
  strides = np.array([s for s in range(1, num_experts) if math.gcd(s, num_experts) == 1]
                     or [1])
  start = rng.integers(0, num_experts, size=shape + (1,), dtype=np.int32)
  stride = strides[rng.integers(0, len(strides), size=shape + (1,))].astype(np.int32)
  return ((start + np.arange(top_k, dtype=np.int32) * stride) % num_experts).astype(np.int32)


def device_random_ids(seed: int, shape, num_experts: int, top_k: int):
  """:func:`random_ids` made by JAX on the device (jax.random, same form), so
  that a large routing is one buffer, not a NumPy array plus its device copy
  (the peak-memory figure is the simulation's, not the generator's)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  strides = jnp.asarray([s for s in range(1, num_experts) if math.gcd(s, num_experts) == 1]
                        or [1], jnp.int32)

  @jax.jit
  def gen(key):
    k1, k2 = jax.random.split(key)
    start = jax.random.randint(k1, shape + (1,), 0, num_experts, dtype=jnp.int32)
    stride = strides[jax.random.randint(k2, shape + (1,), 0, strides.shape[0])]
    ids = (start + jnp.arange(top_k, dtype=jnp.int32) * stride) % num_experts
    return ids.astype(os.environ.get(ID_DTYPE_ENV, "int32"))

  return jax.block_until_ready(gen(jax.random.PRNGKey(seed)))


@dataclasses.dataclass
class Setup:
  """Everything one timed call needs."""
  ss: object
  sp: object
  model: object
  policy: object
  params: object
  pre: object
  dec: object
  S: int
  P: int
  T: int
  L: int


def make_setup(model_name, policy, S, P, T, *, units=4, layers=None, experts=None, seed=0):
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  from ndpsim.hw import system as system_mod  # pylint: disable=import-outside-toplevel
  from ndpsim.policies.base import PolicyParams  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  model = M.get_model(model_name)
  if layers is not None:
    model = dataclasses.replace(model, num_layers=layers + model.first_dense_layers)
  if experts is not None:
    model = dataclasses.replace(model, num_experts=experts)
  sysp = system_mod.load_system(SYSTEM, num_ndp_units=units)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  pre = device_random_ids(seed, (S, P, L), E, k)
  dec = device_random_ids(seed + 1, (S, T, L), E, k)
  return Setup(sysp.spec, sysp.params, model, policies.get(policy), PolicyParams(), pre, dec,
               S, P, T, L)


def compile_and_time(st: Setup, repeats: int = 2) -> dict:
  """Compile time and the median run time of the compiled simulation."""
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  lowered = engine._simulate_jit.lower(st.ss, st.sp, st.model, st.policy, st.params,  # pylint: disable=protected-access
                                       st.pre, st.dec, None, 1)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  args = (st.sp, st.params, st.pre, st.dec, None)
  runs = []
  out = None
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    runs.append(time.perf_counter() - t)
  mem = None
  try:
    ma = compiled.memory_analysis()
    mem = dict(temp_bytes=int(ma.temp_size_in_bytes), argument_bytes=int(ma.argument_size_in_bytes),
               output_bytes=int(ma.output_size_in_bytes))
  except Exception:  # pylint: disable=broad-except
    pass
  return dict(compile_s=compile_s, run_s=statistics.median(runs), runs_s=runs,
              e2e_mean_s=float(np.mean(np.asarray(out.e2e_s))), xla_memory=mem)


def throughput_point(model, policy, S, P, T, T_short, repeats) -> dict:
  long = compile_and_time(make_setup(model, policy, S, P, T), repeats)
  short = compile_and_time(make_setup(model, policy, S, P, T_short), repeats)
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  L = M.num_moe_layers(M.get_model(model))
  dt = max(long["run_s"] - short["run_s"], 1e-9)
  dec_rate = S * (T - T_short) * L / dt
  prefill_s = max(short["run_s"] - T_short * dt / (T - T_short), 1e-9)
  return dict(model=model, policy=policy, seqs=S, prompt_len=P, decode_len=T, layers=L,
              decode_steps=S * T * L, prefill_steps=S * P * L,
              compile_s=long["compile_s"], run_s=long["run_s"], runs_s=long["runs_s"],
              short_run_s=short["run_s"], decode_steps_per_s=dec_rate,
              whole_call_decode_steps_per_s=S * T * L / long["run_s"],
              prefill_steps_per_s=S * P * L / prefill_s, prefill_s=prefill_s,
              xla_memory=long["xla_memory"])


def reference_point(model, policy, S, P, T) -> dict:
  """The NumPy reference on ``S`` sequences (tables built before timing)."""
  from benchmarks import reference_engine as RE  # pylint: disable=import-outside-toplevel
  from ndpsim.workload.routing import Routing  # pylint: disable=import-outside-toplevel
  st = make_setup(model, policy, S, P, T)
  pre, dec = np.asarray(st.pre), np.asarray(st.dec)
  r = Routing(pre, np.zeros(pre.shape, np.float32), dec, np.zeros(dec.shape, np.float32))
  RE.simulate((st.ss, st.sp), st.model, r, policy, num_groups=0)  # build tables
  t = time.perf_counter()
  ref = RE.simulate((st.ss, st.sp), st.model, r, policy)
  run_s = time.perf_counter() - t
  return dict(model=model, policy=policy, seqs=S, prompt_len=P, decode_len=T, run_s=run_s,
              steps_per_s=S * (P + T) * st.L / run_s, decode_steps=S * T * st.L,
              decode_steps_per_s_whole_call=S * T * st.L / run_s,
              e2e_mean_s=float(np.mean(ref.e2e_s)))


def fit_exponent(xs, ys) -> float:
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling(args) -> dict:
  base = dict(S=args.scale_seqs, T=args.scale_tokens)
  m, pol, P, rep = args.models[0], args.policy, args.prompt_len, args.repeats
  out = {}

  def series(name, values, fn):
    times = [fn(v)["run_s"] for v in values]
    out[name] = dict(values=list(values), run_s=times, exponent=fit_exponent(values, times))

  S0, T0 = base["S"], base["T"]
  series("sequences", [S0 // 4, S0 // 2, S0, 2 * S0],
         lambda v: compile_and_time(make_setup(m, pol, v, P, T0), rep))
  series("decode_tokens", [T0 // 4, T0 // 2, T0, 2 * T0],
         lambda v: compile_and_time(make_setup(m, pol, S0, P, v), rep))
  series("layers", [12, 24, 48],
         lambda v: compile_and_time(make_setup(m, pol, S0, P, T0, layers=v), rep))
  series("experts", [32, 64, 128, 256],
         lambda v: compile_and_time(make_setup(m, pol, S0, P, T0, experts=v), rep))
  series("ndp_units", [2, 4, 8],
         lambda v: compile_and_time(make_setup(m, pol, S0, P, T0, units=v), rep))
  return out


def grad_cost(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  st = make_setup(args.models[0], args.policy, args.grad_seqs, args.prompt_len, args.grad_tokens)

  def mean_e2e(sp, pre, dec):  # ids as arguments: no constant folding of routing
    return engine.simulate_core(st.ss, sp, st.model, st.policy, st.params, pre, dec,
                                None, 1).e2e_s.mean()

  res = {}
  for name, f in (("forward", jax.jit(mean_e2e)), ("grad", jax.jit(jax.grad(mean_e2e)))):
    t = time.perf_counter()
    jax.block_until_ready(f(st.sp, st.pre, st.dec))
    first = time.perf_counter() - t
    runs = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      jax.block_until_ready(f(st.sp, st.pre, st.dec))
      runs.append(time.perf_counter() - t)
    res[name] = dict(first_call_s=first, run_s=statistics.median(runs))
  res["ratio"] = res["grad"]["run_s"] / res["forward"]["run_s"]
  res.update(seqs=st.S, decode_len=st.T, model=args.models[0], policy=args.policy)
  return res


def _child(argv: list[str], env_extra: dict | None = None) -> dict:
  env = dict(os.environ, **(env_extra or {}))
  out = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, env=env,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args) -> dict:
  """Runs inside a child process: one timed simulation, optionally sharded."""
  import jax  # pylint: disable=import-outside-toplevel
  st = make_setup(args.models[0], args.policy, args.child_seqs, args.prompt_len,
                  args.decode_len)
  if args.child_shard:
    from ndpsim import sharding  # pylint: disable=import-outside-toplevel
    mesh = sharding.device_mesh()
    st.pre = sharding.shard_sequences(np.asarray(st.pre), mesh, 1)
    st.dec = sharding.shard_sequences(np.asarray(st.dec), mesh, 1)
  r = compile_and_time(st, args.repeats)
  r.update(devices=len(jax.devices()), seqs=st.S, decode_len=st.T,
           decode_steps_per_s_whole_call=st.S * st.T * st.L / r["run_s"],
           peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return r


def hlo_ops(model, policy, S=100, P=16, T=4) -> dict:
  """Operations XLA runs per loop iteration (optimized HLO, top-level ops of
  each ``while`` body: fusions, sorts, copies, ...; not tuples/constants).
  ``decode_layer``: the body of the loop nested in another loop (one decode
  layer step); ``prefill_layer``: the largest other body (one prefill layer)."""
  import re  # pylint: disable=import-outside-toplevel
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  st = make_setup(model, policy, S, P, T)
  text = engine._simulate_jit.lower(st.ss, st.sp, st.model, st.policy, st.params,  # pylint: disable=protected-access
                                    st.pre, st.dec, None, 1).compile().as_text()
  comps, cur = {}, None
  for line in text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      cur = m.group(1)
      comps[cur] = []
    elif cur is not None and line.startswith("  ") and " = " in line:
      comps[cur].append(line)
  skip = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast")
  def count(name):
    ops = [re.search(r"=\s*\S+\s+([\w\-]+)\(", l) for l in comps.get(name, [])]
    kinds = [m.group(1) for m in ops if m]
    return dict(ops=sum(k not in skip for k in kinds), sorts=kinds.count("sort"),
                copies=kinds.count("copy"))
  loops = [(parent, m.group(1)) for parent, lines in comps.items() for l in lines
           for m in [re.search(r"while\(.*body=%?([\w.\-]+)", l)] if m]
  bodies = {b for _, b in loops}
  nested = [b for parent, b in loops if parent in bodies]
  top = [b for parent, b in loops if parent not in bodies]
  out = {}
  if nested:
    out["decode_layer"] = max((count(b) for b in nested), key=lambda c: c["ops"])
  if top:
    out["prefill_layer"] = max((count(b) for b in top), key=lambda c: c["ops"])
  return out


def _hlo_sources(text: str) -> dict:
  """Optimized HLO text -> {instruction name: "file:line:function" of the
  innermost Python frame XLA recorded for it (its ``stack_frame_id``)}."""
  import re  # pylint: disable=import-outside-toplevel
  tables = {k: {} for k in ("FileNames", "FunctionNames", "FileLocations", "StackFrames")}
  cur, where = None, {}
  for line in text.splitlines():
    if line in tables:
      cur = line
      continue
    m = re.match(r"^(\d+) (.*)$", line)
    if cur and m:
      tables[cur][int(m.group(1))] = m.group(2)
      continue
    cur = None
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*stack_frame_id=(\d+)", line)
    if m:
      where[m.group(1)] = int(m.group(2))
  num = lambda s, key: int(re.search(key + r"=(\d+)", s).group(1))  # noqa: E731

  def source(frame: int) -> str:
    loc = tables["FileLocations"].get(num(tables["StackFrames"].get(frame, "file_location_id=0"),
                                          "file_location_id"), "")
    if not loc:
      return ""
    f = tables["FileNames"].get(num(loc, "file_name_id"), "").strip('"').rsplit("/", 1)[-1]
    fn = tables["FunctionNames"].get(num(loc, "function_name_id"), "").strip('"')
    return f"{f}:{num(loc, 'line')}:{fn}"
  return {name: source(frame) for name, frame in where.items()}


def profile(model, policy, S, P, T, top: int = 15, group: str = "kind") -> dict:
  """Device time of one compiled call (see the ``profile`` suite), per XLA op
  kind (``group="kind"``) or per op (``"op"``: each with its calls, time per
  call and source line; ``decode_layer_op_seconds`` sums the ops that ran a
  multiple of T x L times, i.e. once per decode layer step)."""
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  st = make_setup(model, policy, S, P, T)
  compiled = engine._simulate_jit.lower(st.ss, st.sp, st.model, st.policy, st.params,  # pylint: disable=protected-access
                                        st.pre, st.dec, None, 1).compile()
  args = (st.sp, st.params, st.pre, st.dec, None)
  jax.block_until_ready(compiled(*args))  # warm
  with tempfile.TemporaryDirectory(prefix="ndpsim-profile-") as d:
    jax.profiler.start_trace(d)
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
  seconds, count = collections.Counter(), collections.Counter()
  skip = ("ThunkExecutor", "ThreadpoolListener", "end: ", "while")
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # XLA's executor threads, not Python's
        continue
      for ev in line.events:
        if ev.name.startswith(skip):
          continue
        key = re.sub(r"\.\d+$", "", ev.name) if group == "kind" else ev.name
        seconds[key] += ev.duration_ns / 1e9
        count[key] += 1
  out = dict(model=model, policy=policy, seqs=S, prompt_len=P, decode_len=T, wall_s=wall,
             group=group, thunks=sum(count.values()), op_seconds=sum(seconds.values()),
             distinct=len(seconds))
  if group == "kind":
    return dict(out, top=[dict(kind=k, seconds=v, count=count[k])
                          for k, v in seconds.most_common(top)])
  src = _hlo_sources(compiled.as_text())
  steps = T * M.num_moe_layers(st.model)
  per_step = {k for k in seconds if count[k] % steps == 0}
  return dict(out, decode_layer_steps=steps,
              decode_layer_op_seconds=sum(seconds[k] for k in per_step),
              top=[dict(op=k, seconds=v, count=count[k], us_per_call=1e6 * v / count[k],
                        per_decode_layer_step=k in per_step, source=src.get(k, ""))
                   for k, v in seconds.most_common(top)])


def compare(args, seqs) -> dict:
  """Old (``--baseline_root``) against new (this checkout), alternating children."""
  S, m = max(seqs), args.models[0]
  argv = ["--models", m, "--policy", args.policy, "--prompt_len", str(args.prompt_len),
          "--decode_len", str(args.decode_len), "--short_len", str(args.short_len),
          "--repeats", str(args.repeats), "--child_seqs", str(S), "--child_point"]
  roots = dict(old=os.path.abspath(args.baseline_root), new=ROOT)
  runs = {name: [] for name in roots}
  for i in range(args.rounds):
    for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
      before = os.getloadavg()
      r = _child(argv, {"NDPSIM_BENCH_ROOT": roots[name]})
      r.update(loadavg_before=before, loadavg_after=os.getloadavg())
      runs[name].append(r)
  med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
  keys = ("decode_steps_per_s", "prefill_steps_per_s", "whole_call_decode_steps_per_s",
          "peak_rss_bytes", "compile_s", "run_s")
  out = dict(model=m, policy=args.policy, seqs=S, roots=roots, runs=runs,
             median={name: {k: med(name, k) for k in keys} for name in roots},
             hlo_ops={name: runs[name][0]["hlo"] for name in roots})
  out["new_over_old"] = {k: out["median"]["new"][k] / out["median"]["old"][k] for k in keys}
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="one-minute smoke run")
  ap.add_argument("--suite", default="throughput,reference")
  ap.add_argument("--models", default="qwen3-30b-a3b,mixtral-8x7b")
  ap.add_argument("--policy", default="tp_lb_prefetch")
  ap.add_argument("--seqs", default="1,10,100,1000,10000")
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--decode_len", type=int, default=64)
  ap.add_argument("--short_len", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--ref_seqs", type=int, default=2)
  ap.add_argument("--scale_seqs", type=int, default=1000)
  ap.add_argument("--scale_tokens", type=int, default=32)
  ap.add_argument("--grad_seqs", type=int, default=100)
  ap.add_argument("--grad_tokens", type=int, default=16)
  ap.add_argument("--profile_top", type=int, default=15, help="profile: entries listed")
  ap.add_argument("--profile_group", default="kind", choices=("kind", "op"),
                  help="profile: sum per op kind, or per op with its source line")
  ap.add_argument("--id_dtype", default="", choices=("", "int32", "int16", "uint8"),
                  help="routing id dtype (default int32, as Routing's id_dtype default)")
  ap.add_argument("--out", default="")
  ap.add_argument("--child_seqs", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--child_shard", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--child_point", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--baseline_root", default="",
                  help="compare: a checkout of the old code (e.g. a git worktree)")
  ap.add_argument("--rounds", type=int, default=2, help="compare: children per side")
  args = ap.parse_args(argv)
  args.models = args.models.split(",")
  if args.id_dtype:
    os.environ[ID_DTYPE_ENV] = args.id_dtype
  if args.child_seqs and args.child_point:
    r = throughput_point(args.models[0], args.policy, args.child_seqs, args.prompt_len,
                         args.decode_len, args.short_len, args.repeats)
    r.update(peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             ndpsim_root=IMPORT_ROOT, hlo=hlo_ops(args.models[0], args.policy))
    return _emit(r, "")
  if args.child_seqs:
    return _emit(child_main(args), "")
  import jax  # pylint: disable=import-outside-toplevel
  report = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                id_dtype=os.environ.get(ID_DTYPE_ENV, "int32"),
                cpu_count=os.cpu_count(), jax_version=jax.__version__,
                loadavg=os.getloadavg(), argv=sys.argv[1:])
  if args.quick:
    m, pol = args.models[0], args.policy
    pt = throughput_point(m, pol, 256, args.prompt_len, 32, 8, 2)
    ref = reference_point(m, pol, args.ref_seqs, args.prompt_len, 32)
    report.update(quick=True, model=m, policy=pol, seqs=256, decode_len=32,
                  compile_s=pt["compile_s"], run_s=pt["run_s"],
                  steps_per_s=pt["whole_call_decode_steps_per_s"],
                  decode_marginal_steps_per_s=pt["decode_steps_per_s"],
                  prefill_steps_per_s=pt["prefill_steps_per_s"],
                  reference_steps_per_s=ref["decode_steps_per_s_whole_call"],
                  ratio=pt["whole_call_decode_steps_per_s"] / ref["decode_steps_per_s_whole_call"])
    return _emit(report, args.out)
  suites = set(args.suite.split(","))
  seqs = [int(s) for s in args.seqs.split(",")]
  if "throughput" in suites:
    report["throughput"] = [throughput_point(m, args.policy, S, args.prompt_len, args.decode_len,
                                             args.short_len, args.repeats)
                            for m in args.models for S in seqs]
  if "reference" in suites:
    report["reference"] = [reference_point(m, args.policy, args.ref_seqs, args.prompt_len,
                                           args.decode_len) for m in args.models]
    if "throughput" in suites:
      for ref in report["reference"]:
        best = max((p for p in report["throughput"] if p["model"] == ref["model"]),
                   key=lambda p: p["whole_call_decode_steps_per_s"])
        ref["ratio_whole_call"] = (best["whole_call_decode_steps_per_s"]
                                   / ref["decode_steps_per_s_whole_call"])
        ref["ratio_at_seqs"] = best["seqs"]
  if "compare" in suites:
    if not args.baseline_root:
      raise SystemExit("--suite=compare needs --baseline_root=DIR, a checkout of the old "
                       "code (e.g. git worktree add /tmp/old <commit>)")
    report["compare"] = compare(args, seqs)
  if "profile" in suites:
    report["profile"] = profile(args.models[0], args.policy, max(seqs), args.prompt_len,
                                args.decode_len, args.profile_top, args.profile_group)
  if "hlo" in suites:
    report["hlo"] = {m: hlo_ops(m, args.policy) for m in args.models}
  if "scaling" in suites:
    report["scaling"] = scaling(args)
  if "grad" in suites:
    report["grad"] = grad_cost(args)
  common = ["--models", args.models[0], "--policy", args.policy, "--prompt_len",
            str(args.prompt_len), "--decode_len", str(args.decode_len), "--repeats",
            str(args.repeats)]
  if "memory" in suites:
    report["memory"] = _child(common + ["--child_seqs", str(max(seqs))])
  if "sharding" in suites:
    n = args.scale_seqs
    one = _child(common + ["--child_seqs", str(n)])
    eight = _child(common + ["--child_seqs", str(n), "--child_shard"],
                   {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    report["sharding"] = dict(one_device=one, eight_devices=eight,
                              speedup=one["run_s"] / eight["run_s"])
  return _emit(report, args.out)


def _emit(report: dict, path: str) -> dict:
  text = json.dumps(report, default=float)
  if path:
    with open(path, "w", encoding="utf-8") as f:
      f.write(json.dumps(report, indent=1, default=float))
  print(text)
  return report


if __name__ == "__main__":
  main()
