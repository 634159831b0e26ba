"""Properties every policy must have, checked by simulation: shipped ones and
a user's alike (``pytest``: ``assert not check_policy(policy)``).

1. ``oracle`` is below it: no sequence group finishes before the ``oracle``
   bound of the same hardware and routing.
2. Memory within capacity: ``peak_gpu_bytes <= gpu_capacity_bytes``.
3. No reads of future routing: changing the decode routing from step ``t``
   on leaves the time to first token and every step before ``t`` unchanged.
4. Sequence independence: with ``batch_size=1`` a sequence's result does not
   depend on the other sequences simulated beside it (vmapped): changing
   every other sequence's routing leaves the first one's result unchanged.

:func:`check_policy` returns the violations found (empty when every property
holds), each one line naming the property and the numbers.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ndpsim import engine
from ndpsim.policies import base as pb
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

BOUND_RTOL = 1e-5  # float32 clocks


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the checks simulate: a system, a model and a small routing."""
  system: tuple
  model: M.MoeModelSpec
  routing: R.Routing


def default_setup(system=None, model=None, *, num_seqs: int = 2, prompt_len: int = 16,
                  output_len: int = 8, seed: int = 0) -> Setup:
  """The shipped default system (4 NDP units) and Mixtral-8x7B unless given;
  calibrated Mixtral routing of ``num_seqs`` short sequences."""
  from ndpsim.hw import system as system_mod  # pylint: disable=import-outside-toplevel
  if system is None:
    s = system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=4)
    system = (s.spec, s.params)
  model = model if model is not None else M.get_model("mixtral-8x7b")
  spec = R.RoutingSpec(num_seqs=num_seqs, prompt_len=prompt_len, output_len=output_len,
                       num_layers=M.num_moe_layers(model), num_experts=model.num_experts,
                       top_k=model.top_k)
  r = R.generate(jax.random.PRNGKey(seed), spec,
                 R.preset("mixtral_8x7b", model.num_experts, model.top_k))
  return Setup(system=system, model=model, routing=jax.tree_util.tree_map(np.asarray, r))


def _run(setup: Setup, policy, params, routing=None):
  r = engine.simulate(setup.system, setup.model, routing or setup.routing, policy, params)
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), r)


def _future_changed(routing: R.Routing, t0: int, num_experts: int) -> R.Routing:
  """``routing`` with every decode id from step ``t0`` on shifted by one expert
  (still k distinct ids per row)."""
  dec = np.array(routing.decode_ids)
  dec[:, t0:] = (dec[:, t0:] + 1) % num_experts
  return routing._replace(decode_ids=dec)


def _others_changed(routing: R.Routing, num_experts: int) -> R.Routing:
  """``routing`` with every sequence but the first shifted by one expert."""
  def shift(x):
    x = np.array(x)
    x[1:] = (x[1:] + 1) % num_experts
    return x
  return routing._replace(prefill_ids=shift(routing.prefill_ids),
                          decode_ids=shift(routing.decode_ids))


def check_policy(policy: pb.Policy, params: pb.PolicyParams | None = None,
                 setup: Setup | None = None) -> list[str]:
  """Runs the four checks of the module docstring; returns the violations."""
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  setup = setup or default_setup()
  pol = policies.get(policy) if isinstance(policy, str) else policy
  bad: list[str] = []
  res = _run(setup, pol, params)
  bound = _run(setup, "oracle", None)
  e2e, lo = res.e2e_s, bound.e2e_s
  if np.any(e2e < lo * (1.0 - BOUND_RTOL)):
    i = int(np.argmax(lo - e2e))
    bad.append(f"{pol.name}: below the oracle bound: e2e {e2e[i]:.6g} s < oracle "
               f"{lo[i]:.6g} s (group {i})")
  over = res.peak_gpu_bytes > res.gpu_capacity_bytes
  if np.any(over):
    i = int(np.argmax(res.peak_gpu_bytes - res.gpu_capacity_bytes))
    bad.append(f"{pol.name}: GPU memory over capacity: peak {res.peak_gpu_bytes[i]:.6g} B "
               f"> {res.gpu_capacity_bytes[i]:.6g} B (group {i})")
  T = np.asarray(setup.routing.decode_ids).shape[1]
  t0 = max(T // 2, 1)
  alt = _run(setup, pol, params, _future_changed(setup.routing, t0, setup.model.num_experts))
  if not (np.array_equal(alt.ttft_s, res.ttft_s)
          and np.array_equal(alt.step_s[:, :t0], res.step_s[:, :t0])):
    bad.append(f"{pol.name}: reads future routing: changing decode steps >= {t0} changed "
               "the time to first token or an earlier step")
  if np.asarray(setup.routing.prefill_ids).shape[0] > 1:
    alone = _run(setup, pol, params, _others_changed(setup.routing,
                                                     setup.model.num_experts))
    if not (np.array_equal(alone.e2e_s[0], res.e2e_s[0])
            and np.array_equal(alone.step_s[0], res.step_s[0])):
      bad.append(f"{pol.name}: sequence 0 takes {res.e2e_s[0]:.9g} s beside the others "
                 f"but {alone.e2e_s[0]:.9g} s when the others' routing changes")
  return bad
