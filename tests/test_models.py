"""Model zoo: published parameter counts, tensor shapes, loaders, probe."""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import shutil
from contextlib import redirect_stderr, redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import probe
from ndpsim.base import ConfigError
from ndpsim.workload import model_io
from ndpsim.workload import models as m
from tests import engine_util as U

DATA = pathlib.Path(__file__).parent / "data"

# (total, active, active counts the input embedding table?) as published:
# models.md for the first five, model cards for Qwen1.5-MoE and GPT-OSS (whose
# card counts the unembedding but not the embedding as active).
PUBLISHED = {
    "qwen3-30b-a3b": (30.5e9, 3.3e9, True),
    "mixtral-8x7b": (46.7e9, 12.9e9, True),
    "deepseek-v2-lite": (15.7e9, 2.4e9, False),
    "olmoe-1b-7b": (6.9e9, 1.3e9, True),
    "phi-3.5-moe": (41.9e9, 6.6e9, True),
    "qwen1.5-moe-a2.7b": (14.3e9, 2.7e9, True),
    "gpt-oss-20b": (21e9, 3.6e9, False),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.analytic
def test_published_parameter_counts_within_2_percent(name):
  spec = m.get_model(name)
  total, active, with_embedding = PUBLISHED[name]
  assert m.total_params(spec) == pytest.approx(total, rel=0.02)
  got = m.active_params(spec, count_input_embedding=with_embedding)
  if name == "deepseek-v2-lite":
    # 2.451e9 from the config shapes: +2.1% over "2.4B", which the DeepSeek-V2
    # paper gives to two digits (counting both tables gives 2.66e9, +11%).
    assert 2.4e9 <= got < 2.46e9
  else:
    assert got == pytest.approx(active, rel=0.02)


EXPERT_MB = {  # models.md, bf16 (GPT-OSS: MXFP4 as shipped, checked below)
    "qwen3-30b-a3b": 9.44, "mixtral-8x7b": 352.3, "deepseek-v2-lite": 17.3,
    "olmoe-1b-7b": 12.6, "phi-3.5-moe": 157.3, "qwen1.5-moe-a2.7b": 17.3}


@pytest.mark.parametrize("name", sorted(EXPERT_MB))
@pytest.mark.analytic
def test_expert_bytes_match_models_md(name):
  spec = m.get_model(name)
  assert m.expert_bytes(spec) / 1e6 == pytest.approx(EXPERT_MB[name], rel=0.005)
  h, f = spec.hidden_size, spec.expert_ffn_size
  assert m.expert_matrix_shapes(spec) == ((h, f), (h, f), (f, h))
  assert m.layer_expert_bytes(spec) == spec.num_experts * m.expert_bytes(spec)
  assert m.expert_bytes_total(spec) == m.num_moe_layers(spec) * m.layer_expert_bytes(spec)
  assert m.total_bytes(spec) == m.non_expert_bytes(spec) + m.expert_bytes_total(spec)


@pytest.mark.analytic
def test_qwen3_attention_shapes():
  s = m.get_model("qwen3-30b-a3b")
  # q_proj 2048->32*128=4096, k/v 2048->512, o 4096->2048, q/k RMSNorm over head_dim.
  params = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 2 * 128
  assert m.attention_bytes_per_layer(s) == 2 * params
  assert m.router_bytes_per_layer(s) == 2 * 2048 * 128
  assert m.kv_bytes_per_token(s) == 48 * 2 * 4 * 128 * 2
  assert m.non_expert_bytes(s) > 3e9 and m.total_bytes(s) > 60e9  # paper: "over 60 GB"


@pytest.mark.analytic
def test_deepseek_mla_shapes_and_absorbed_attention():
  s = m.get_model("deepseek-v2-lite")
  q = 2048 * 16 * (128 + 64)
  kv_a = 2048 * (512 + 64)
  kv_b = 512 * 16 * (128 + 128)
  o = 16 * 128 * 2048
  assert m.attention_bytes_per_layer(s) == 2 * (q + kv_a + kv_b + o + 512)
  assert m.num_moe_layers(s) == 26 and m.moe_layer_indices(s)[0] == 1
  assert m.shared_expert_bytes(s) == 2 * 2 * 3 * 2048 * 1408
  assert m.dense_ffn_bytes_per_layer(s) == 2 * 3 * 2048 * 10944
  assert m.kv_bytes_per_token_per_layer(s, 5) == (512 + 64) * 2
  assert m.kv_bytes_per_token(s) == 27 * 576 * 2
  assert m.attention_kwargs(s, 5) == dict(
      num_q_heads=16, num_kv_heads=1, qk_head_dim=576, v_head_dim=512,
      kv_bytes_per_token=1152.0, sliding_window=0)
  # Absorbed decode core: 16 heads x (576 + 512) per key; naive: (192 + 128).
  proj = 2 * (q + kv_a + kv_b + o)
  ctx = 100
  assert m.attention_flops(s, 1, ctx, layer=3) == proj + 2 * 16 * (576 + 512) * ctx
  assert m.attention_flops(s, 1, ctx, layer=3, form="naive") == \
      proj + 2 * 16 * (192 + 128) * ctx


@pytest.mark.analytic
def test_qwen15_shared_expert_gate_and_qkv_bias():
  s = m.get_model("qwen1.5-moe-a2.7b")
  assert m.shared_expert_bytes(s) == 2 * (3 * 2048 * 5632 + 2048)  # + sigmoid gate
  assert m.attention_bytes_per_layer(s) == 2 * (4 * 2048 * 2048 + 3 * 2048)
  no_gate = dataclasses.replace(s, shared_expert_gate=False)
  assert m.total_params(s) - m.total_params(no_gate) == 24 * 2048


@pytest.mark.analytic
def test_gpt_oss_sinks_biases_window_and_mxfp4():
  s = m.get_model("gpt-oss-20b")
  assert m.dtype_bytes("mxfp4") == 4.25 / 8
  mat = 3 * 2880 * 2880
  assert m.expert_bytes(s) == mat * 4.25 / 8 + (2 * 2880 + 2880) * 2
  attn = (2880 * 4096 + 4096) + 2 * (2880 * 512 + 512) + (4096 * 2880 + 2880) + 64
  assert m.attention_bytes_per_layer(s) == 2 * attn
  assert m.router_bytes_per_layer(s) == 2 * (2880 * 32 + 32)
  assert s.sliding_window_layers == tuple(range(0, 24, 2))
  assert m.attention_kwargs(s, 0)["sliding_window"] == 128
  assert m.attention_kwargs(s, 1)["sliding_window"] == 0
  assert m.attention_kwargs(s, 1)["num_kv_heads"] == 8
  # Checkpoint: 12.8 GiB (GPT-OSS model card); bf16 experts would be ~39 GiB.
  assert m.total_bytes(s) / 2**30 == pytest.approx(12.8, rel=0.01)
  assert m.total_bytes(m.with_dtype(s, "bf16")) / 2**30 > 38
  # KV cache: 12 full layers grow, 12 windowed layers stop at 128 tokens.
  per_layer = 2 * 8 * 64 * 2
  assert float(m.kv_cache_bytes(s, 1000)) == per_layer * (12 * 1000 + 12 * 128)
  assert float(m.kv_cache_bytes(s, 100)) == per_layer * 24 * 100


@pytest.mark.analytic
def test_with_dtype_and_dtype_bytes():
  s = m.get_model("qwen3-30b-a3b")
  q = m.with_dtype(s, expert_dtype="int4")
  assert m.expert_bytes(q) == m.expert_bytes(s) / 4
  assert m.non_expert_bytes(q) == m.non_expert_bytes(s)
  f8 = m.with_dtype(s, other_dtype="float8_e4m3fn", kv_dtype="fp8")
  assert f8.attention_dtype == f8.embedding_dtype == f8.dense_dtype == "fp8"
  assert f8.vector_dtype == "bf16" and f8.expert_dtype == "bf16"
  assert m.kv_bytes_per_token(f8) == m.kv_bytes_per_token(s) / 2
  assert m.dtype_bytes("bfloat16") == 2 and m.dtype_bytes("nvfp4") == 0.5625
  with pytest.raises(ConfigError, match="unknown dtype 'int3'"):
    m.dtype_bytes("int3")


def _tiny(**kw) -> m.MoeModelSpec:
  base = dict(name="tiny", num_layers=3, hidden_size=16, vocab_size=100, num_experts=4,
              top_k=2, expert_ffn_size=8, attention_kind="gqa", num_q_heads=4,
              num_kv_heads=2, head_dim=4)
  return m.MoeModelSpec(**{**base, **kw})


@pytest.mark.analytic
def test_active_params_definition():
  s = _tiny()
  e = m.expert_params(s)
  assert m.total_params(s) - m.active_params(s) == 3 * (4 - 2) * e
  assert m.active_params(_tiny(top_k=4)) == m.total_params(_tiny(top_k=4))
  assert m.active_params(s) - m.active_params(s, count_input_embedding=False) == 1600
  tied = _tiny(tie_embeddings=True)
  assert m.total_params(s) - m.total_params(tied) == 1600
  assert m.active_params(tied, count_input_embedding=False) == m.active_params(tied)
  # Bytes read per decode token: one embedding row, not the table.
  assert m.active_bytes_per_token(s) == pytest.approx(
      2 * (m.active_params(s, count_input_embedding=False) + 16))


@pytest.mark.analytic
def test_flops_causal_window_and_jit():
  s = _tiny(sliding_window=2, sliding_window_layers=(1,))
  proj = 2 * (16 * 16 + 2 * 16 * 8 + 16 * 16)
  core = 2 * 4 * (4 + 4)
  # Prefill of 4 tokens: full layers see 1+2+3+4 keys, the windowed one 1+2+2+2.
  assert m.attention_flops(s, 4, 4, layer=0) == 4 * proj + core * 10
  assert float(m.attention_flops(s, 4, 4, layer=1)) == 4 * proj + core * 7
  # Decode of the 4th token after a cached 3: same keys as the prefill's last row.
  assert float(m.attention_flops(s, 1, 10, layer=1)) == proj + core * 2
  assert m.expert_flops_per_token(s) == 2 * m.expert_params(s)
  f = m.flops_per_token(s, 5)
  assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))
  assert f["routed_experts"] == 3 * 2 * m.expert_flops_per_token(s)
  fn = jax.jit(lambda c: m.kv_cache_bytes(s, c) + m.attention_flops(s, 1, c))
  got = jax.vmap(fn)(jnp.arange(1, 6, dtype=jnp.float32))
  want = [float(m.kv_cache_bytes(s, c)) + float(m.attention_flops(s, 1, c))
          for c in range(1, 6)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  static = jax.jit(lambda spec, c: m.kv_cache_bytes(spec, c), static_argnums=0)
  assert float(static(s, 7)) == float(m.kv_cache_bytes(s, 7))


@pytest.mark.inputs
def test_spec_validation_messages():
  with pytest.raises(ConfigError, match="top_k is 5 but num_experts is 4"):
    _tiny(top_k=5)
  with pytest.raises(ConfigError, match="num_kv_heads is 3; it must divide"):
    _tiny(num_kv_heads=3)
  with pytest.raises(ConfigError, match="write 'mha'"):
    _tiny(num_kv_heads=4)
  with pytest.raises(ConfigError, match="head_dim must be 0"):
    _tiny(attention_kind="mla", num_kv_heads=4, kv_lora_rank=8, qk_nope_head_dim=4,
          qk_rope_head_dim=2, v_head_dim=4)
  with pytest.raises(ConfigError, match="sliding_window_layers holds layer 3"):
    _tiny(sliding_window=4, sliding_window_layers=(3,))
  with pytest.raises(ConfigError, match="first_dense_layers is 3"):
    _tiny(first_dense_layers=3, dense_ffn_size=8)
  with pytest.raises(ConfigError, match="write 'bf16'"):
    _tiny(expert_dtype="bfloat16")


@pytest.mark.inputs
def test_get_model_unknown_names_registry_and_close_match():
  assert set(m.MODELS) == {"qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite",
                           "olmoe-1b-7b", "phi-3.5-moe", "qwen1.5-moe-a2.7b",
                           "gpt-oss-20b"}
  assert m.get_model("Mixtral-8x7B") is m.MODELS["mixtral-8x7b"]
  with pytest.raises(ConfigError, match="did you mean 'qwen3-30b-a3b'") as e:
    m.get_model("qwen3-30b")
  assert "gpt-oss-20b" in str(e.value)


HF = {"hf_qwen3_moe_config.json": "qwen3-30b-a3b", "hf_mixtral_config.json": "mixtral-8x7b",
      "hf_deepseek_v2_lite_config.json": "deepseek-v2-lite",
      "hf_olmoe_config.json": "olmoe-1b-7b", "hf_phimoe_config.json": "phi-3.5-moe",
      "hf_qwen2_moe_config.json": "qwen1.5-moe-a2.7b",
      "hf_gpt_oss_20b_config.json": "gpt-oss-20b"}


@pytest.mark.parametrize("fname", sorted(HF))
@pytest.mark.inputs
def test_hf_config_equals_zoo_entry(fname):
  assert m.load_hf_config(DATA / fname, name=HF[fname]) == m.get_model(HF[fname])


@pytest.mark.inputs
def test_hf_config_folder_name_and_dispatch(tmp_path):
  d = tmp_path / "Qwen3-30B-A3B"
  d.mkdir()
  shutil.copy(DATA / "hf_qwen3_moe_config.json", d / "config.json")
  s = m.model_from_any(str(d))
  assert s.name == "Qwen3-30B-A3B"
  assert dataclasses.replace(s, name="qwen3-30b-a3b") == m.get_model("qwen3-30b-a3b")
  assert m.model_from_any(d / "config.json") == s


def _hf_variant(tmp_path, drop=(), **changes) -> pathlib.Path:
  return U.hf_variant(tmp_path, DATA / "hf_qwen3_moe_config.json", drop, **changes)


@pytest.mark.parametrize("field,default", [("num_experts_per_tok", 8),
                                           ("num_hidden_layers", 24),
                                           ("moe_intermediate_size", 768),
                                           ("vocab_size", 151936)])
@pytest.mark.inputs
def test_hf_config_absent_key_takes_transformers_default_and_says_so(tmp_path, field,
                                                                     default):
  """Absent keys load as transformers' Qwen3MoeConfig defaults, named in the
  warning (issue 12: a trimmed config is not refused, nor silently filled)."""
  p = _hf_variant(tmp_path, drop=[field])
  with pytest.warns(model_io.HfConfigWarning, match=f"{field}={default}"):
    s = m.load_hf_config(p)
  got = {"num_experts_per_tok": s.top_k, "num_hidden_layers": s.num_layers,
         "moe_intermediate_size": s.expert_ffn_size, "vocab_size": s.vocab_size}
  assert got[field] == default


@pytest.mark.inputs
def test_hf_config_key_without_default_is_named(tmp_path):
  cfg = json.loads((DATA / "hf_deepseek_v2_lite_config.json").read_text())
  del cfg["num_experts_per_tok"]  # DeepseekV2Config defaults it to None
  p = tmp_path / "config.json"
  p.write_text(json.dumps(cfg))
  with pytest.raises(ConfigError) as e:
    m.load_hf_config(p)
  msg = str(e.value)
  assert str(p) in msg and "'num_experts_per_tok' (model_type 'deepseek_v2') is " \
      "missing" in msg and "\n" not in msg


@pytest.mark.inputs
def test_hf_config_rejections(tmp_path):
  with pytest.raises(ConfigError, match="model_type 'some_new_moe' is not supported"):
    m.load_hf_config(_hf_variant(tmp_path, model_type="some_new_moe"))
  with pytest.raises(ConfigError, match="key 'use_mamba' .*may change the layer"):
    m.load_hf_config(_hf_variant(tmp_path, use_mamba=True))
  with pytest.raises(ConfigError, match="quant_method 'awq'.*expert_dtype="):
    m.load_hf_config(_hf_variant(tmp_path, quantization_config={"quant_method": "awq"}))
  with pytest.raises(ConfigError, match="top_k is 200 but num_experts is 128"):
    m.load_hf_config(_hf_variant(tmp_path, num_experts_per_tok=200))
  q = m.load_hf_config(_hf_variant(tmp_path, quantization_config={"quant_method": "awq"}),
                       expert_dtype="int4_g128")
  assert q.expert_dtype == "int4_g128" and q.attention_dtype == "bf16"
  f8 = m.load_hf_config(_hf_variant(tmp_path, quantization_config={"quant_method": "fp8"}))
  assert (f8.expert_dtype, f8.attention_dtype, f8.embedding_dtype) == ("fp8", "fp8", "bf16")


@pytest.mark.analytic
def test_hf_config_dense_layouts_are_modelled(tmp_path):
  """mlp_only_layers and decoder_sparse_step place dense layers (width
  intermediate_size) among the MoE ones instead of being refused."""
  s = m.load_hf_config(_hf_variant(tmp_path, mlp_only_layers=[0, 1, 7]))
  assert (s.first_dense_layers, s.interleaved_dense_layers, s.dense_ffn_size) == \
      (2, (7,), 6144)
  assert m.num_moe_layers(s) == 45 and 7 not in m.moe_layer_indices(s)
  s = m.load_hf_config(_hf_variant(tmp_path, decoder_sparse_step=2))
  assert s.first_dense_layers == 1 and s.interleaved_dense_layers == tuple(range(2, 48, 2))
  assert m.moe_layer_indices(s) == tuple(range(1, 48, 2))
  base = m.get_model("qwen3-30b-a3b")
  assert m.total_params(s) == m.total_params(base) - 24 * (
      128 * m.expert_params(base) + 2048 * 128) + 24 * 3 * 2048 * 6144
  assert model_io.load_model_json(_save(tmp_path, s)) == s


def _save(tmp_path, spec):
  p = tmp_path / "spec.json"
  m.save_model_json(p, spec)
  return p


@pytest.mark.inputs
def test_model_json_roundtrip_and_rejections(tmp_path):
  spec = m.get_model("gpt-oss-20b")
  p = tmp_path / "my_model.json"
  m.save_model_json(p, spec, source="test")
  assert m.load_model_json(p) == spec
  assert m.model_from_any(str(p)) == spec
  obj = json.loads(p.read_text())

  def write(**kw):
    q = tmp_path / "bad.json"
    q.write_text(json.dumps({**obj, **kw}))
    return q
  with pytest.raises(ConfigError) as e:
    m.load_model_json(write(num_expert=4))
  assert "bad.json" in str(e.value) and "unknown field model.num_expert" in str(e.value)
  assert "did you mean 'num_experts'" in str(e.value)
  with pytest.raises(ConfigError, match=r"bad\.json: field top_k is 33 but num_experts"):
    m.load_model_json(write(top_k=33))
  with pytest.raises(ConfigError, match="must be an integer"):
    m.load_model_json(write(hidden_size="2880"))
  minimal = {k: obj[k] for k in m._REQUIRED}  # pylint: disable=protected-access
  del minimal["top_k"]
  q = tmp_path / "min.json"
  q.write_text(json.dumps(minimal))
  with pytest.raises(ConfigError, match=r"min\.json: missing field model\.top_k"):
    m.load_model_json(q)
  minimal.update(top_k=4, head_dim=64, expert_dtype="bfloat16")  # aliases accepted
  q.write_text(json.dumps(minimal))
  assert m.load_model_json(q).expert_dtype == "bf16"


def _run_probe(argv):
  out, err = io.StringIO(), io.StringIO()
  with redirect_stdout(out), redirect_stderr(err):
    rc = probe.main(argv)
  return rc, out.getvalue(), err.getvalue()


@pytest.mark.e2e
def test_probe_model():
  rc, out, _ = _run_probe(["model", "--model=qwen3-30b-a3b", "--dtype=bf16"])
  assert rc == 0
  d = json.loads(out)
  s = m.get_model("qwen3-30b-a3b")
  assert d["total_params"] == m.total_params(s) and d["active_params"] == m.active_params(s)
  assert d["expert_bytes"] == 9437184 and d["expert_bytes_total"] == m.expert_bytes_total(s)
  assert d["non_expert_bytes"] == m.non_expert_bytes(s)
  assert d["kv_bytes_per_token"] == 98304
  rc, out, _ = _run_probe(["model", "--model=gpt-oss-20b", "--dtype=bf16"])
  assert json.loads(out)["expert_bytes"] == 2 * 3 * 2880 * 2880 + 2 * 3 * 2880
  rc, out, err = _run_probe(["model", "--model=qwen3-30b"])
  assert rc == 2 and out == "" and err.count("\n") == 1 and "qwen3-30b-a3b" in err
  rc, _, err = _run_probe(["model", "--model=olmoe-1b-7b", "--expert_dtype=int2"])
  assert rc == 2 and "--expert_dtype" in err


@pytest.mark.inputs
def test_get_model_accepts_the_paths_its_error_offers():
  """The unknown-name error offers a path; get_model takes one (issue 12)."""
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json"
  assert m.get_model(str(path)).name == "exp-tiny-moe"
  assert m.get_model(str(path.parent / "hf_mixtral_config.json")).num_experts == 8
  with pytest.raises(ConfigError, match="does not exist"):
    m.get_model(str(path.parent / "no_such_model.json"))
