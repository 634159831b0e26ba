"""``python -m ndpsim.probe dram ...``: one access pattern over a region of a DRAM preset (closed-form timing).

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.hw.dram import (LEVELS, PATTERNS, capacity_bytes, internal_stream_bandwidth_gbps,
                            ndp_stream_time_ns, peak_bandwidth_gbps, read,
                            unloaded_read_latency_ns)
from ndpsim.probe import REQUIRED


PROBE_ARGS = {
    "preset": (str, REQUIRED, "a hw_configs/dram preset name or .json path"),
    "pattern": (str, "stream", f"one of {', '.join(PATTERNS)}"),
    "bytes": (int, 64 << 20, "region size in bytes"),
    "request_bytes": (int, 0, "request size in bytes (0: one transaction)"),
    "queue_depth": (int, 0, "controller transaction queue depth (0: preset's)"),
    "level": (str, "", f"also report NDP internal streaming at one of {', '.join(LEVELS)}"),
}


def probe(args: dict) -> dict:
  """``python -m ndpsim.probe dram --preset=... --pattern=... --bytes=...``."""
  pre = config.load("dram", args["preset"])
  spec, params = pre.spec, pre.params
  if args["pattern"] not in PATTERNS:
    raise ConfigError(f"--pattern={args['pattern']!r} is not a pattern; write one of "
                      f"{', '.join(PATTERNS)}")
  if args["bytes"] <= 0:
    raise ConfigError(f"--bytes={args['bytes']} must be > 0; write a region size in bytes")
  if args["queue_depth"] < 0:
    raise ConfigError(f"--queue_depth={args['queue_depth']} must be >= 1 (0 keeps the "
                      "preset's)")
  if args["queue_depth"]:
    spec = base.replace(spec, transaction_queue_depth=args["queue_depth"])
  req = args["request_bytes"] or spec.transaction_bytes
  if req <= 0 or req % spec.transaction_bytes:
    raise ConfigError(f"--request_bytes={args['request_bytes']} must be a positive "
                      f"multiple of the transaction size {spec.transaction_bytes}")
  if args["bytes"] % req:
    raise ConfigError(f"--bytes={args['bytes']} must be a multiple of the request size "
                      f"{req}")
  if args["level"] and args["level"] not in LEVELS:
    raise ConfigError(f"--level={args['level']!r} is not a level; write one of "
                      f"{', '.join(LEVELS)}")
  r = read(spec, params, args["pattern"], args["bytes"], req)
  out = {"preset": pre.name, "pattern": args["pattern"], "bytes": args["bytes"],
         "request_bytes": req, "queue_depth": spec.transaction_queue_depth,
         "cycles": float(r.cycles), "time_ns": float(r.time_ns),
         "bandwidth_gbps": float(r.bandwidth_gbps),
         "peak_gbps": float(peak_bandwidth_gbps(spec, params)),
         "row_hit_rate": float(r.row_hit_rate), "activations": float(r.activations),
         "unloaded_read_latency_ns": float(unloaded_read_latency_ns(spec, params)),
         "capacity_bytes": capacity_bytes(spec)}
  if args["level"]:
    out["level"] = args["level"]
    out["internal_bandwidth_gbps"] = float(
        internal_stream_bandwidth_gbps(spec, params, args["level"]))
    out["ndp_stream_time_ns"] = float(
        ndp_stream_time_ns(spec, params, args["bytes"], args["level"]))
  return out

