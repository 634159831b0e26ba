"""Scheduling policies by name.  See ``policies/base.py`` for the contract.

Every module of this package that defines module-level :class:`Policy`
objects registers them on import (discovery: adding a policy is adding one
file).  A user's policy file outside the package is registered with
:func:`load_module` (the experiment binary's ``--policy_module=PATH``) or
:func:`register`.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pathlib
import pkgutil
import sys

from ndpsim.base import ConfigError
from ndpsim.policies.base import (Placement, Policy, PolicyParams, Requests,  # noqa: F401
                                  Slots, Start, check_params, make_params, resolve_params)

REGISTRY: dict[str, Policy] = {}
_USER_SOURCES: dict[str, str] = {}  # policy name -> sha256 of its user file

# Shipped policies first, in this order (the experiment's tables follow it);
# any other module of the package is registered after them by name.
_ORDER = ("gpu_offload", "ndp_ep", "monde", "monde_resident", "ndp_tp", "tp_lb",
          "tp_lb_prefetch", "tp_lb_adaptive", "dynande", "tuned", "oracle")
_NOT_POLICIES = frozenset({"base", "balance"})


def register(policy: Policy, *, replace: bool = False) -> Policy:
  """Adds ``policy`` to the registry and returns it (so a module may write
  ``POLICY = register(Policy(...))``).  A different policy under a taken name
  raises ConfigError unless ``replace``."""
  if not isinstance(policy, Policy):
    raise ConfigError(f"register() takes a ndpsim.policies.Policy, not "
                      f"{type(policy).__name__}")
  old = REGISTRY.get(policy.name)
  if old is not None and old is not policy and not replace:
    raise ConfigError(f"a policy named {policy.name!r} is already registered; give "
                      "yours another name (Policy(name=...))")
  REGISTRY[policy.name] = policy
  return policy


def policies_of(module) -> list[Policy]:
  """The :class:`Policy` objects ``module`` defines at module level (its own
  ``init`` or ``place``; imported ones are not its), in definition order."""
  own = module.__name__
  return [v for v in vars(module).values() if isinstance(v, Policy)
          and own in (getattr(v.init, "__module__", None), getattr(v.place, "__module__", None))]


def _discover() -> None:
  mods = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_POLICIES]
  mods.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
  for name in mods:
    for pol in policies_of(importlib.import_module(f"{__name__}.{name}")):
      register(pol)


def load_module(path: str | pathlib.Path) -> list[str]:
  """Imports a user's policy file and registers every module-level Policy in
  it; returns their names.  One-line ConfigError if the file is missing,
  fails to import or defines no Policy."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f"policy module {str(p)!r} does not exist; give the path of a "
                      ".py file that defines a ndpsim.policies.Policy")
  digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
  mod_name = f"ndpsim_user_policy_{digest}"
  spec = importlib.util.spec_from_file_location(mod_name, p)
  if spec is None or spec.loader is None:
    raise ConfigError(f"policy module {str(p)!r} is not a Python file; give a .py file")
  mod = importlib.util.module_from_spec(spec)
  sys.modules[mod_name] = mod
  try:
    spec.loader.exec_module(mod)
  except Exception as e:  # pylint: disable=broad-except
    del sys.modules[mod_name]
    first = str(e).splitlines()[0] if str(e) else ""
    raise ConfigError(f"policy module {str(p)!r} failed to import: "
                      f"{type(e).__name__}: {first}") from e
  found = policies_of(mod)
  if not found:
    raise ConfigError(f"policy module {str(p)!r} defines no ndpsim.policies.Policy at "
                      "module level; add POLICY = Policy(name=..., ndp_mode=..., "
                      "init=..., place=...)")
  digest_src = hashlib.sha256(p.read_bytes()).hexdigest()
  for pol in found:
    register(pol, replace=REGISTRY.get(pol.name) is not None
             and REGISTRY[pol.name].place.__module__ == mod_name)
    _USER_SOURCES[pol.name] = digest_src
  return [pol.name for pol in found]


def user_source_digest(name: str) -> str | None:
  """sha256 of the user file that defined policy ``name`` (None for shipped
  policies): part of a cell's fingerprint, so --resume recomputes the cells of
  an edited policy file."""
  return _USER_SOURCES.get(name)


def names() -> list[str]:
  return list(REGISTRY)


def get(name: str) -> Policy:
  if name not in REGISTRY:
    close = difflib.get_close_matches(name, REGISTRY, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown policy {name!r}{hint}; write one of {names()} (or load "
                      "your own with --policy_module=PATH)")
  return REGISTRY[name]


_discover()
