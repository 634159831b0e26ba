"""DRAM closed forms (ndpsim.hw.dram) versus the command-level reference
simulator (ndpsim.hw.dram_cyclesim), per shipped preset and pattern.

    python benchmarks/dram_fidelity.py [--out=dram_fidelity.json]   # a few min
        [--txns_per_channel=32768] [--presets=A,B] [--patterns=stream,banks]
        [--write_golden=tests/data/dram_fidelity_golden.json]

Each preset reads a region of txns_per_channel transactions per channel
(onebank: that many in its one bank).  The simulator runs channel 0 only
(channels are independent and see statistically identical streams); the
closed form's per-channel cycles are compared with it.  Prints a markdown
table (bandwidth in GB/s: model, reference, part peak; relative error of the
time), then the NDP internal streaming rates per level, and writes both as
JSON.  ``--write_golden`` also writes the reference simulator's figures in the
format of tests/data/dram_fidelity_golden.json (seed 0, channel 0), which
tests/test_dram_fidelity.py::test_golden_reference_regenerates re-simulates.
"""
from __future__ import annotations

import json
import sys
import time

import jax

from ndpsim import config
from ndpsim.hw import dram, dram_cyclesim

TARGETS = {"onebank": 0.03, "banks": 0.05, "random": 0.15, "stream": 0.20}


def compare(name: str, pattern: str, txns_per_channel: int = 32768,
            request_bytes: int | None = None, seed: int = 0) -> dict:
  """One preset x pattern: model and reference figures (JSON-able)."""
  pre = config.load("dram", name)
  spec, params = pre.spec, pre.params
  chans = 1 if pattern == "onebank" else spec.channels
  region = txns_per_channel * spec.transaction_bytes * chans
  t0 = time.time()
  sim = dram_cyclesim.simulate(spec, params, pattern, region, request_bytes,
                               seed=seed, channels=(0,))
  sim_s = time.time() - t0
  r = dram.read(spec, params, pattern, region, request_bytes)
  tck = float(params.tck_ns)
  ref_bw = sim.bytes * chans / (sim.cycles * tck)
  model_bw = float(r.bandwidth_gbps)
  return {"preset": name, "pattern": pattern, "region_bytes": region,
          "peak_gbps": float(dram.peak_bandwidth_gbps(spec, params)),
          "model_gbps": model_bw, "reference_gbps": ref_bw,
          "model_cycles": float(r.cycles), "reference_cycles": sim.cycles,
          "time_error": float(r.cycles) / sim.cycles - 1.0,
          "model_row_hit_rate": float(r.row_hit_rate),
          "reference_row_hit_rate": sim.row_hit_rate,
          "target": TARGETS.get(pattern), "sim_seconds": sim_s}


def write_golden(path: str, rows: list[dict], txns_per_channel: int) -> None:
  """Writes the reference-simulator rows as the labelled golden file."""
  golden = {
      "_label": ("GOLDEN reference data: output of ndpsim.hw.dram_cyclesim (not of the closed "
                 "forms), regenerated and compared by tests/test_dram_fidelity.py::"
                 "test_golden_reference_regenerates (slow); written by "
                 "benchmarks/dram_fidelity.py --write_golden"),
      "txns_per_channel": txns_per_channel, "seed": 0, "channels_simulated": [0],
      "rows": [{"preset": r["preset"], "pattern": r["pattern"],
                "region_bytes": r["region_bytes"], "reference_cycles": r["reference_cycles"],
                "reference_gbps": r["reference_gbps"],
                "reference_row_hit_rate": r["reference_row_hit_rate"],
                "peak_gbps": r["peak_gbps"]} for r in rows]}
  with open(path, "w") as f:
    json.dump(golden, f, indent=1)
    f.write("\n")


def main(argv: list[str]) -> int:
  opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
  presets = opts.get("presets", ",".join(config.available("dram"))).split(",")
  patterns = opts.get("patterns", ",".join(dram.PATTERNS)).split(",")
  n = int(opts.get("txns_per_channel", 32768))
  rows = []
  print("| preset | pattern | peak GB/s | model GB/s | reference GB/s | error | target |")
  print("|---|---|---:|---:|---:|---:|---:|")
  with jax.default_device(jax.devices("cpu")[0]):
    for name in presets:
      for pat in patterns:
        row = compare(name, pat, n)
        rows.append(row)
        tgt = f"{row['target']:.0%}" if row["target"] else "-"
        print(f"| {name} | {pat} | {row['peak_gbps']:.1f} | {row['model_gbps']:.2f} | "
              f"{row['reference_gbps']:.2f} | {row['time_error']:+.1%} | {tgt} |",
              flush=True)
  print("\n| preset | peak GB/s | unloaded latency ns | "
        + " | ".join(f"NDP {lv} GB/s" for lv in dram.LEVELS) + " |")
  print("|---|---:|---:|" + "---:|" * len(dram.LEVELS))
  levels = {}
  for name in presets:
    pre = config.load("dram", name)
    bw = {lv: float(dram.internal_stream_bandwidth_gbps(pre.spec, pre.params, lv))
          for lv in dram.LEVELS}
    levels[name] = bw
    lat = float(dram.unloaded_read_latency_ns(pre.spec, pre.params))
    peak = float(dram.peak_bandwidth_gbps(pre.spec, pre.params))
    print(f"| {name} | {peak:.1f} | {lat:.1f} | "
          + " | ".join(f"{bw[lv]:.1f}" for lv in dram.LEVELS) + " |")
  if "write_golden" in opts:
    write_golden(opts["write_golden"], rows, n)
  if "out" in opts:
    with open(opts["out"], "w") as f:
      json.dump({"patterns": rows, "internal_stream_gbps": levels}, f, indent=1)
  bad = [r for r in rows if r["target"] and abs(r["time_error"]) > r["target"]]
  print(f"\n{len(rows) - len(bad)}/{len(rows)} within target "
        f"({sum(1 for r in rows if r['target'])} with a target)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
