"""The contracts every ndpsim module follows.

Two kinds of data describe a piece of hardware or a workload:

* ``*Spec`` -- a frozen, hashable dataclass of Python ints, strings, enums and
  tuples.  It fixes array shapes and control flow, so it is *static*: pass it to
  ``jax.jit`` as a static argument (or close over it).  Changing a spec
  recompiles.
* ``*Params`` -- a dataclass registered as a JAX pytree whose leaves are floats
  (Python floats or float arrays).  Every timing, bandwidth, clock, capacity,
  ratio and budget lives here, with its unit in its name.  Params are *traced*:
  ``jax.vmap`` sweeps them, ``jax.grad`` differentiates through them.

Time functions are pure: ``f(spec, params, sizes...) -> time``.  They never read
global state, never branch in Python on a traced value (use ``jnp.where`` and
masks), and loops are ``lax.scan`` with static lengths.

Units: names end in the unit (``_ns``, ``_s``, ``_cycles``, ``_gbps`` = 1e9
bytes/s, ``_bytes``, ``_mhz``, ``_flops``).  Bandwidth "GB/s" is decimal.

Errors in user input raise :class:`ConfigError` with one line naming where the
value came from, the field, and what to write instead.  Nothing is clamped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")

PROVENANCES = ("spec", "measured", "assumed", "derived")


class ConfigError(ValueError):
  """Bad user input: the message names the source, the field and the fix."""


def spec_dataclass(cls: type[T]) -> type[T]:
  """Frozen, hashable dataclass for static structure (counts, enums, names)."""
  return dataclasses.dataclass(frozen=True)(cls)


def params_dataclass(cls: type[T]) -> type[T]:
  """Frozen dataclass registered as a pytree; every field is a traced leaf.

  Fields may hold nested params dataclasses (they become sub-trees).
  """
  cls = dataclasses.dataclass(frozen=True)(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
  return cls


def replace(obj: T, **changes: Any) -> T:
  """``dataclasses.replace`` re-exported for specs and params."""
  return dataclasses.replace(obj, **changes)


def as_arrays(params: T, dtype=jnp.float32) -> T:
  """Params with every leaf converted to a float array (for stacking/vmap)."""
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def stack(params_list: list[T]) -> T:
  """Stack a list of params pytrees along a new leading axis (for vmap)."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                                *params_list)
