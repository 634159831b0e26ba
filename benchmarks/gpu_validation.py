"""First validation of ndpsim on a real NVIDIA H200; one short prepared script.

(a) Simulator speed on the GPU: ``benchmarks/throughput.py`` (Qwen3-30B-A3B
    under tp_lb_prefetch at 1,000 and 10,000 sequences) with the default
    backend (jax[cuda]), and the same run on this machine's CPU in a child
    process (``JAX_PLATFORMS=cpu``), side by side.
(b) Hardware model: real bf16 GEMV / small-GEMM kernels of expert shapes --
    gate, up ([tokens, hidden] x [hidden, ffn]) and down ([tokens, ffn] x
    [ffn, hidden]) of the default models at 1, 8, 64 and 512 tokens -- timed
    with JAX, against ``ndpsim.hw.gpu.matmul_time_s`` under the ``h200``
    preset: a table of measured vs modelled time and the relative error
    (model / measured - 1).

Measurement: each kernel streams its weights from HBM as in MoE decode (the
script cycles through enough distinct weight buffers to exceed the 50 MB L2).
On a GPU the time per kernel is the device time reported by the profiler
(CUPTI kernel events) when available, else the wall time of a jitted chain of
``--reps`` GEMMs divided by ``--reps`` (it includes launch gaps, as the
model's ``kernel_launch_us`` does).  ``--dry_run`` runs everything on the CPU
with tiny repetition counts (no GPU, no simulator run): it checks the plan and
the JSON shape in seconds (``tests/test_reference.py``).

Also measured: the machine's ceilings (streaming bandwidth of ``x + 1`` over
2 GiB, an 8192^3 bf16 GEMM), against which the preset's achievable fractions
can be read.  The simulator runs are one child each (``--seqs`` on the
default backend, ``--cpu_seqs`` with ``JAX_PLATFORMS=cpu``), each under a
hang guard, and ``--out`` is rewritten after every stage, so a run cut short
keeps what it measured.

Usage on the H200 machine (about 5-8 minutes; jax with CUDA installed)::

  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/gpu_validation.py \
      --out=gpu_validation.json
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

MODELS = ("qwen3-30b-a3b", "mixtral-8x7b")
TOKENS = (1, 8, 64, 512)
L2_BYTES = 50 * 2**20


def expert_kernels(model_name: str):
  """[(name, k, n)] of one expert's GEMMs: y[m, n] = x[m, k] @ W[k, n]."""
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  model = M.get_model(model_name)
  h, f = model.hidden_size, model.expert_ffn_size
  return [("gate", h, f), ("up", h, f), ("down", f, h)]


def modelled(model_name: str, m: int, k: int, n: int) -> dict:
  from ndpsim import config  # pylint: disable=import-outside-toplevel
  from ndpsim.hw import gpu  # pylint: disable=import-outside-toplevel
  p = config.load("gpu", "h200")
  b = gpu.matmul_breakdown(p.spec, p.params, m, n, k, act_dtype_bytes=2.0,
                           weight_dtype_bytes=2.0, dtype="bf16")
  return {key: float(np.asarray(b[key])) for key in ("time_s", "compute_s", "memory_s",
                                                    "launch_s")}


