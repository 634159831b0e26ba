"""Speed of routing generation.

    python benchmarks/routing_speed.py [--num_seqs=1000] [--tokens=1024] [--layers=48]
        [--experts=128] [--top_k=8] [--preset=balanced_corpus] [--id_dtype=uint8]
        [--gate_dtype=bfloat16] [--repeats=2]

Default: 1,000 sequences x 1,024 tokens (512 prompt + 512 decode) x 48 layers x
top-8 of 128 experts (Qwen3-30B-A3B's shape).  Prints compile and run wall
time, CPU time, and the share of tokens that needed the exact completion or the
approximate fill (both from the same key).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax

from ndpsim.workload import routing


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--num_seqs", type=int, default=1000)
  ap.add_argument("--tokens", type=int, default=1024)
  ap.add_argument("--layers", type=int, default=48)
  ap.add_argument("--experts", type=int, default=128)
  ap.add_argument("--top_k", type=int, default=8)
  ap.add_argument("--preset", default="balanced_corpus")
  ap.add_argument("--id_dtype", default="uint8")
  ap.add_argument("--gate_dtype", default="bfloat16")
  ap.add_argument("--repeats", type=int, default=2)
  a = ap.parse_args()
  spec = routing.RoutingSpec(num_seqs=a.num_seqs, prompt_len=a.tokens // 2,
                             output_len=a.tokens - a.tokens // 2, num_layers=a.layers,
                             num_experts=a.experts, top_k=a.top_k, id_dtype=a.id_dtype,
                             gate_dtype=a.gate_dtype)
  params = routing.preset(a.preset, a.experts, a.top_k)
  t0, c0 = time.time(), time.process_time()
  r = jax.block_until_ready(routing.generate(jax.random.key(0), spec, params))
  first = (time.time() - t0, time.process_time() - c0)
  runs = []
  for i in range(a.repeats):
    t0, c0 = time.time(), time.process_time()
    r = jax.block_until_ready(routing.generate(jax.random.key(i + 1), spec, params))
    runs.append((time.time() - t0, time.process_time() - c0))
  wall = min(w for w, _ in runs)
  nbytes = sum(x.size * x.dtype.itemsize for x in r)
  out = dict(shape=[a.num_seqs, a.tokens, a.layers, a.top_k], experts=a.experts,
             preset=a.preset, id_dtype=a.id_dtype, gate_dtype=a.gate_dtype,
             compile_and_first_run_s=round(first[0], 2),
             run_wall_s=round(wall, 2), run_cpu_s=round(min(c for _, c in runs), 2),
             token_layers_per_s=round(a.num_seqs * a.tokens * a.layers / wall),
             output_gb=round(nbytes / 1e9, 2), cpus=os.cpu_count(),
             load_avg=round(os.getloadavg()[0], 1), backend=jax.default_backend())
  print(json.dumps(out))


if __name__ == "__main__":
  main()
