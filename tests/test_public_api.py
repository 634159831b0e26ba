"""``import ndpsim`` exposes the public API lazily: every name in ``__all__``
resolves, and importing the package alone imports no JAX."""
from __future__ import annotations

import subprocess
import sys

import pytest

import ndpsim

pytestmark = pytest.mark.smoke


def test_every_public_name_resolves():
  for name in ndpsim.__all__:
    assert getattr(ndpsim, name) is not None, name
  assert ndpsim.simulate is ndpsim.engine.simulate
  assert "tp_lb_prefetch" in ndpsim.policy_names()
  with pytest.raises(AttributeError, match="no attribute 'simulat'"):
    getattr(ndpsim, "simulat")


def test_importing_the_package_is_cheap():
  code = "import sys, ndpsim; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=900)  # hang guard
  assert out.returncode == 0 and out.stdout.strip() == "False", out


def test_binary_defaults_are_the_python_defaults():
  """One set of defaults: the experiment's flags parse to ``StudyConfig()``."""
  code = ("from absl import flags; from ndpsim import experiment, studies; "
          "flags.FLAGS(['x']); "
          "print(experiment.config_from_flags() == studies.StudyConfig())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=900)  # hang guard
  assert out.returncode == 0 and out.stdout.strip() == "True", out
