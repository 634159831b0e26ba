"""The assumption study: how the headline moves with each assumption the paper leaves open.

Each row reruns the headline (every default model, the MoNDE variants and the
paper's framework, at the default lengths) with one assumption changed, through
the same ``ndpsim.studies`` code the experiment binary runs; the table gives
``tp_lb_prefetch``'s speedup over ``monde`` (mean and max over the models) and
over the two other readings of MoNDE.

    python3 -m benchmarks.assumptions --out=docs/results/assumptions.json

writes the rows as JSON and prints a Markdown table (the README's
"Assumptions" table is copied from it).  ``--rows=NAME,...`` reruns a subset;
``--num_seqs`` trades interval width for time.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "", "JSON file for the rows (empty: print only)")
flags.DEFINE_list("rows", [], "row names to run (empty: all)")
flags.DEFINE_integer("num_seqs", 4, "evaluated sequences per cell")
flags.DEFINE_integer("prompt_len", 512, "prompt tokens")
flags.DEFINE_integer("output_len", 512, "output tokens")

POLICIES = ("monde", "monde_eq6", "monde_resident", "tp_lb_prefetch")

# name -> (assumption, default, changed to, StudyConfig fields)
ROWS = {
    "default": ("(default)", "", "", {}),
    "ddr4_dimms": ("NDP-DIMM type", "DDR5-4800, 64 GB, 4 ranks",
                   "DDR4-3200, 32 GB, 4 ranks (Hermes-like)",
                   {"system": "paper_rtx5080_ddr4_ndp_dimm"}),
    "copy_3us": ("per-copy fixed cost", "11.6 us (measured)", "3 us",
                 {"overrides": ("link.per_transfer_overhead_us=3",)}),
    "copy_30us": ("per-copy fixed cost", "11.6 us (measured)", "30 us",
                  {"overrides": ("link.per_transfer_overhead_us=30",)}),
    "copy_330us": ("per-copy fixed cost", "11.6 us (measured)",
                   "330 us (one software runtime's overhead)",
                   {"overrides": ("link.per_transfer_overhead_us=330",)}),
    "pcie4": ("link", "PCIe 5.0 x16", "PCIe 4.0 x16 (half the bandwidth)",
              {"overrides": ("link.bandwidth_gbps=31.5076923",)}),
    "ndp_64mac": ("NDP compute", "128 MAC/cycle at 1 GHz (256 GFLOPS)",
                  "64 MAC/cycle (128 GFLOPS)", {"overrides": ("ndp.macs_per_cycle=64",)}),
    "ndp_512mac": ("NDP compute", "128 MAC/cycle at 1 GHz (256 GFLOPS)",
                   "512 MAC/cycle (1 TFLOPS)", {"overrides": ("ndp.macs_per_cycle=512",)}),
    "launch_4us": ("kernel launch", "1.3 us per chain, 0 per queued kernel (measured)",
                   "4 us serial per kernel (round-1 default)",
                   {"overrides": ("gpu.queued_launch_us=4",)}),
    "routing_flame": ("routing locality", "mixtral_8x7b preset", "flame_moe_290m preset",
                      {"routing": "flame_moe_290m"}),
    "routing_maverick": ("routing locality", "mixtral_8x7b preset",
                         "llama4_maverick preset", {"routing": "llama4_maverick"}),
    "routing_uniform": ("routing locality", "mixtral_8x7b preset",
                        "uniform (no locality)", {"routing": "uniform"}),
}


def run_row(name: str, num_seqs: int, prompt_len: int, output_len: int) -> dict:
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  what, default, changed, fields = ROWS[name]
  cfg = studies.StudyConfig(policies=POLICIES, studies=("headline",), num_seqs=num_seqs,
                            prompt_len=prompt_len, output_len=output_len, **fields)
  res = studies.resolve(cfg)
  t0 = time.perf_counter()
  rows = studies.run_cells(res, "/nonexistent", write=False)
  by_model: dict[str, dict] = {}
  for r in rows:
    by_model.setdefault(r["model"], {})[r["policy"]] = r["e2e_latency_s_mean"]
  ratios = {b: [m[b] / m["tp_lb_prefetch"] for m in by_model.values()]
            for b in ("monde", "monde_eq6", "monde_resident")}
  return {"name": name, "assumption": what, "default": default, "changed_to": changed,
          "config": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
          "per_model_e2e_s": by_model,
          "speedup_vs": {b: {"mean": sum(v) / len(v), "max": max(v), "per_model": v}
                         for b, v in ratios.items()},
          "wall_s": time.perf_counter() - t0}


def markdown(rows: list[dict]) -> str:
  out = ["| assumption | default | changed to | vs monde: mean | max | vs monde_eq6: mean |"
         " vs monde_resident: mean |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    s = r["speedup_vs"]
    out.append(f"| {r['assumption']} | {r['default']} | {r['changed_to']} | "
               f"{s['monde']['mean']:.2f}x | {s['monde']['max']:.2f}x | "
               f"{s['monde_eq6']['mean']:.2f}x | {s['monde_resident']['mean']:.2f}x |")
  return "\n".join(out)


def main(argv):
  del argv
  names = FLAGS.rows or list(ROWS)
  for n in names:
    if n not in ROWS:
      print(f"error: --rows: unknown row {n!r}; write some of {list(ROWS)}", file=sys.stderr)
      return 2
  rows = []
  for i, n in enumerate(names):
    print(f"[{i + 1}/{len(names)}] {n} ...", file=sys.stderr, flush=True)
    rows.append(run_row(n, FLAGS.num_seqs, FLAGS.prompt_len, FLAGS.output_len))
    print(f"  {rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    if FLAGS.out:
      pathlib.Path(FLAGS.out).write_text(json.dumps(rows, indent=1))
  print(markdown(rows))
  return 0


if __name__ == "__main__":
  app.run(main)
