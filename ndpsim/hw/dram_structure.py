"""Static structure of an access pattern under a DRAM part's address mapping.

For each pattern this works out, in Python from the ``DramSpec`` alone, what
the closed forms in ``ndpsim.hw.dram`` need: how many banks one channel
interleaves at a time, how consecutive reads relate (another rank, another
bank group, the same bank group), how many reads each bank serves per row
visit, whether the next row visit reuses the same banks, and how many
requests the controller can see ahead.  Nothing here is traced.
"""
from __future__ import annotations

import dataclasses
import math

from ndpsim.hw.dram_spec import DramSpec, row_span_transactions  # noqa: F401  (re-exported)

BANK_FIELDS = ("ra", "bg", "ba")


@dataclasses.dataclass(frozen=True)
class Rotation:
  """Per-channel interleaving of one pattern (all counts per channel).

  banks: banks read round-robin within one row visit (P).
  ranks: distinct ranks among them.  rank_groups: distinct (rank, bank group).
  steps_rank / steps_group / steps_same: of the reads of one rotation (banks x
    reads_per_turn), how many follow a read of another rank / another bank
    group of the same rank / the same bank group.
  reads_per_turn: consecutive reads one bank gets per turn (request size).
  reads_per_visit: reads a bank serves per row visit.
  same_banks: the next row visit reuses the same banks (else: other banks,
    with a previously opened row).
  window: transactions the controller sees ahead (transaction queue plus the
    per-bank queues of the interleaved banks).
  act_same_group: consecutive ACTs go to the same bank group (tRRD_L).
  """
  banks: int
  ranks: int
  rank_groups: int
  steps_rank: int
  steps_group: int
  steps_same: int
  reads_per_turn: int
  reads_per_visit: int
  same_banks: bool
  window: int
  act_same_group: bool


def channel_fields(spec: DramSpec) -> list[str]:
  """Mapping fields of one channel's address stream, LSB first, minus 'ch'."""
  return [f for f in reversed(spec.mapping_fields()) if f != "ch"]


def rotation_of(spec: DramSpec, fields: list[str], reads_per_turn: int,
                reads_per_visit: int, same_banks: bool) -> Rotation:
  """Rotation over the bank fields ``fields`` (LSB first) of one channel."""
  sizes = spec.field_sizes()
  fields = [f for f in fields if f in BANK_FIELDS and sizes[f] > 1]
  p = math.prod(sizes[f] for f in fields)
  ranks = sizes["ra"] if "ra" in fields else 1
  rgs = ranks * (sizes["bg"] if "bg" in fields else 1)
  counts = {"R": 0, "S": 0, "L": 0}
  for k, f in enumerate(fields):
    above = math.prod(sizes[g] for g in fields[k + 1:])
    n = (sizes[f] - 1) * above + (1 if k == len(fields) - 1 else 0)
    changed = fields[:k + 1]
    rel = "R" if "ra" in changed else "S" if "bg" in changed else "L"
    counts[rel] += n
  if not fields:
    counts["L"] = 1
  m = reads_per_turn
  counts["L"] += p * (m - 1)
  window = spec.transaction_queue_depth + spec.bank_queue_depth * p
  first = fields[0] if fields else "ba"
  return Rotation(banks=p, ranks=ranks, rank_groups=rgs, steps_rank=counts["R"],
                  steps_group=counts["S"], steps_same=counts["L"],
                  reads_per_turn=m, reads_per_visit=reads_per_visit,
                  same_banks=same_banks, window=window,
                  act_same_group=first == "ba")


def pattern_rotation(spec: DramSpec, pattern: str, request_txns: int) -> Rotation:
  """The Rotation a pattern produces on one channel (see dram_cyclesim)."""
  ncol = spec.columns_per_row
  m = request_txns
  f = channel_fields(spec)
  ico = f.index("co")
  if pattern == "onebank":
    return rotation_of(spec, [], m, ncol, True)
  if pattern == "banks":
    return rotation_of(spec, ["bg", "ba", "ra"], m, ncol, True)
  if pattern == "stream":
    below = f[:ico]
    above = [x for x in f[ico + 1:]]
    lowest_outer = next((x for x in above if x == "ro" or spec.field_sizes()[x] > 1), "ro")
    return rotation_of(spec, below, m, ncol, lowest_outer == "ro")
  if pattern == "strided":
    above = f[ico + 1:]
    bank_above = above[:above.index("ro")] if "ro" in above else above
    return rotation_of(spec, bank_above, m, m, True)
  if pattern == "random":
    return rotation_of(spec, ["bg", "ba", "ra"], m, m, True)
  raise ValueError(pattern)


def channel_above_column(spec: DramSpec) -> bool:
  """Whether the channel bits sit above the column bits in the mapping."""
  f = spec.mapping_fields()
  return f.index("ch") < f.index("co")
