"""Numeric field ranges: what the float32 engine can carry and what real
hardware looks like, with unit-slip hints (split from :mod:`ndpsim.config`,
which re-exports every public name here).

Every numeric field of a spec or params dataclass has a :class:`Range`
(a table per kind, ``RANGES`` beside its dataclasses, registered with
:func:`register_ranges`): a *hard* range the float32 engine can carry (outside
it the value is always refused) and a *plausible* range for real hardware in the
field's unit (outside it the value is refused with a "did you mean" hint naming
the likely unit slip, e.g. GB written as bytes, unless the check runs inside
:func:`allowing_implausible`; the binary's flag is ``--allow_implausible``).
Zero passes both where a field allows it (``zero_ok``).

This module imports nothing from ndpsim but :mod:`ndpsim.base`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, NamedTuple

from ndpsim.base import ConfigError

class Range(NamedTuple):
  """Allowed values of one numeric field.

  unit: the field's unit, for messages ("GB/s", "bytes", "MHz", ...).
  hard: (lo, hi) the float32 engine carries without overflow or underflow in
    any result or gradient (each field at either end with the others at
    plausible values: mixtral-8x7b, 512 + 64 tokens, largest gradient ~2e14);
    outside it the value is always refused.  Several fields at their ends at
    once may still overflow: ``study_io.check_finite`` stops such a run in one
    line naming the quantity.
  plausible: (lo, hi) real hardware lies in; outside it the value is refused
    unless implausible values are allowed (:func:`allowing_implausible`).
  slips: unit mistakes tried in order, (factor, label): a value outside the
    plausible range that ``value * factor`` brings into it gets the hint
    "did you mean {value * factor} ({label})?".
  note: said when no slip fits (e.g. "count clock cycles of tCK, not ns").
  hard_what: what the hard range is, for messages.
  """
  unit: str
  hard: tuple[float, float]
  plausible: tuple[float, float]
  slips: tuple[tuple[float, str], ...] = ()
  note: str = ""
  hard_what: str = "what the float32 engine can carry"


# Unit slips per unit, most likely first.
BYTES_SLIPS = ((1e9, "GB given as bytes"), (2.0 ** 30, "GiB given as bytes"),
               (1e6, "MB given as bytes"), (2.0 ** 20, "MiB given as bytes"),
               (1e3, "kB given as bytes"), (2.0 ** 10, "KiB given as bytes"))
GBPS_SLIPS = ((1e-9, "B/s given as GB/s"), (1e-6, "kB/s given as GB/s"),
              (1e-3, "MB/s given as GB/s"), (1e3, "TB/s given as GB/s"),
              (1.0 / 8.0, "Gbit/s given as GB/s"))
MHZ_SLIPS = ((1e3, "GHz given as MHz"), (1e-6, "Hz given as MHz"),
             (1e-3, "kHz given as MHz"))
NS_SLIPS = ((1e-3, "ps given as ns"), (1e9, "s given as ns"), (1e3, "us given as ns"),
            (1e6, "ms given as ns"))
US_SLIPS = ((1e6, "s given as us"), (1e3, "ms given as us"), (1e-3, "ns given as us"))
FRACTION_SLIPS = ((1e-2, "a percentage given as a fraction"),)

# Common ranges.  Hard limits keep every time, byte count and derivative of a
# whole run (up to ~1e14 bytes moved, ~1e16 FLOP) inside float32 (3.4e38, with
# normal numbers from 1.2e-38); plausible limits span today's parts with a
# wide margin (decades beyond the shipped presets).
def bandwidth_range(plausible=(0.01, 1e5)) -> Range:
  return Range("GB/s", (1e-6, 1e9), plausible, GBPS_SLIPS)


def clock_range(plausible=(10.0, 1e4)) -> Range:
  return Range("MHz", (1e-3, 1e7), plausible, MHZ_SLIPS)


def bytes_range(plausible, hard=(1.0, 1e15)) -> Range:
  return Range("bytes", hard, plausible, BYTES_SLIPS)


def fraction_range(plausible=(0.01, 1.0)) -> Range:
  return Range("", (1e-6, 1.0), plausible, FRACTION_SLIPS,
               hard_what="a fraction in (0, 1] the float32 engine can carry")


def count_range(plausible, hard=(1.0, 2.0 ** 24), unit="count") -> Range:
  return Range(unit, hard, plausible)


_RANGES: dict[type, dict[str, Range]] = {}


def register_ranges(cls: type, table: dict[str, Range]) -> None:
  """Declares the ranges of the numeric fields of dataclass ``cls``."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(table) - names)
  if unknown:
    raise ValueError(f"ranges of {cls.__name__} name unknown fields {unknown}")
  _RANGES[cls] = dict(table)


