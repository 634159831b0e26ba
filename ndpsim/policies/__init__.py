"""Scheduling policies by name.  See ``policies/base.py`` for the contract."""
from __future__ import annotations

import difflib

from ndpsim.base import ConfigError
from ndpsim.policies import (gpu_offload, monde, monde_resident, ndp_ep, ndp_tp, oracle,
                             tp_lb, tp_lb_adaptive, tp_lb_prefetch, tuned)
from ndpsim.policies.base import (Placement, Policy, PolicyParams, PolicyState, Slots,
                                  check_params, make_params)

REGISTRY: dict[str, Policy] = {
    p.name: p
    for p in (gpu_offload.POLICY, ndp_ep.POLICY, monde.POLICY, monde.POLICY_EQ6,
              monde_resident.POLICY, ndp_tp.POLICY, tp_lb.POLICY, tp_lb_prefetch.POLICY,
              tp_lb_adaptive.POLICY, tuned.POLICY, oracle.POLICY)
}


def register(policy: Policy) -> None:
  """Adds a policy to the registry (e.g. ``tuned``)."""
  REGISTRY[policy.name] = policy


def names() -> list[str]:
  return list(REGISTRY)


def get(name: str) -> Policy:
  if name not in REGISTRY:
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown policy {name!r}{hint}; write one of {names()}")
  return REGISTRY[name]
