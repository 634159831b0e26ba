"""Real HuggingFace config.json files of MoE families load within their
published parameter counts or are refused in one line (issue 12 item 1).

The corpus and its provenance are tests/data/hf_configs/MANIFEST.json.  Totals
must be within 2% of the published figure (one card that truncates to whole
billions is checked by its rounding, flagged in the manifest); active counts
within the card's rounding, counted the way the card counts them.  No
simulation: parameter counts, layer layouts and one cost function only.
"""
from __future__ import annotations

import json
import pathlib
import warnings

import pytest

from ndpsim import costs
from ndpsim.base import ConfigError
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = [pytest.mark.inputs, pytest.mark.analytic]

CORPUS = pathlib.Path(__file__).parent / "data" / "hf_configs"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text())["configs"]
BY_FILE = {e["file"]: e for e in MANIFEST}


def _path(entry) -> pathlib.Path:
  return (CORPUS / entry["file"]).resolve()


def _active(spec, convention: str) -> int:
  """Active parameters as the card counts them."""
  if convention == "with_input_embedding":
    return M.active_params(spec)
  got = M.active_params(spec, count_input_embedding=False)
  if convention == "without_embeddings":  # neither table (tied: the one table)
    got -= spec.vocab_size * spec.hidden_size  # the LM head (or the tied table)
  else:
    assert convention == "without_input_embedding", convention
  return got


def _within(got: float, published: float, rounding: dict) -> bool:
  step = rounding["step"]
  if rounding["mode"] == "floor":
    return published <= got < published + step
  assert rounding["mode"] == "nearest", rounding
  return abs(got - published) <= step / 2


def corpus_rows():
  """(file, model_type, published total/active, loaded total/active or the
  refusal, notes) for every manifest entry: the table the report shows."""
  rows = []
  for e in MANIFEST:
    try:
      r = model_io.inspect_hf_config(_path(e))
    except ConfigError as err:
      rows.append((e["file"], e["model_type"], e["published_total"],
                   e["published_active"], None, None, str(err)))
      continue
    rows.append((e["file"], e["model_type"], e["published_total"], e["published_active"],
                 M.total_params(r.spec), _active(r.spec, e["active_convention"]),
                 "; ".join(r.notes)))
  return rows


def test_corpus_covers_15_families_and_every_file_is_listed():
  families = {e["model_type"] for e in MANIFEST}
  assert len(families) >= 15, sorted(families)
  on_disk = {p.name for p in CORPUS.glob("*.json")} - {"MANIFEST.json"}
  listed = {e["file"] for e in MANIFEST if "/" not in e["file"]}
  assert on_disk == listed
  for e in MANIFEST:
    assert _path(e).is_file(), e["file"]
    assert e["source_url"].startswith("https://huggingface.co/")
    assert e["counts_url"].startswith("https://") and e["text_source"]


@pytest.mark.parametrize("fname", sorted(BY_FILE))
def test_config_loads_within_published_counts_or_is_refused_by_name(fname):
  e = BY_FILE[fname]
  path = _path(e)
  if "refused" in e:
    with pytest.raises(ConfigError) as err:
      model_io.load_hf_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert repr(e["refused"]) in msg and repr(e["model_type"]) in msg
    return
  r = model_io.inspect_hf_config(path)
  total, active = M.total_params(r.spec), _active(r.spec, e["active_convention"])
  if "total_rounding" in e:
    assert _within(total, e["published_total"], e["total_rounding"]), total
  else:
    assert total == pytest.approx(e["published_total"], rel=0.02)
  assert _within(active, e["published_active"], e["active_rounding"]), active
  if "published_total_with_mtp" in e:
    assert r.mtp_layers >= 1
    assert total + r.mtp_params == pytest.approx(e["published_total_with_mtp"], rel=0.02)


def test_notes_reach_the_user_as_one_warning():
  """MTP layers, the vision tower and chunked attention are reported, never
  silently dropped."""
  with pytest.warns(model_io.HfConfigWarning) as w:
    model_io.load_hf_config(CORPUS / "deepseek_v3.json")
  assert len(w) == 1 and "num_nextn_predict_layers: 1 multi-token-prediction" in \
      str(w[0].message) and "\n" not in str(w[0].message)
  r = model_io.inspect_hf_config(CORPUS / "llama_4_scout_17b_16e.json")
  assert any(n.startswith("vision_config") for n in r.notes)
  assert any(n.startswith("attention_chunk_size") for n in r.notes)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model_io.load_hf_config(CORPUS / "qwen3_235b_a22b.json")  # nothing to report


def test_layouts_and_features_of_the_new_families():
  scout = model_io.inspect_hf_config(CORPUS / "llama_4_scout_17b_16e.json").spec
  assert (scout.num_shared_experts, scout.shared_expert_ffn_size, scout.top_k) == (1, 8192, 1)
  assert scout.sliding_window == 8192
  assert scout.sliding_window_layers == tuple(i for i in range(48) if i % 4 != 3)
  ernie = model_io.inspect_hf_config(CORPUS / "ernie_4_5_21b_a3b.json").spec
  assert (ernie.first_dense_layers, ernie.dense_ffn_size, ernie.num_shared_experts,
          ernie.tie_embeddings) == (1, 12288, 2, True)
  hy = model_io.inspect_hf_config(CORPUS / "hunyuan_a13b.json").spec
  assert (hy.top_k, hy.expert_ffn_size, hy.num_shared_experts, hy.qk_norm) == \
      (8, 3072, 1, "per_head")
  dbrx = model_io.inspect_hf_config(CORPUS / "dbrx_instruct.json").spec
  assert (dbrx.num_layers, dbrx.hidden_size, dbrx.num_kv_heads, dbrx.num_experts,
          dbrx.top_k, dbrx.expert_ffn_size) == (40, 6144, 8, 16, 4, 10752)
  glm = model_io.inspect_hf_config(CORPUS / "glm_4_5_air.json").spec
  assert glm.qkv_bias and not glm.o_bias and glm.head_dim == 128
  v3 = model_io.inspect_hf_config(CORPUS / "deepseek_v3.json").spec
  assert v3.first_dense_layers == 3 and v3.expert_dtype == "fp8" and M.num_moe_layers(v3) == 58


