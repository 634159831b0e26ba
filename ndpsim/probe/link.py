"""``python -m ndpsim.probe link ...``: transfers over a link preset.

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.hw.link import bandwidth_gbps, messages_time_s, transfers_time_s
from ndpsim.probe import REQUIRED


PROBE_ARGS = {
    "preset": (str, "pcie5_x16", "link preset name or .json path"),
    "bytes": (float, REQUIRED, "bytes per transfer (>= 0)"),
    "count": (int, 1, "number of back-to-back transfers (>= 1)"),
    "kind": (str, "bulk", "'bulk' (weight copy overhead) or 'message' (small-message overhead)"),
}


# Beyond this many bytes in all, times (bytes / bandwidth, with bandwidths down to
# the hard range's 1e-6 GB/s) and their derivatives leave float32.
PROBE_MAX_BYTES = 1e30


def probe(args: dict) -> dict:
  """Time of ``count`` transfers of ``bytes`` bytes over a link preset."""
  if not args["bytes"] >= 0:
    raise ConfigError(f"--bytes is {args['bytes']}; write a byte count >= 0")
  if args["count"] < 1:
    raise ConfigError(f"--count is {args['count']}; write an integer >= 1")
  if args["kind"] not in ("bulk", "message"):
    raise ConfigError(f"--kind is {args['kind']!r}; write 'bulk' or 'message'")
  b, n = float(args["bytes"]), int(args["count"])
  if not b * n <= PROBE_MAX_BYTES:  # also inf and NaN
    raise ConfigError(f"--bytes x --count is {config.fmt_number(b * n)} bytes, beyond "
                      "what the float32 model carries (up to "
                      f"{config.fmt_number(PROBE_MAX_BYTES)} bytes); give fewer bytes or "
                      "transfers")
  pre = config.load("link", args["preset"])
  spec, params = pre.spec, pre.params
  if args["kind"] == "bulk":
    t = float(transfers_time_s(spec, params, b, n))
    overhead = float(params.per_transfer_overhead_us) * 1e-6
  else:
    t = float(messages_time_s(spec, params, b, n))
    overhead = float(params.message_overhead_us) * 1e-6
  bw = float(bandwidth_gbps(spec, params))
  data_s = n * b / (bw * 1e9)
  fixed_s = (n * overhead + float(params.latency_ns) * 1e-9) if b > 0 else 0.0
  return {
      "preset": pre.name, "kind": args["kind"], "bytes": b, "count": n,
      "time_s": t, "data_s": data_s, "fixed_s": fixed_s,
      "payload_bandwidth_gbps": bw,
      "line_bandwidth_gbps": float(params.bandwidth_gbps),
      "effective_bandwidth_gbps": (n * b / t / 1e9) if t > 0 else 0.0,
      "full_duplex": spec.full_duplex,
      "bound": "bandwidth" if data_s >= fixed_s else "fixed_cost",
  }
