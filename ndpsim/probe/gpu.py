"""``python -m ndpsim.probe gpu ...``: one matmul or attention call on a GPU preset.

The flags are :data:`PROBE_ARGS` (``{flag: (type, default, help)}``, read by
:mod:`ndpsim.probe`); :func:`probe` answers with one JSON-able dict.
"""
from __future__ import annotations

from ndpsim import base, config
from ndpsim.base import ConfigError
from ndpsim.hw.gpu import BOUNDS, attention_breakdown, chain_launch_s, matmul_breakdown


PROBE_ARGS = {
    "preset": (str, "rtx5080", "GPU preset name or .json path"),
    "op": (str, "matmul", "'matmul' or 'attention'"),
    "m": (int, -1, "matmul: tokens (rows of the activation)"),
    "n": (int, -1, "matmul: output columns"),
    "k": (int, -1, "matmul: reduction size"),
    "dtype": (str, "bf16", "tensor-core compute dtype"),
    "act_bytes": (float, 2.0, "bytes per activation element"),
    "weight_bytes": (float, 2.0, "bytes per weight element"),
    "q_tokens": (int, 1, "attention: new tokens per sequence"),
    "context_len": (int, -1, "attention: visible positions incl. the new tokens"),
    "q_heads": (int, 32, "attention: query heads"),
    "kv_heads": (int, 4, "attention: kv heads (1 for MLA absorbed)"),
    "head_dim": (int, 128, "attention: qk and v head dim"),
    "kv_bytes_per_token": (float, -1.0,
                           "attention: KV bytes per token (default 2 x kv_heads x head_dim "
                           "x act_bytes)"),
    "window": (int, 0, "attention: sliding window (0 = full)"),
    "batch": (int, 1, "attention: sequences"),
    "launch": (str, "preset", "'queued' (one kernel of a queued chain: queued_launch_us), "
               "'alone' (launched by itself: kernel_launch_us) or 'preset' (its "
               "launch_hidden)"),
}


def _matmul(spec, params, args: dict) -> tuple[dict, dict]:
  """Breakdown and the op-specific output fields of ``--op=matmul``."""
  for f in ("m", "n", "k"):
    if args[f] < 0:
      raise ConfigError(f"--{f} is {'missing' if args[f] == -1 else args[f]}; "
                        f"write --{f}=<integer >= 0>")
  r = matmul_breakdown(spec, params, args["m"], args["n"], args["k"], args["act_bytes"],
                       args["weight_bytes"], args["dtype"])
  out = {"m": args["m"], "n": args["n"], "k": args["k"],
         "tiles": int(r["tiles"]), "split_k": int(r["split_k"]), "waves": int(r["waves"])}
  return r, out


def _attention(spec, params, args: dict) -> tuple[dict, dict]:
  """Breakdown and the op-specific output fields of ``--op=attention``."""
  ctx = args["context_len"] if args["context_len"] >= 0 else args["q_tokens"]
  for f, v in (("q_tokens", args["q_tokens"]), ("q_heads", args["q_heads"]),
               ("kv_heads", args["kv_heads"]), ("head_dim", args["head_dim"]),
               ("batch", args["batch"])):
    if v < 1:
      raise ConfigError(f"--{f} is {v}; write an integer >= 1")
  if ctx < args["q_tokens"]:
    raise ConfigError(f"--context_len is {ctx}; write >= --q_tokens ({args['q_tokens']})")
  if args["window"] < 0:
    raise ConfigError(f"--window is {args['window']}; write 0 (full) or a positive window")
  kvb = args["kv_bytes_per_token"]
  if kvb < 0:
    kvb = 2.0 * args["kv_heads"] * args["head_dim"] * args["act_bytes"]
  r = attention_breakdown(spec, params, q_tokens=args["q_tokens"], context_len=ctx,
                          num_q_heads=args["q_heads"], num_kv_heads=args["kv_heads"],
                          qk_head_dim=args["head_dim"], v_head_dim=args["head_dim"],
                          kv_bytes_per_token=kvb, sliding_window=args["window"],
                          batch=args["batch"], act_dtype_bytes=args["act_bytes"],
                          dtype=args["dtype"])
  out = {"q_tokens": args["q_tokens"], "context_len": ctx, "pairs": float(r["pairs"]),
         "sm_utilization": float(r["sm_utilization"])}
  return r, out


def probe(args: dict) -> dict:
  """One matmul or attention call on a GPU preset, as a JSON-able dict."""
  op = args["op"]
  if op not in ("matmul", "attention"):
    raise ConfigError(f"--op is {op!r}; write 'matmul' or 'attention'")
  for f in ("act_bytes", "weight_bytes"):
    if not args[f] > 0:
      raise ConfigError(f"--{f} is {args[f]}; write a positive byte count, e.g. 2")
  if args["launch"] not in ("preset", "queued", "alone"):
    raise ConfigError(f"--launch is {args['launch']!r}; write 'queued', 'alone' or 'preset'")
  pre = config.load("gpu", args["preset"])
  spec, params = pre.spec, pre.params
  if args["launch"] != "preset":
    spec = base.replace(spec, launch_hidden=args["launch"] == "queued")
  if args["dtype"] not in spec.tensor_dtypes:
    raise ConfigError(f"--dtype is {args['dtype']!r}; {pre.name} has "
                      f"{list(spec.tensor_dtypes)}")
  r, out = (_matmul if op == "matmul" else _attention)(spec, params, args)
  t = float(r["time_s"])
  out.update({
      "preset": pre.name, "op": op, "dtype": args["dtype"], "time_s": t,
      "compute_s": float(r["compute_s"]), "memory_s": float(r["memory_s"]),
      "launch_s": float(r["launch_s"]), "flops": float(r["flops"]),
      "launch_hidden": spec.launch_hidden,
      "chain_launch_s": float(chain_launch_s(spec, params)),
      "dram_bytes": float(r["dram_bytes"]),
      "achieved_tflops": float(r["flops"]) / t / 1e12 if t > 0 else 0.0,
      "achieved_bandwidth_gbps": float(r["dram_bytes"]) / t / 1e9 if t > 0 else 0.0,
      "bound": BOUNDS[int(r["bound"])] if t > 0 else "none",
  })
  return out
