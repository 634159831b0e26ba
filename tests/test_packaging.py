"""Packaging (issue 11 item 5): a non-editable install carries the hardware
presets and finds them.

hw_configs/ sits beside the package, not in it, so a wheel ships it as data
files (setup.cfg ``[options.data_files]`` -> ``<prefix>/share/ndpsim/hw_configs``)
and :func:`ndpsim.config.config_root` looks there after ``$NDPSIM_HW_CONFIGS``
and the source tree.  The lookup order and the error are checked on temporary
folders; the wheel itself is built, installed into a fresh virtual environment
and asked for its presets from outside the checkout.
"""
from __future__ import annotations

import configparser
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from ndpsim import config
from ndpsim.base import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRESETS = ROOT / "hw_configs"


@pytest.mark.inputs
def test_config_root_looks_in_env_then_source_tree_then_installed(tmp_path):
  src, inst, env = tmp_path / "src", tmp_path / "inst", tmp_path / "env"
  cands = [("source tree", src), ("installed", inst)]
  for d in (inst, env):
    d.mkdir()
  assert config.find_config_root(None, cands) == inst
  src.mkdir()
  assert config.find_config_root(None, cands) == src
  assert config.find_config_root(str(env), cands) == env
  assert config.find_config_root("", cands) == src  # an empty variable counts as unset


@pytest.mark.inputs
def test_config_root_error_names_every_place_looked(tmp_path):
  cands = [("source tree", tmp_path / "a"), ("installed", tmp_path / "b")]
  with pytest.raises(ConfigError) as e:
    config.find_config_root(None, cands)
  msg = str(e.value)
  assert str(tmp_path / "a") in msg and str(tmp_path / "b") in msg
  assert "$NDPSIM_HW_CONFIGS" in msg and "pip install" in msg


@pytest.mark.inputs
def test_default_candidates_start_with_the_source_tree_and_end_installed():
  cands = config.config_root_candidates()
  assert cands[0] == ("source tree", PRESETS)
  installed = [p for label, p in cands[1:] if label == "installed"]
  assert installed and all(p.parts[-3:] == config.INSTALLED_SUBDIR.parts
                           for p in installed)
  assert pathlib.Path(sys.prefix) / config.INSTALLED_SUBDIR in installed


@pytest.mark.inputs
def test_every_preset_folder_is_a_data_file():
  # One setup.cfg line per folder of presets, installed where config_root looks.
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  data = {k: v.split() for k, v in cfg["options.data_files"].items()}
  folders = sorted({p.parent.relative_to(PRESETS).as_posix()
                    for p in PRESETS.rglob("*.json")})
  assert folders
  for rel in folders:
    key = (config.INSTALLED_SUBDIR / rel).as_posix()
    assert data.get(key) == [f"hw_configs/{rel}/*.json"], (
        f"setup.cfg [options.data_files] lacks `{key} = hw_configs/{rel}/*.json`")
  manifest = (ROOT / "MANIFEST.in").read_text()
  assert "recursive-include hw_configs *.json" in manifest


def _run(args, cwd, env=None):  # hang guard: timeout=600
  r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                     timeout=600, check=False)  # hang guard
  assert r.returncode == 0, " ".join(map(str, args)) + "\n" + r.stdout + r.stderr
  return r.stdout


@pytest.mark.e2e
def test_installed_wheel_finds_its_presets(tmp_path):
  pytest.importorskip("wheel", reason="building a wheel needs the `wheel` package "
                      "(pip install -e '.[test]' brings it)")
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
    shutil.copy2(ROOT / name, src / name)
  skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
  shutil.copytree(ROOT / "ndpsim", src / "ndpsim", ignore=skip)
  shutil.copytree(PRESETS, src / "hw_configs", ignore=skip)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
  _run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", str(tmp_path / "whl"), str(src)], cwd=tmp_path)
  (whl,) = (tmp_path / "whl").glob("ndpsim-*.whl")
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
        str(venv)], cwd=tmp_path)
  # --prefix lays the wheel out as a venv does (lib/pythonX.Y/site-packages, share/).
  # --ignore-installed: without it pip uninstalls the ndpsim it finds on sys.path
  # (the checkout's editable install) before laying the wheel out under --prefix,
  # which broke every later test that starts `python3` without PYTHONPATH.
  where = [sys.executable, "-c", "import importlib.util as u; s = u.find_spec('ndpsim'); "
           "print(s.origin if s else None)"]
  env0 = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  before = _run(where, cwd=tmp_path, env=env0).strip().splitlines()[-1]
  _run(pip + ["install", "-q", "--no-deps", "--no-index", "--ignore-installed",
              "--prefix", str(venv), str(whl)], cwd=tmp_path)
  # The interpreter running the suite keeps the ndpsim it had (CI's editable install).
  assert _run(where, cwd=tmp_path, env=env0).strip().splitlines()[-1] == before
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "NDPSIM_HW_CONFIGS")}
  probe = ("import json, ndpsim, ndpsim.config as c\n"
           "p = c.load('system', 'paper_rtx5080_ndp_dimm')\n"
           "print(json.dumps([ndpsim.__file__, str(c.config_root()), "
           "c.available('system'), p.path]))\n")
  out = _run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env)
  file, root, systems, path = json.loads(out.strip().splitlines()[-1])
  root = pathlib.Path(root)
  assert pathlib.Path(file).is_relative_to(venv) and not pathlib.Path(file).is_relative_to(ROOT)
  assert root == venv / config.INSTALLED_SUBDIR
  assert systems == config.available("system") and systems
  assert pathlib.Path(path).is_relative_to(root)
