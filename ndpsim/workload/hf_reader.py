"""One HuggingFace config dict of a known family, read key by key
(:class:`_HfReader`): transformers' default when a key is absent (recorded for
the load's note), integer and per-layer-list checks, and one-line errors
naming the file, the key and the model_type.  Used by
:mod:`ndpsim.workload.hf_config`.
"""
from __future__ import annotations

from typing import Any

from ndpsim.base import ConfigError
from ndpsim.workload.hf_families import HfFamily


class _HfReader:
  """Reads one config dict of a known family: every value by key, with
  transformers' default when absent (recorded), integer and per-layer-list
  checks, and one-line errors naming the file, the key and the model_type."""

  def __init__(self, cfg: dict, where: str, mt: str, family: HfFamily):
    self.cfg, self.where, self.mt, self.family = cfg, where, mt, family
    self.defaults = dict(family.defaults)
    self.defaulted: dict[str, Any] = {}

  def err(self, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{self.where}: key {key!r} (model_type {self.mt!r}) {msg}")

  def has(self, key: str) -> bool:
    return self.cfg.get(key) is not None

  def get(self, key: str, fallback: Any = None) -> Any:
    """The value, else transformers' default (noted), else ``fallback``."""
    if self.cfg.get(key) is not None:
      return self.cfg[key]
    if key in self.defaults:
      v = self.defaults[key]
      if key == "tie_word_embeddings" or (type(v) is int and v > 1):  # sizes
        self.defaulted[key] = v
      return v
    return fallback

  def need(self, key: str) -> Any:
    v = self.get(key)
    if v is None:
      raise self.err(key, "is missing and transformers has no default for it; add "
                     f"\"{key}\": <value> (a whole config.json from the model's repo "
                     "has it)")
    return v

  def integer(self, key: str, v: Any = None, *, layers: int = 0) -> int:
    """``v`` (default: the key's value) as an integer; a per-layer list of
    ``layers`` equal values is that value, unequal ones are refused."""
    v = self.need(key) if v is None else v
    if isinstance(v, list):
      if not v or (layers and len(v) != layers):
        raise self.err(key, f"is a list of {len(v)} values; a per-layer list needs "
                       f"{layers} (one per layer)")
      if len(set(map(str, v))) != 1:
        raise self.err(key, f"differs between layers ({_short(v)}); per-layer values "
                       "are not modelled -- write one value for every layer")
      v = v[0]
    if (isinstance(v, bool) or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())):  # also NaN, Infinity
      raise self.err(key, f"must be an integer, not {v!r}")
    return int(v)

  def flag(self, key: str, default: bool = False) -> bool:
    v = self.get(key, default)
    if not isinstance(v, bool):
      raise self.err(key, f"must be true or false, not {v!r}")
    return v

  def refuse_unless(self, key: str, ok: bool, what: str, write: str) -> None:
    if not ok:
      raise self.err(key, f"is {self.cfg.get(key)!r}: {what} is not modelled; "
                     f"write {write} or describe the model in a model JSON "
                     "(model_io.save_model_json)")


def _short(v: list) -> str:
  return str(v) if len(v) <= 6 else f"[{', '.join(map(str, v[:6]))}, ...]"