def _device_kernel_s(fn, args, calls: int) -> tuple[float | None, dict]:
  """Mean device time per call from profiler kernel events (GPU only).

  Returns (seconds per call or None, {line name: summed seconds}).  Kernels
  of one call run on one stream; the busiest line whose name holds "stream"
  is taken (an aggregate line, if the profiler writes one, is then that line).
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    return None, {}
  try:
    with tempfile.TemporaryDirectory(prefix="ndpsim_prof_") as d:
      with jax.profiler.trace(d):
        for _ in range(calls):
          out = fn(*args)
        jax.block_until_ready(out)
      files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
      if not files:
        return None, {"error": "no xplane.pb written"}
      pd = jax.profiler.ProfileData.from_file(files[0])
      lines = {}
      for plane in pd.planes:
        if not plane.name.startswith("/device:GPU"):
          continue
        for line in plane.lines:
          total = sum(ev.duration_ns for ev in line.events) * 1e-9
          lines[f"{plane.name}|{line.name}"] = total
    streams = [v for k, v in lines.items() if "stream" in k.split("|")[1].lower()]
    best = max(streams) if streams else 0.0
    return (best / calls if best > 0 else None), lines
  except Exception as e:  # pylint: disable=broad-except
    return None, {"error": repr(e)[:500]}


def time_kernel(m: int, k: int, n: int, reps: int, dry: bool) -> dict:
  """Measured time of one bf16 [m, k] x [k, n] GEMM with weights from DRAM."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  w_bytes = k * n * 2
  # distinct buffers: >= 4x L2 (weights come from DRAM) and >= reps (XLA would
  # otherwise merge identical GEMMs of the chain into one)
  nbuf = 1 if dry else max(reps, math.ceil(4 * L2_BYTES / w_bytes))
  key = jax.random.PRNGKey(0)
  w0 = jax.random.normal(key, (k, n), jnp.bfloat16)
  # distinct buffers without a random draw of nbuf x k x n (its f32 temporaries)
  ws = jax.jit(lambda w: w[None] + jnp.arange(nbuf, dtype=jnp.bfloat16)[:, None, None])(w0)
  x = jax.random.normal(key, (m, k), jnp.bfloat16)

  @jax.jit
  def one(x, w):
    return x @ w

  @jax.jit
  def chain(x, ws):
    acc = jnp.zeros((m, n), jnp.float32)
    for i in range(reps):  # unrolled: one kernel per GEMM, no loop overhead
      acc = acc + (x @ ws[i % nbuf]).astype(jnp.float32)
    return acc

  jax.block_until_ready(one(x, ws[0]))
  jax.block_until_ready(chain(x, ws))
  t = time.perf_counter()
  jax.block_until_ready(chain(x, ws))
  wall = (time.perf_counter() - t) / reps
  dev, lines = None, {}
  if not dry:
    calls = 4 * nbuf
    wsl = [ws[i] for i in range(nbuf)]
    it = iter(range(10**9))
    dev, lines = _device_kernel_s(lambda x: one(x, wsl[next(it) % nbuf]), (x,), calls)
  return dict(measured_wall_s=wall, measured_kernel_s=dev, weight_buffers=nbuf,
              profiler_lines=lines if dry or dev is None or m == 1 else {})


def kernel_table(reps: int, dry: bool, models=MODELS, tokens=TOKENS) -> list[dict]:
  rows = []
  for mname in models:
    for kname, k, n in expert_kernels(mname):
      for m in tokens:
        try:
          mod = modelled(mname, m, k, n)
        except Exception as e:  # pylint: disable=broad-except  (keep measuring)
          mod = dict(time_s=None, compute_s=None, memory_s=None, launch_s=None,
                     error=repr(e)[:300])
        meas = time_kernel(m, k, n, reps, dry)
        measured = meas["measured_kernel_s"] or meas["measured_wall_s"]
        rows.append(dict(model=mname, kernel=kname, tokens=m, k=k, n=n,
                         model_s=mod["time_s"], model_compute_s=mod["compute_s"],
                         model_memory_s=mod["memory_s"], model_launch_s=mod["launch_s"],
                         model_error=mod.get("error"), measured_s=measured,
                         measured_kind="kernel" if meas["measured_kernel_s"] else "wall",
                         weight_gbps=k * n * 2 / measured / 1e9,
                         **meas, error=(None if mod["time_s"] is None
                                        else mod["time_s"] / measured - 1.0)))
        print(f"[gpu_validation] {mname} {kname} m={m}: measured {measured * 1e6:.2f} us "
              f"({rows[-1]['measured_kind']}), wall {meas['measured_wall_s'] * 1e6:.2f} us, "
              f"model {mod['time_s']}", file=sys.stderr, flush=True)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| model | kernel | tokens | measured us | modelled us | error |",
           "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    model = "n/a" if r["model_s"] is None else f"{r['model_s'] * 1e6:.1f}"
    err = "n/a" if r["error"] is None else f"{r['error']:+.0%}"
    lines.append(f"| {r['model']} | {r['kernel']} | {r['tokens']} | "
                 f"{r['measured_s'] * 1e6:.1f} ({r['measured_kind']}) | {model} | {err} |")
  return "\n".join(lines)


