"""``python -m ndpsim.probe ndp ...``: one GEMV / small GEMM on one NDP unit.

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.hw.ndp import (BOUNDS, capacity_bytes, matmul_breakdown, peak_flops,
                           stream_bandwidth_gbps)
from ndpsim.probe import REQUIRED


PROBE_ARGS = {
    "preset": (str, "ddr5_rank_ndp_dimm", "NDP preset name or .json path"),
    "rows": (int, REQUIRED, "weight rows (reduction dim)"),
    "cols": (int, REQUIRED, "weight columns (outputs)"),
    "tokens": (int, 1, "tokens (GEMV at 1)"),
    "weight_bytes": (float, 2.0, "bytes per weight element"),
    "act_bytes": (float, 2.0, "bytes per activation element"),
}


def probe(args: dict) -> dict:
  """One GEMV / small GEMM on one NDP unit, as a JSON-able dict."""
  for f in ("rows", "cols", "tokens"):
    if args[f] < 0:
      raise ConfigError(f"--{f} is {args[f]}; write an integer >= 0")
  for f in ("weight_bytes", "act_bytes"):
    if not args[f] > 0:
      raise ConfigError(f"--{f} is {args[f]}; write a positive byte count, e.g. 2")
  pre = config.load("ndp", args["preset"])
  spec, params = pre.spec, pre.params
  r = matmul_breakdown(spec, params, args["rows"], args["cols"], args["tokens"],
                       args["weight_bytes"], args["act_bytes"])
  t = float(r["time_s"])
  return {
      "preset": pre.name, "rows": args["rows"], "cols": args["cols"],
      "tokens": args["tokens"], "time_s": t,
      "stream_s_per_pass": float(r["stream_s"]), "mac_s": float(r["mac_s"]),
      "fill_s": float(r["fill_s"]), "writeback_s": float(r["writeback_s"]),
      "passes": int(r["passes"]), "tokens_per_pass": int(r["tokens_per_pass"]),
      "weight_bytes": float(r["weight_bytes"]),
      "stream_bandwidth_gbps": float(stream_bandwidth_gbps(spec, params)),
      "peak_gflops": float(peak_flops(spec, params)) / 1e9,
      "capacity_bytes": capacity_bytes(spec),
      "bound": BOUNDS[int(r["bound"])] if t > 0 else "none",
  }
