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

Usage on the H200 machine (about 3-5 minutes)::

  pip install -U "jax[cuda12]"   # if needed; this session had no GPU
  python benchmarks/gpu_validation.py --out=gpu_validation.json
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


def _device_kernel_s(fn, args, calls: int) -> float | None:
  """Mean device time per call from profiler kernel events (GPU only)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    return None
  d = tempfile.mkdtemp(prefix="ndpsim_prof_")
  with jax.profiler.trace(d):
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
  files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
  if not files:
    return None
  pd = jax.profiler.ProfileData.from_file(files[0])
  total = 0.0
  for plane in pd.planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if "stream" not in line.name.lower() and "kernel" not in line.name.lower():
        continue
      for ev in line.events:
        total += ev.duration_ns * 1e-9
  return total / calls if total > 0 else None


def time_kernel(m: int, k: int, n: int, reps: int, dry: bool) -> dict:
  """Measured time of one bf16 [m, k] x [k, n] GEMM with weights from DRAM."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  w_bytes = k * n * 2
  nbuf = 1 if dry else max(2, math.ceil(4 * L2_BYTES / w_bytes))
  key = jax.random.PRNGKey(0)
  ws = jax.random.normal(key, (nbuf, k, n), jnp.bfloat16)
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
  dev = None
  if not dry:
    calls = 4 * nbuf
    wsl = [ws[i] for i in range(nbuf)]
    it = iter(range(10**9))
    dev = _device_kernel_s(lambda x: one(x, wsl[next(it) % nbuf]), (x,), calls)
  return dict(measured_wall_s=wall, measured_kernel_s=dev, weight_buffers=nbuf)


def kernel_table(reps: int, dry: bool, models=MODELS, tokens=TOKENS) -> list[dict]:
  rows = []
  for mname in models:
    for kname, k, n in expert_kernels(mname):
      for m in tokens:
        mod = modelled(mname, m, k, n)
        meas = time_kernel(m, k, n, reps, dry)
        measured = meas["measured_kernel_s"] or meas["measured_wall_s"]
        rows.append(dict(model=mname, kernel=kname, tokens=m, k=k, n=n,
                         model_s=mod["time_s"], model_compute_s=mod["compute_s"],
                         model_memory_s=mod["memory_s"], model_launch_s=mod["launch_s"],
                         measured_s=measured,
                         measured_kind="kernel" if meas["measured_kernel_s"] else "wall",
                         **meas, error=mod["time_s"] / measured - 1.0))
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| model | kernel | tokens | measured us | modelled us | error |",
           "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['kernel']} | {r['tokens']} | "
                 f"{r['measured_s'] * 1e6:.1f} ({r['measured_kind']}) | "
                 f"{r['model_s'] * 1e6:.1f} | {r['error']:+.0%} |")
  return "\n".join(lines)


def simulator_speed(seqs: str) -> dict:
  """benchmarks/throughput.py on the default backend and on the CPU."""
  script = os.path.join(ROOT, "benchmarks", "throughput.py")
  argv = ["--suite=throughput", "--models=qwen3-30b-a3b", f"--seqs={seqs}"]
  out = {}
  for name, env in (("default_backend", {}), ("cpu", {"JAX_PLATFORMS": "cpu"})):
    r = subprocess.run([sys.executable, script] + argv, env=dict(os.environ, **env),
                       capture_output=True, text=True, check=False)
    try:
      out[name] = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
      out[name] = dict(error=r.stderr[-2000:])
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dry_run", action="store_true",
                  help="CPU, one token count, two repetitions, no simulator run")
  ap.add_argument("--reps", type=int, default=50)
  ap.add_argument("--seqs", default="1000,10000")
  ap.add_argument("--skip_simulator", action="store_true")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  if args.dry_run:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  report = dict(dry_run=args.dry_run, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()], jax_version=jax.__version__)
  if args.dry_run:
    # Every modelled row; one small kernel actually timed per model and shape.
    rows = []
    for mname in MODELS:
      for kname, k, n in expert_kernels(mname):
        for m in TOKENS:
          mod = modelled(mname, m, k, n)
          rows.append(dict(model=mname, kernel=kname, tokens=m, k=k, n=n,
                           model_s=mod["time_s"], measured_s=None, error=None))
    probe = kernel_table(2, True, models=MODELS[:1], tokens=(1,))
    report.update(kernels=rows + probe, note="dry run: CPU timings are not H200 numbers")
  else:
    if report["backend"] != "gpu":
      print("warning: no GPU backend; timings are not H200 numbers", file=sys.stderr)
    rows = kernel_table(args.reps, False)
    errs = np.abs([r["error"] for r in rows])
    report.update(kernels=rows, table=markdown(rows),
                  mean_abs_error=float(np.mean(errs)), max_abs_error=float(np.max(errs)))
    if not args.skip_simulator:
      report["simulator"] = simulator_speed(args.seqs)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, default=float)
  if "table" in report:
    print(report["table"], file=sys.stderr)
  print(json.dumps(report, default=float))
  return report


if __name__ == "__main__":
  main()