def roofline_probes(dry: bool) -> dict:
  """Measured ceilings of the machine: streaming bandwidth and dense bf16 rate.

  Bandwidth: ``y = x * 2`` over a float32 array of 4 GiB (read once, written
  once: 8 GiB of traffic).  Compute: an 8192^3 bf16 GEMM of random data (fp32
  accumulate).  Device time from the profiler on a GPU (median wall time of 5
  calls after a warm-up otherwise).  They are the ceilings the preset's
  ``achievable_bandwidth_fraction`` and ``achievable_compute_fraction`` stand
  for (measured / spec peak).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  n_elems = (2**14 if dry else 2**30)
  side = 256 if dry else 8192
  x = jnp.ones((n_elems,), jnp.float32)
  a = jax.random.normal(jax.random.PRNGKey(1), (side, side), jnp.bfloat16)
  scale = jax.jit(lambda v: v * 2.0)
  mm = jax.jit(lambda u: jnp.dot(u, u, preferred_element_type=jnp.float32).astype(jnp.bfloat16))

  def med(fn, arg):
    jax.block_until_ready(fn(arg))
    ts = []
    for _ in range(5):
      t = time.perf_counter()
      jax.block_until_ready(fn(arg))
      ts.append(time.perf_counter() - t)
    dev, _ = (None, {}) if dry else _device_kernel_s(fn, (arg,), 5)
    return float(np.median(ts)), dev

  bw_wall, bw_dev = med(scale, x)
  mm_wall, mm_dev = med(mm, a)
  bw_s, mm_s = bw_dev or bw_wall, mm_dev or mm_wall
  return dict(stream_bytes=8 * n_elems, stream_s=bw_s, stream_wall_s=bw_wall,
              stream_gbps=8 * n_elems / bw_s / 1e9, gemm_side=side, gemm_s=mm_s,
              gemm_wall_s=mm_wall, gemm_tflops=2 * side**3 / mm_s / 1e12,
              timing="kernel" if bw_dev else "wall")


def gemv_sweep(dry: bool) -> list[dict]:
  """One-token bf16 GEMV [1, 4096] x [4096, n] for weights of 0.5 MB .. 512 MB:
  the kernel-time floor and the bandwidth a single expert GEMV reaches."""
  rows = []
  for n in ((64, 256) if dry else (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                     32768, 65536)):
    meas = time_kernel(1, 4096, n, 2 if dry else 8, dry)
    t = meas["measured_kernel_s"] or meas["measured_wall_s"]
    rows.append(dict(k=4096, n=n, weight_bytes=4096 * n * 2, measured_s=t,
                     measured_kind="kernel" if meas["measured_kernel_s"] else "wall",
                     weight_gbps=4096 * n * 2 / t / 1e9))
    print(f"[gpu_validation] gemv 4096 x {n}: {t * 1e6:.2f} us, "
          f"{rows[-1]['weight_gbps']:.0f} GB/s", file=sys.stderr, flush=True)
  return rows


def _write(report: dict, path: str) -> None:
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, default=float)


def simulator_point(backend: str, seqs: int, args) -> dict:
  """One ``benchmarks/throughput.py --suite=throughput`` child on ``backend``
  ("default" = jax's default, a GPU there; "cpu" = ``JAX_PLATFORMS=cpu``)."""
  script = os.path.join(ROOT, "benchmarks", "throughput.py")
  seqs, _, model = str(seqs).partition("@")
  argv = ["--suite=throughput", f"--models={model or 'qwen3-30b-a3b'}", f"--seqs={seqs}",
          f"--decode_len={args.decode_len}", f"--short_len={args.short_len}",
          f"--repeats={args.repeats}"]
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             **({"JAX_PLATFORMS": "cpu"} if backend == "cpu" else {}))
  t = time.perf_counter()
  try:
    r = subprocess.run([sys.executable, script] + argv, env=env, capture_output=True,
                       text=True, check=False, timeout=args.child_timeout_s)  # hang guard
  except subprocess.TimeoutExpired as e:
    err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return dict(backend=backend, seqs=seqs, error=f"timed out after {args.child_timeout_s} s",
                stderr_tail=err[-2000:])
  wall = time.perf_counter() - t
  try:
    out = json.loads(r.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    return dict(backend=backend, seqs=seqs, error=f"rc {r.returncode}",
                stderr_tail=r.stderr[-2000:])
  out.update(requested_backend=backend, child_wall_s=wall)
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dry_run", action="store_true",
                  help="CPU, one token count, two repetitions, no simulator run")
  ap.add_argument("--reps", type=int, default=50, help="GEMMs per timed chain")
  ap.add_argument("--models", default=",".join(MODELS), help="models of the kernel table")
  ap.add_argument("--tokens", default=",".join(map(str, TOKENS)),
                  help="token counts (GEMM rows) of the kernel table")
  ap.add_argument("--seqs", default="10000,1000",
                  help="simulator runs on the default backend: S or S@model, comma-separated")
  ap.add_argument("--cpu_seqs", default="1000", help="simulator runs with JAX_PLATFORMS=cpu")
  ap.add_argument("--skip_kernels", action="store_true", help="no expert-kernel table")
  ap.add_argument("--decode_len", type=int, default=64)
  ap.add_argument("--short_len", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--child_timeout_s", type=float, default=240.0,
                  help="hang guard per simulator child")
  ap.add_argument("--skip_simulator", action="store_true")
  ap.add_argument("--out", default="", help="JSON report, rewritten after every stage")
  args = ap.parse_args(argv)
  if args.dry_run:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  report = dict(dry_run=args.dry_run, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()], jax_version=jax.__version__,
                argv=sys.argv[1:] if argv is None else list(argv))
  models = tuple(m for m in args.models.split(",") if m)
  tokens = tuple(int(t) for t in args.tokens.split(",") if t)
  if args.dry_run:
    # Every modelled row; one small kernel actually timed per model and shape.
    rows = []
    for mname in models:
      for kname, k, n in expert_kernels(mname):
        for m in tokens:
          mod = modelled(mname, m, k, n)
          rows.append(dict(model=mname, kernel=kname, tokens=m, k=k, n=n,
                           model_s=mod["time_s"], measured_s=None, error=None))
    probe = kernel_table(2, True, models=models[:1], tokens=(1,))
    report.update(kernels=rows + probe, roofline=roofline_probes(True),
                  gemv_sweep=gemv_sweep(True),
                  note="dry run: CPU timings are not H200 numbers")
  else:
    if report["backend"] != "gpu":
      print("warning: no GPU backend; timings are not H200 numbers", file=sys.stderr)
    t = time.perf_counter()
    report["roofline"] = roofline_probes(False)
    print(f"[gpu_validation] roofline {report['roofline']} ({time.perf_counter() - t:.0f} s)",
          file=sys.stderr, flush=True)
    _write(report, args.out)
    report["gemv_sweep"] = gemv_sweep(False)
    _write(report, args.out)
    rows = [] if args.skip_kernels else kernel_table(args.reps, False, models=models,
                                                     tokens=tokens)
    errs = np.abs([r["error"] for r in rows if r["error"] is not None])
    report.update(kernels=rows, table=markdown(rows),
                  mean_abs_error=float(np.mean(errs)) if errs.size else None,
                  max_abs_error=float(np.max(errs)) if errs.size else None)
    if rows:
      print(report["table"], file=sys.stderr, flush=True)
    _write(report, args.out)
    if not args.skip_simulator:
      report["simulator"] = []
      plan = ([("default", s) for s in args.seqs.split(",") if s]
              + [("cpu", s) for s in args.cpu_seqs.split(",") if s])
      for backend, seqs in plan:
        t = time.perf_counter()
        point = simulator_point(backend, seqs, args)
        report["simulator"].append(point)
        print(f"[gpu_validation] simulator {backend} {seqs} seqs "
              f"({time.perf_counter() - t:.0f} s): "
              f"{json.dumps(point, default=float)[:1500]}", file=sys.stderr, flush=True)
        _write(report, args.out)
  _write(report, args.out)
  print(json.dumps(report, default=float))
  return report


if __name__ == "__main__":
  main()