def ranges_of(cls: type) -> dict[str, Range]:
  """The registered ranges of ``cls``'s fields ({} if none)."""
  return dict(_RANGES.get(cls, {}))


def leaf_ranges(obj: Any, prefix: str = "") -> dict[str, Range]:
  """{dotted path: Range} of every numeric field of a spec or params dataclass,
  nested parts included (``ndp.dram.tck_ns``; tuple entries as ``name[i]``).
  Fields without a registered range are left out."""
  out: dict[str, Range] = {}
  table = _RANGES.get(type(obj), {})
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    path = f"{prefix}{f.name}"
    if dataclasses.is_dataclass(v):
      out.update(leaf_ranges(v, path + "."))
    elif f.name in table:
      if isinstance(v, tuple):
        out.update({f"{path}[{i}]": table[f.name] for i in range(len(v))})
      else:
        out[path] = table[f.name]
  return out


_ALLOW_IMPLAUSIBLE = contextvars.ContextVar("ndpsim_allow_implausible", default=False)


@contextlib.contextmanager
def allowing_implausible(allow: bool = True):
  """Within the block, values outside a field's plausible range (but inside its
  hard range) are accepted (``--allow_implausible``)."""
  token = _ALLOW_IMPLAUSIBLE.set(bool(allow))
  try:
    yield
  finally:
    _ALLOW_IMPLAUSIBLE.reset(token)


def implausible_allowed() -> bool:
  return _ALLOW_IMPLAUSIBLE.get()


def fmt_number(x: float) -> str:
  """A short number for messages: 1.5e9, 0.416, 2617."""
  s = f"{x:.4g}"
  if "e" in s:
    mant, exp = s.split("e")
    s = f"{mant}e{int(exp)}"
  return s


def _span(lo_hi: tuple[float, float], unit: str) -> str:
  return f"{fmt_number(lo_hi[0])} to {fmt_number(lo_hi[1])}" + (f" {unit}" if unit else "")


def _slip_hint(v: float, rng: Range) -> str:
  lo, hi = rng.plausible
  for factor, label in rng.slips:
    if (v < lo and factor > 1) or (v > hi and factor < 1):
      w = v * factor
      if lo <= w <= hi:
        return f"did you mean {fmt_number(w)} ({label})?"
  return ""


def check_range(v: float, rng: Range, where: str, field: str,
                zero_ok: bool = False) -> None:
  """Refuses ``v`` outside ``rng``'s hard range, or outside its plausible range
  unless implausible values are allowed; one line naming the field, the value,
  the range and the likely unit slip."""
  if zero_ok and v == 0:
    return
  hint = _slip_hint(v, rng)
  hint = f"; {hint} Else" if hint else (f"; {rng.note};" if rng.note else ";")
  zero = " or 0" if zero_ok else ""
  lo, hi = rng.hard
  if not lo <= v <= hi:
    raise ConfigError(f"{where}: field {field} is {fmt_number(v)}, outside "
                      f"{rng.hard_what} ({_span(rng.hard, rng.unit)}{zero})"
                      f"{hint} write a value in that range")
  lo, hi = rng.plausible
  if not lo <= v <= hi and not implausible_allowed():
    raise ConfigError(f"{where}: field {field} is {fmt_number(v)}, implausible"
                      f"{' for ' + rng.unit if rng.unit else ''} (plausible {_span(rng.plausible, rng.unit)}{zero})"
                      f"{hint} write a plausible value, or give --allow_implausible "
                      "(Python: allow_implausible=True) to keep it")