def _variant(tmp_path, fname, drop=(), **changes) -> pathlib.Path:
  return U.hf_variant(tmp_path, CORPUS / fname, drop, **changes)


def _refused(path, *parts):
  with pytest.raises(ConfigError) as err:
    model_io.load_hf_config(path)
  msg = str(err.value)
  assert "\n" not in msg and str(path) in msg, msg
  for part in parts:
    assert part in msg, msg
  return msg


def test_refusals_name_the_key_and_model_type(tmp_path):
  _refused(_variant(tmp_path, "hunyuan_a13b.json", moe_topk=[8] * 31 + [4]),
           "'moe_topk' (model_type 'hunyuan_v1_moe') differs between layers")
  _refused(_variant(tmp_path, "hunyuan_a13b.json", use_cla=True), "'use_cla'")
  _refused(_variant(tmp_path, "minimax_m2.json", attn_type_list=[0, 1] * 31),
           "'attn_type_list' (model_type 'minimax_m2')", "lightning")
  _refused(_variant(tmp_path, "mixtral_8x22b.json", parallel_attn=True),
           "'parallel_attn' (model_type 'mixtral')", "remove it if")
  _refused(_variant(tmp_path, "granite_3_0_3b_a800m.json", model_type="granitemoehybrid"),
           "model_type 'granitemoehybrid' is not supported")
  text = json.loads((CORPUS / "llama_4_scout_17b_16e.json").read_text())
  cfg = _variant(tmp_path, "llama_4_scout_17b_16e.json",
                 text_config={**text["text_config"], "mamba_d_state": 16})
  _refused(cfg, "'mamba_d_state' (model_type 'llama4_text')", "state-space")


def test_trimmed_configs_take_transformers_defaults(tmp_path):
  """A Granite config without tie_word_embeddings loads with transformers'
  GraniteMoeConfig default (False) and says so; Llama-4 un-nested loads too."""
  with pytest.warns(model_io.HfConfigWarning, match="tie_word_embeddings=False"):
    g = model_io.load_hf_config(_variant(tmp_path, "granite_3_0_3b_a800m.json",
                                         drop=["tie_word_embeddings"]))
  assert not g.tie_embeddings
  text = json.loads((CORPUS / "llama_4_scout_17b_16e.json").read_text())["text_config"]
  p = tmp_path / "flat.json"
  p.write_text(json.dumps({**text, "tie_word_embeddings": False}))
  flat = model_io.inspect_hf_config(p).spec
  nested = model_io.inspect_hf_config(CORPUS / "llama_4_scout_17b_16e.json").spec
  assert flat == M.replace(nested, name=flat.name)


def test_interleaved_dense_layers_from_llama4_step_and_ernie_interval(tmp_path):
  text = json.loads((CORPUS / "llama_4_scout_17b_16e.json").read_text())
  p = _variant(tmp_path, "llama_4_scout_17b_16e.json",
               text_config={**text["text_config"], "interleave_moe_layer_step": 2})
  s = model_io.inspect_hf_config(p).spec  # Maverick's layout: MoE on odd layers
  assert (s.first_dense_layers, s.dense_ffn_size) == (1, 16384)
  assert s.interleaved_dense_layers == tuple(range(2, 48, 2))
  assert M.moe_layer_indices(s) == tuple(range(1, 48, 2))
  e = model_io.inspect_hf_config(_variant(tmp_path, "ernie_4_5_21b_a3b.json",
                                          moe_layer_interval=2)).spec
  assert M.moe_layer_indices(e) == tuple(range(1, 28, 2))
  assert e.first_dense_layers == 1 and e.interleaved_dense_layers == tuple(range(2, 28, 2))


def test_step_overhead_costs_every_dense_layer_with_its_own_window():
  """costs.step_overhead_s runs over dense_layer_indices: an interleaved dense
  layer costs what a leading one does, unless its attention window differs."""
  from tests import engine_util  # pylint: disable=import-outside-toplevel
  ss, sp = engine_util.load()
  base = dict(name="t", num_layers=4, hidden_size=64, vocab_size=100, num_experts=4,
              top_k=2, expert_ffn_size=32, attention_kind="gqa", num_q_heads=4,
              num_kv_heads=2, head_dim=16, dense_ffn_size=48)
  lead = M.MoeModelSpec(**base, first_dense_layers=1)
  inter = M.MoeModelSpec(**base, interleaved_dense_layers=(2,))
  windowed = M.MoeModelSpec(**base, interleaved_dense_layers=(2,), sliding_window=4,
                            sliding_window_layers=(2,))

  def over(m):
    return float(costs.step_overhead_s(ss, sp, m, 1, 4096.0, 1, lm_head_tokens=1))
  assert over(inter) == pytest.approx(over(lead), rel=1e-6)
  assert over(windowed) < over(inter)
  assert M.moe_layer_indices(inter) == (0, 1, 3) and M.num_moe_layers(inter) == 3
