"""Simulation results: a pytree per sequence group, summaries and tables.

Every field of :class:`SimResult` has a leading axis G (sequence groups =
num_seqs / batch_size); ``step_s`` is [G, T].  Times in seconds, sizes in
bytes, counts as floats (so results stay differentiable and stackable).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ndpsim import base


@base.params_dataclass
class SimResult:
  """Per sequence group.

  ttft_s: time to first token (prefill + LM head).
  step_s: [T] latency of each decode step.
  e2e_s: ttft_s + sum(step_s).
  tpot_s: mean decode step latency (time per output token).
  gpu_busy_s, link_to_gpu_busy_s, link_to_ndp_busy_s: busy time per lane.
  ndp_unit_busy_s: [N] busy time per NDP unit.
  ndp_lane_s: NDP lane time: sum over layers of the slowest unit's time.
  prefill_ndp_lane_s: the same for the prefill only.
  ndp_imbalance: mean over layers with NDP work of max/mean unit load.
  bytes_to_gpu, bytes_to_ndp: demand bytes per link direction (weights,
    partial sums / activations); background loads are in prefetched_bytes.
  gpu_hits, gpu_misses: activated experts resident / not resident on the GPU
    when their layer ran (decode steps only).
  expert_bytes_gpu, expert_bytes_ndp: expert weight bytes processed on each
    side (fractional for split experts); they add up to activated_expert_bytes.
  prefetched_bytes: bytes loaded by background transfers;
  prefetch_used_bytes / prefetch_wasted_bytes: of those, experts that did /
    did not serve an activation on the GPU.
  peak_gpu_bytes: GPU-memory high-water mark: non-expert weights, KV cache at
    the full context, the runtime reserve, and the most experts held at once
    (resident, queued for residency, or loaded on demand for one layer).
  gpu_capacity_bytes: the GPU's memory capacity (peak_gpu_bytes never exceeds
    it: the engine enforces it).
  prefill_*: the same quantities for the prefill phase only.
  """
  ttft_s: Any
  step_s: Any
  e2e_s: Any
  tpot_s: Any
  gpu_busy_s: Any
  ndp_unit_busy_s: Any
  ndp_lane_s: Any
  prefill_ndp_lane_s: Any
  link_to_gpu_busy_s: Any
  link_to_ndp_busy_s: Any
  ndp_imbalance: Any
  bytes_to_gpu: Any
  bytes_to_ndp: Any
  gpu_hits: Any
  gpu_misses: Any
  expert_bytes_gpu: Any
  expert_bytes_ndp: Any
  activated_expert_bytes: Any
  prefetched_bytes: Any
  prefetch_used_bytes: Any
  prefetch_wasted_bytes: Any
  peak_gpu_bytes: Any
  gpu_capacity_bytes: Any
  prefill_expert_bytes_gpu: Any
  prefill_expert_bytes_ndp: Any

  @classmethod
  def from_raw(cls, out: dict, expert_bytes: float, gpu_fixed_bytes,
               batch: int, gpu_capacity_bytes=jnp.inf) -> "SimResult":
    acc, accp = out["acc"], out["acc_prefill"]
    step = out["step_s"]
    ttft = out["ttft_s"]
    imb = acc.imbalance_sum / jnp.maximum(acc.imbalance_n, 1.0)
    used = jnp.minimum(out["prefetch_used_bytes"], out["prefetched_bytes"])
    return cls(
        ttft_s=ttft, step_s=step, e2e_s=ttft + jnp.sum(step, axis=-1),
        tpot_s=jnp.mean(step, axis=-1), gpu_busy_s=acc.gpu_busy_s,
        ndp_unit_busy_s=acc.unit_busy_s, ndp_lane_s=acc.ndp_lane_s,
        prefill_ndp_lane_s=accp.ndp_lane_s, link_to_gpu_busy_s=acc.link_to_gpu_busy_s,
        link_to_ndp_busy_s=acc.link_to_ndp_busy_s, ndp_imbalance=imb,
        bytes_to_gpu=acc.bytes_to_gpu, bytes_to_ndp=acc.bytes_to_ndp,
        gpu_hits=acc.hits - accp.hits, gpu_misses=acc.misses - accp.misses,
        expert_bytes_gpu=acc.expert_bytes_gpu, expert_bytes_ndp=acc.expert_bytes_ndp,
        activated_expert_bytes=acc.activated_bytes,
        prefetched_bytes=out["prefetched_bytes"], prefetch_used_bytes=used,
        prefetch_wasted_bytes=out["prefetched_bytes"] - used,
        peak_gpu_bytes=gpu_fixed_bytes + jnp.maximum(
            acc.peak_prefill, acc.peak_resident + acc.peak_staging) * expert_bytes,
        gpu_capacity_bytes=jnp.broadcast_to(jnp.asarray(gpu_capacity_bytes, jnp.float32),
                                            jnp.shape(ttft)),
        prefill_expert_bytes_gpu=accp.expert_bytes_gpu,
        prefill_expert_bytes_ndp=accp.expert_bytes_ndp)


SCALAR_FIELDS = ("ttft_s", "e2e_s", "tpot_s", "gpu_busy_s", "ndp_lane_s", "link_to_gpu_busy_s",
                 "link_to_ndp_busy_s", "ndp_imbalance", "bytes_to_gpu", "bytes_to_ndp",
                 "gpu_hits", "gpu_misses", "expert_bytes_gpu", "expert_bytes_ndp",
                 "prefetched_bytes", "prefetch_used_bytes", "prefetch_wasted_bytes",
                 "peak_gpu_bytes")


def describe(x) -> dict[str, float]:
  """mean, p50, p99 and the half-width of a 95% interval of the mean."""
  a = np.asarray(x, np.float64).reshape(-1)
  n = a.size
  sd = float(a.std(ddof=1)) if n > 1 else 0.0
  return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
          "p99": float(np.percentile(a, 99)), "ci95": 1.96 * sd / np.sqrt(n) if n else 0.0,
          "n": int(n)}


def summarize(result: SimResult) -> dict[str, dict[str, float]]:
  """Summaries over sequence groups of every scalar field."""
  out = {f: describe(getattr(result, f)) for f in SCALAR_FIELDS}
  hits, misses = np.sum(result.gpu_hits), np.sum(result.gpu_misses)
  out["gpu_hit_rate"] = {"mean": float(hits / max(hits + misses, 1.0))}
  busy = np.asarray(result.ndp_unit_busy_s)
  out["ndp_unit_busy_s"] = {"mean_per_unit": busy.mean(axis=0).tolist()}
  return out


def lane_breakdown(result: SimResult) -> dict[str, float]:
  """Mean busy seconds per lane, and each as a fraction of end-to-end time."""
  e2e = float(np.mean(result.e2e_s))
  lanes = {"gpu": float(np.mean(result.gpu_busy_s)),
           "ndp_lane": float(np.mean(result.ndp_lane_s)),
           "link_to_gpu": float(np.mean(result.link_to_gpu_busy_s)),
           "link_to_ndp": float(np.mean(result.link_to_ndp_busy_s))}
  return {**{f"{k}_s": v for k, v in lanes.items()},
          **{f"{k}_frac": v / e2e if e2e else 0.0 for k, v in lanes.items()},
          "e2e_s": e2e}


def breakdown_table(rows: dict[str, SimResult]) -> str:
  """Markdown table of per-lane busy time, one row per label."""
  head = "| run | e2e s | TTFT s | TPOT ms | GPU busy | NDP lane | link->GPU | link->NDP |"
  lines = [head, "|" + "---|" * 8]
  for label, r in rows.items():
    b = lane_breakdown(r)
    lines.append(f"| {label} | {b['e2e_s']:.3f} | {float(np.mean(r.ttft_s)):.3f} | "
                 f"{1e3 * float(np.mean(r.tpot_s)):.2f} | {b['gpu_frac']:.0%} | "
                 f"{b['ndp_lane_frac']:.0%} | {b['link_to_gpu_frac']:.0%} | "
                 f"{b['link_to_ndp_frac']:.0%} |")
  return "\n".join(lines)


# Request-level quantities: what a serving simulator reports per request.
REQUEST_FIELDS = ("ttft_s", "tpot_s", "e2e_s", "bytes_to_gpu", "bytes_to_ndp",
                  "prefetched_bytes", "gpu_hits", "gpu_misses")


def per_group(result: SimResult) -> dict[str, list[float]]:
  """Each of :data:`REQUEST_FIELDS` per sequence group (G floats each, in group
  order): latencies in s, bytes, hit/miss counts of the group's decode."""
  return {f: [float(x) for x in np.asarray(getattr(result, f), np.float64).reshape(-1)]
          for f in REQUEST_FIELDS}
