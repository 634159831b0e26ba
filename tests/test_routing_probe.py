"""The `routing` probe subcommand: JSON statistics, one-line errors, exit 2."""
from __future__ import annotations

import json

import pytest

from ndpsim import probe
from ndpsim.base import ConfigError
from ndpsim.probe import routing as P
from ndpsim.workload import routing as R

pytestmark = [pytest.mark.e2e, pytest.mark.inputs]


def test_probe_prints_statistics(capsys):
  rc = probe.main(["routing", "--model=mixtral-8x7b", "--routing=mixtral_8x7b",
                   "--num_seqs=4", "--prompt_len=32", "--output_len=32",
                   "--resident_fraction=0.5"])
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  st = out["stats"]
  assert st["num_experts"] == 8 and st["top_k"] == 2 and st["num_layers"] == 32
  assert st["ep_imbalance_n8"] == 4.0                  # k=2 on 8 units: max 1, mean 1/4
  assert 0.5 <= st["prefill_top4_hit_rate"] <= 1.0      # M = 4 of 8 at least chance
  assert 0.0 <= st["prefill_top4_any_miss_rate"] <= 1.0
  assert out["params"]["reuse_prob"] == pytest.approx(R.preset("mixtral_8x7b", 8, 2).reuse_prob)


@pytest.mark.parametrize("argv,flag", [
    (["--routing=nope"], "routing preset"), (["--resident_fraction=0"], "resident_fraction"),
    (["--num_seqs=0"], "num_seqs"), (["--model=nope"], "model"),
    (["--model_seed=-1"], "model_seed")])
def test_probe_bad_values_exit_2(argv, flag, capsys):
  base_args = {"--model": "mixtral-8x7b"}
  args = dict(a.split("=", 1) for a in argv)
  merged = {**base_args, **args}
  rc = probe.main(["routing"] + [f"{k}={v}" for k, v in merged.items()])
  err = capsys.readouterr().err
  assert rc == 2 and flag in err and err.count("\n") == 1


def test_probe_function_raises_config_error():
  args = {k: v[1] for k, v in P.PROBE_ARGS.items()}
  args.update(model="mixtral-8x7b", output_len=-1)
  with pytest.raises(ConfigError, match="output_len"):
    P.probe(args)
