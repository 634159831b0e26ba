"""Hardware presets: JSON loading, validation and the name registry.

A preset is one JSON file per part under ``hw_configs/<kind>/<name>.json`` (``systems/`` for kind ``system``)::

    {
      "name": "DDR4_8Gb_x8_3200",
      "kind": "dram",
      "source": "DRAMsim3 configs/DDR4_8Gb_x8_3200.ini; JEDEC JESD79-4",
      "provenance": {"default": "spec", "t_rfc_cycles": "assumed"},
      "sources": {"t_rfc_cycles": "<URL or document>: <the figure taken from it>"},
      "spec":   { ...static fields of the kind's *Spec... },
      "params": { ...float fields of the kind's *Params... }
    }

``provenance`` maps field names (of ``spec`` or ``params``) to one of
``spec | measured | assumed | derived``; ``default`` applies to fields not
named.  What each label promises:

* ``spec``: the value is in the spec sheet or standard that ``source`` names;
* ``measured``: someone measured it and a reader can check it: the field must
  have a ``sources`` entry naming where (a URL, ``owner/repo`` issue or pull,
  arXiv id, DOI, or a result file of this repository under
  ``benchmarks/results/``) and the figure taken from it, e.g. ``"https://github.com/o/r/
  issues/29: 56.3 GB/s host-to-device"`` (the loader rejects a measured field
  without one);
* ``derived``: computed from other sourced figures; ``notes`` gives the arithmetic;
* ``assumed``: no source fixes it; ``notes`` gives the reasoning.

``sources`` (optional for the other labels) maps field names to such strings.
Each hardware module registers its kind with :func:`register_kind`,
giving a builder ``build(obj, where) -> (spec, params)`` that uses
:func:`take_fields` so that unknown keys, missing keys, wrong types and
non-positive values are all rejected the same way.  A field of a spec or
params may name another preset (e.g. an NDP unit's ``dram`` part); builders
resolve those with :func:`load`.

Every numeric field has a :class:`Range` (a table per kind, ``RANGES`` beside
its dataclasses, registered with :func:`register_ranges`): a *hard* range the
float32 engine can carry (outside it the value is always refused) and a
*plausible* range for real hardware in the field's unit (outside it the value
is refused with a "did you mean" hint naming the likely unit slip, e.g. GB
written as bytes, unless ``allow_implausible=True`` is given to :func:`load`
or the load runs inside :func:`allowing_implausible`; the binary's flag is
``--allow_implausible``).  Zero passes both where a field allows it.

The range machinery (:class:`Range`, the ``*_range`` helpers, :func:`check_range`,
:func:`allowing_implausible`, ...) lives in :mod:`ndpsim.ranges` and is
re-exported here.

Presets are found by name in ``hw_configs/`` (:func:`config_root`: the folder
named by ``$NDPSIM_HW_CONFIGS``, else the source tree beside the package, else
``<prefix>/share/ndpsim/hw_configs`` where a wheel installs them), or given as a
path to a ``.json`` file.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import pathlib
import re
import sys
import sysconfig
import types
import typing
from typing import Any, Callable, NamedTuple

from ndpsim.base import ConfigError, PROVENANCES
# The range machinery lives in ndpsim.ranges; these names are re-exported so
# that ``config.Range``, ``config.bytes_range`` etc. keep working.
from ndpsim.ranges import (  # noqa: F401  (re-exports)
    BYTES_SLIPS, FRACTION_SLIPS, GBPS_SLIPS, MHZ_SLIPS, NS_SLIPS, US_SLIPS, Range,
    allowing_implausible, bandwidth_range, bytes_range, check_range, clock_range,
    count_range, fmt_number, fraction_range, implausible_allowed, leaf_ranges,
    ranges_of, register_ranges)

_TOP_KEYS = {"name", "kind", "source", "provenance", "sources", "spec", "params", "notes"}

# A place a reader can open: a URL, a host/path, an arXiv id or a DOI.
_LOCATOR = re.compile(r"https?://\S+|\b[\w-]+(\.[\w-]+)*\.[a-z]{2,}/\S+|"
                      r"\barxiv[ :]*\d{4}\.\d{4,5}\S*|\bdoi[ :.]\S+|"
                      # a result file committed to this repository, with the command
                      # that wrote it in the file or beside it in the README
                      r"(?<![\w/])benchmarks/results/[\w.-]+\.json", re.IGNORECASE)
REPO_RESULT = re.compile(r"(?<![\w/])benchmarks/results/[\w.-]+\.json")


def names_place_and_figure(source: str) -> bool:
  """True if ``source`` names a place a reader can open (:data:`_LOCATOR`) and,
  outside that locator, a figure (a digit)."""
  return bool(_LOCATOR.search(source)) and bool(re.search(r"\d", _LOCATOR.sub("", source)))


class Preset(NamedTuple):
  """A loaded preset: static spec, traced params and its metadata."""
  name: str
  kind: str
  spec: Any
  params: Any
  source: str
  provenance: dict[str, str]
  path: str
  sources: dict[str, str] = {}


class _Kind(NamedTuple):
  build: Callable[[dict, str], tuple[Any, Any]]
  spec_cls: type
  params_cls: type


_KINDS: dict[str, _Kind] = {}


def register_kind(kind: str, spec_cls: type, params_cls: type,
                  build: Callable[[dict, str], tuple[Any, Any]]) -> None:
  """Registers a hardware kind (``dram``, ``gpu``, ``ndp``, ``link``, ``system``)."""
  _KINDS[kind] = _Kind(build, spec_cls, params_cls)


# The package whose import registers the shipped kinds.  It is looked up by name
# when a preset is first loaded (as a plugin is), so that config, which every
# hardware module imports, imports none of them: no import cycle config <-> hw.
KINDS_PACKAGE = "ndpsim.hw"


def _ensure_kinds_loaded() -> None:
  importlib.import_module(KINDS_PACKAGE)


# Where a non-editable install puts the presets: setup.cfg's
# [options.data_files] copies hw_configs/ to <data>/share/ndpsim/hw_configs,
# <data> being the install scheme's data path (the venv or interpreter prefix,
# or the user base for ``pip install --user``).
INSTALLED_SUBDIR = pathlib.Path("share", "ndpsim", "hw_configs")
ENV_VAR = "NDPSIM_HW_CONFIGS"


def config_root_candidates() -> list[tuple[str, pathlib.Path]]:
  """(label, folder) places searched for hw_configs/ when ``$NDPSIM_HW_CONFIGS``
  is unset, in order: the source tree beside the package (a checkout or an
  editable install), then the data folders of an installed wheel."""
  out = [("source tree", pathlib.Path(__file__).resolve().parent.parent / "hw_configs")]
  schemes = [sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")]
  datas = [sysconfig.get_path("data", scheme) for scheme in schemes]
  datas += [sys.prefix, sys.base_prefix]
  for data in dict.fromkeys(datas):
    out.append(("installed", pathlib.Path(data) / INSTALLED_SUBDIR))
  return out


def find_config_root(env: str | None,
                     candidates: list[tuple[str, pathlib.Path]]) -> pathlib.Path:
  """The hw_configs/ folder: ``env`` (the value of ``$NDPSIM_HW_CONFIGS``) when
  set, else the first of ``candidates`` that is a folder.  ConfigError naming
  every place looked and what to do otherwise."""
  if env:
    if not pathlib.Path(env).is_dir():
      raise ConfigError(f"${ENV_VAR} is {env!r}, which is not a folder; point it "
                        "at a folder laid out like hw_configs/ (gpu/, link/, ndp/, dram/, "
                        "systems/) or unset it to use the shipped presets")
    return pathlib.Path(env)
  for _, folder in candidates:
    if folder.is_dir():
      return folder
  looked = "; ".join(f"{label}: {folder}" for label, folder in candidates)
  raise ConfigError(f"no hw_configs/ preset folder found (looked in {looked}); "
                    f"reinstall ndpsim (`pip install .` ships the presets to "
                    f"<prefix>/{INSTALLED_SUBDIR.as_posix()}) or set ${ENV_VAR} to a "
                    "folder laid out like hw_configs/")


def config_root() -> pathlib.Path:
  """The folder of the shipped presets (hw_configs/): ``$NDPSIM_HW_CONFIGS`` if
  set, else the source tree, else the installed copy (:func:`find_config_root`)."""
  return find_config_root(os.environ.get(ENV_VAR), config_root_candidates())


# Folders under hw_configs/ whose name is not the kind's (DESIGN.md layout).
_FOLDERS = {"system": "systems", "dram_energy": "energy/dram", "gpu_energy": "energy/gpu",
            "link_energy": "energy/link", "ndp_energy": "energy/ndp"}


def folder_of(kind: str) -> str:
  """The hw_configs/ sub-folder holding presets of ``kind``."""
  return _FOLDERS.get(kind, kind)


def available(kind: str) -> list[str]:
  """Names of the shipped presets of one kind, sorted."""
  folder = config_root() / folder_of(kind)
  if not folder.is_dir():
    return []
  return sorted(p.stem for p in folder.glob("*.json"))


def _resolve_path(kind: str, name_or_path: str) -> pathlib.Path:
  p = pathlib.Path(name_or_path)
  if p.suffix == ".json":
    if not p.is_file():
      raise ConfigError(f"{kind} preset file {name_or_path!r} does not exist; "
                        f"give an existing .json path or one of {available(kind)}")
    return p
  cand = config_root() / folder_of(kind) / f"{name_or_path}.json"
  if cand.is_file():
    return cand
  names = available(kind)
  close = difflib.get_close_matches(name_or_path, names, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise ConfigError(f"unknown {kind} preset {name_or_path!r}{hint}; "
                    f"write one of {names} or a path to a .json file")


def read_json_object(path, what: str = "a JSON object") -> dict:
  """Parses a JSON file whose top level must be an object; ConfigError naming
  the file (and line) otherwise."""
  where = str(path)
  try:
    raw = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise ConfigError(f"{where}: cannot be read ({e.strerror}); give a readable "
                      ".json file") from None
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}, line {line}); give a "
                      "JSON text file, not a binary one") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column "
                      f"{e.colno}); fix the syntax") from None
  if not isinstance(obj, dict):
    raise ConfigError(f"{where}: top level must be {what}")
  return obj


def load(kind: str, name_or_path: str | dict, overrides: dict | None = None, *,
         allow_implausible: bool | None = None) -> Preset:
  """Loads and validates a preset of ``kind`` by name, path or inline dict.

  ``overrides`` maps field names to values applied before validation (the
  ``--set`` mechanism); unknown names are rejected like unknown JSON keys.
  ``allow_implausible``: accept values outside a field's plausible range (not
  its hard range); None keeps the enclosing :func:`allowing_implausible`.
  """
  if allow_implausible is not None:
    with allowing_implausible(allow_implausible):
      return load(kind, name_or_path, overrides)
  _ensure_kinds_loaded()
  if kind not in _KINDS:
    raise ConfigError(f"unknown hardware kind {kind!r}; write one of {sorted(_KINDS)}")
  if isinstance(name_or_path, dict):
    obj, where = dict(name_or_path), f"inline {kind} config"
    path = ""
  else:
    p = _resolve_path(kind, name_or_path)
    where, path = str(p), str(p)
    obj = read_json_object(p, f"a JSON object with keys {sorted(_TOP_KEYS)}")
  unknown = set(obj) - _TOP_KEYS
  if unknown:
    raise ConfigError(f"{where}: unknown top-level key {sorted(unknown)[0]!r}; "
                      f"allowed keys are {sorted(_TOP_KEYS)}")
  if obj.get("kind", kind) != kind:
    raise ConfigError(f"{where}: field 'kind' is {obj.get('kind')!r} but a {kind!r} "
                      f"preset was asked for; write \"kind\": \"{kind}\"")
  for key in ("spec", "params"):
    obj.setdefault(key, {})
    if not isinstance(obj[key], dict):
      raise ConfigError(f"{where}: field {key!r} must be a JSON object of fields")
  if overrides:
    obj["spec"] = dict(obj["spec"])
    obj["params"] = dict(obj["params"])
    kd = _KINDS[kind]
    spec_names = {f.name for f in dataclasses.fields(kd.spec_cls)}
    params_names = {f.name for f in dataclasses.fields(kd.params_cls)}
    for k, v in overrides.items():
      if k in params_names:
        obj["params"][k] = _merge_override(obj["params"].get(k), v)
      elif k in spec_names:
        obj["spec"][k] = _merge_override(obj["spec"].get(k), v)
      else:
        raise ConfigError(f"{where}: cannot override unknown field {k!r}; "
                          f"{kind} fields are {sorted(spec_names | params_names)}")
  spec, params = _KINDS[kind].build(obj, where)
  prov = _check_provenance(obj, where, spec, params)
  sources = _check_sources(obj, where, spec, params, prov)
  return Preset(name=obj.get("name", pathlib.Path(path).stem if path else kind),
                kind=kind, spec=spec, params=params, source=str(obj.get("source", "")),
                provenance=prov, path=path, sources=sources)


def _merge_override(old: Any, new: Any) -> Any:
  """An override object (nested part's fields) updates an object already there."""
  if isinstance(old, dict) and isinstance(new, dict):
    return {**old, **new}
  return new


def _field_names(x: Any) -> set[str]:
  return {f.name for f in dataclasses.fields(x)} if dataclasses.is_dataclass(x) else set()


def _check_provenance(obj: dict, where: str, spec, params) -> dict[str, str]:
  prov = obj.get("provenance", {"default": "spec"})
  if not isinstance(prov, dict):
    raise ConfigError(f"{where}: 'provenance' must map field names to one of "
                      f"{PROVENANCES}")
  known = _field_names(spec) | _field_names(params) | {"default"}
  for k, v in prov.items():
    if k not in known:
      raise ConfigError(f"{where}: provenance names unknown field {k!r}; "
                        f"use a field of 'spec' or 'params' or 'default'")
    if v not in PROVENANCES:
      raise ConfigError(f"{where}: provenance of {k!r} is {v!r}; write one of "
                        f"{PROVENANCES}")
  return dict(prov)


def provenance_of(prov: dict[str, str], field: str) -> str:
  """The provenance label of ``field`` under a preset's provenance map."""
  return prov.get(field, prov.get("default", "spec"))


def _check_sources(obj: dict, where: str, spec, params, prov: dict[str, str]
                   ) -> dict[str, str]:
  """Validates ``sources`` and requires one for every field labelled measured."""
  src = obj.get("sources", {})
  example = ('e.g. "sources": {"latency_ns": "https://arxiv.org/abs/2405.14209: '
             '250-400 ns"}')
  if not isinstance(src, dict):
    raise ConfigError(f"{where}: 'sources' must map field names to strings naming "
                      f"where each figure came from and the figure, {example}")
  fields = _field_names(spec) | _field_names(params)
  for k, v in src.items():
    if k not in fields:
      raise ConfigError(f"{where}: sources names unknown field {k!r}; use a field of "
                        "'spec' or 'params'")
    if not isinstance(v, str) or not v.strip():
      raise ConfigError(f"{where}: sources.{k} must be a non-empty string naming where "
                        f"the figure came from and the figure, {example}")
  for k in sorted(fields):
    if provenance_of(prov, k) != "measured":
      continue
    if k not in src:
      raise ConfigError(
          f"{where}: field {k!r} is labelled 'measured' but has no entry in 'sources'; "
          f"add \"sources\": {{\"{k}\": \"<URL or document>: <the figure taken from "
          "it>\"}, or label it 'assumed' (reasoning in 'notes') or 'derived' (arithmetic "
          "in 'notes') in 'provenance'")
    if not names_place_and_figure(src[k]):
      raise ConfigError(
          f"{where}: sources.{k} is {src[k]!r}; a measured field's source must name "
          "where a reader can check it (a URL, host/path, arXiv id or DOI) and the "
          "figure taken from it")
  return dict(src)


# ---------------------------------------------------------------------------
# Field validation shared by every kind's builder.

def _type_name(tp) -> str:
  return getattr(tp, "__name__", str(tp))


def take_fields(section: dict, cls: type, where: str, section_name: str,
                positive: bool = True, skip: tuple[str, ...] = (),
                allow_zero: tuple[str, ...] = (),
                defaults: dict[str, Any] | None = None) -> dict[str, Any]:
  """Checks ``section`` against the fields of dataclass ``cls``.

  Returns keyword arguments for ``cls`` (minus ``skip``, which the builder
  fills itself, e.g. nested presets).  Rejects unknown keys, missing keys,
  wrong types (``int`` fields need integers; ``float`` fields need numbers;
  ``str`` fields need strings; ``bool`` fields need true/false) and, when
  ``positive``, numbers <= 0 (except fields in ``allow_zero``, which must be
  >= 0).  Every message names ``where``, the field and what to write.
  """
  hints = typing.get_type_hints(cls)
  ranges = ranges_of(cls)
  names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
  defaults = dict(defaults or {})
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      defaults.setdefault(f.name, f.default)
  unknown = [k for k in section if k not in names and k not in skip]
  if unknown:
    close = difflib.get_close_matches(unknown[0], names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{where}: unknown field {section_name}.{unknown[0]}{hint}; "
                      f"allowed fields are {sorted(names + list(skip))}")
  out: dict[str, Any] = {}
  for name in names:
    tp = hints[name]
    if name not in section:
      if name in defaults:
        out[name] = defaults[name]
        continue
      raise ConfigError(f"{where}: missing field {section_name}.{name} "
                        f"({_type_name(tp)}); add \"{name}\": <value>")
    out[name] = _check_value(section[name], tp, where, f"{section_name}.{name}",
                             positive and name not in allow_zero,
                             name in allow_zero, ranges.get(name))
  return out


def _check_value(v, tp, where, field, positive, nonneg, rng=None):
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if v is None:
      return None
    tp = args[0]
    origin = typing.get_origin(tp)
  if origin is tuple:
    (inner, *_rest) = typing.get_args(tp)
    if not isinstance(v, list):
      raise ConfigError(f"{where}: field {field} must be a list of {_type_name(inner)}")
    return tuple(_check_value(x, inner, where, f"{field}[{i}]", positive, nonneg, rng)
                 for i, x in enumerate(v))
  if tp is bool:
    if not isinstance(v, bool):
      raise ConfigError(f"{where}: field {field} must be true or false, not {v!r}")
    return v
  if tp is str:
    if not isinstance(v, str):
      raise ConfigError(f"{where}: field {field} must be a string, not {v!r}")
    return v
  if tp is int:
    if isinstance(v, bool) or not (isinstance(v, int) or
                                   (isinstance(v, float) and v.is_integer())):
      raise ConfigError(f"{where}: field {field} must be an integer, not {v!r}")
    v = int(v)
  elif tp is float or tp is Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise ConfigError(f"{where}: field {field} must be a number, not {v!r}")
    v = float(v)
  else:
    return v
  if v != v or v in (float("inf"), float("-inf")):  # NaN, Infinity
    raise ConfigError(f"{where}: field {field} is {v}; write a finite number")
  if positive and v <= 0:
    raise ConfigError(f"{where}: field {field} is {v}; it must be > 0")
  if nonneg and v < 0:
    raise ConfigError(f"{where}: field {field} is {v}; it must be >= 0")
  if rng is not None:
    check_range(float(v), rng, where, field, zero_ok=nonneg)
  return v


def require(cond: bool, where: str, message: str) -> None:
  """Raises ConfigError(f"{where}: {message}") unless ``cond``."""
  if not cond:
    raise ConfigError(f"{where}: {message}")


def parse_set_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
  """Parses ``--set kind.field=value`` strings into {kind: {field: value}}."""
  out: dict[str, dict[str, Any]] = {}
  for item in items:
    if "=" not in item or "." not in item.split("=", 1)[0]:
      raise ConfigError(f"--set {item!r}: write component.field=value, e.g. "
                        "gpu.memory_bandwidth_gbps=800")
    key, val = item.split("=", 1)
    comp, field = key.split(".", 1)
    try:
      value: Any = json.loads(val)
    except json.JSONDecodeError:
      value = val
    out.setdefault(comp, {})[field] = value
  return out
