"""Writes the tiny public-format routing examples in tests/data/traces/.

Synthetic numbers, written in the layouts the public simulators ship (see
README.md here for each file's source format).  Not produced through ndpsim's
writer, so the readers are tested against text ndpsim did not write.

Run from the repository root:  python tests/data/traces/make_public_format_traces.py
"""
from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SEED = 20261129
EXPERTS, TOP_K = 16, 3
FLAME_LAYERS = (8, 9, 10)        # 10 sorts before 8 as text: order must be numeric
FLAME_TOKENS = 8                 # 2 sequences x 4 tokens
BATCH, POSITIONS, BATCH_LAYERS = 4, 3, (8, 9)
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def _header(e: int) -> str:
  return ",".join(["layer_id", "token_id"] + [f"expert_{i}" for i in range(e)])


def _sparse_rows(rng, n: int) -> np.ndarray:
  """[n, E] gate scores: softmax over E, kept on the top-k, 0 elsewhere."""
  logits = rng.normal(size=(n, EXPERTS))
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  keep = np.argsort(-p, axis=-1)[:, :TOP_K]
  out = np.zeros_like(p)
  np.put_along_axis(out, keep, np.take_along_axis(p, keep, -1), -1)
  return out


def _write_dynande(path: pathlib.Path, scores: np.ndarray) -> None:
  """DynaNDE/FLAME CSV: layer_id 0 in every file, 6 decimals."""
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = [_header(EXPERTS)]
  for t, row in enumerate(scores):
    lines.append(",".join(["0", str(t)] + [f"{x:.6f}" for x in row]))
  path.write_text("\n".join(lines) + "\n")


def _write_stats(path: pathlib.Path, scores: np.ndarray) -> None:
  """DynaNDE's per-file summary beside each trace (not a trace)."""
  counts = (scores > 0).sum(0)
  order = np.lexsort((np.arange(EXPERTS), -counts))
  lines = ["Expert_ID,Token_Count,Percentage,Rank"]
  for r, e in enumerate(order, 1):
    lines.append(f"{e},{counts[e]},{100 * counts[e] / len(scores):.2f},{r}")
  path.write_text("\n".join(lines) + "\n")


def main() -> None:
  rng = np.random.default_rng(SEED)
  # 1. NeuPIMs-MoE expert_routing_trace_example.csv layout: dense probability
  #    rows (every expert's router probability, 2 decimals, some 0.00), one
  #    layer, and a trailing blank line.  Row 3 ties at the top-2 boundary.
  probs = np.array([
      [0.62, 0.18, 0.09, 0.05, 0.03, 0.02, 0.01, 0.00],
      [0.10, 0.55, 0.20, 0.08, 0.04, 0.02, 0.01, 0.00],
      [0.30, 0.30, 0.15, 0.10, 0.07, 0.05, 0.03, 0.00],
      [0.40, 0.05, 0.20, 0.20, 0.08, 0.04, 0.02, 0.01],
      [0.05, 0.08, 0.12, 0.15, 0.45, 0.10, 0.05, 0.00],
      [0.02, 0.03, 0.05, 0.10, 0.10, 0.20, 0.50, 0.00],
  ])
  lines = [_header(probs.shape[1])]
  lines += [",".join(["0", str(t)] + [f"{x:.2f}" for x in row]) for t, row in enumerate(probs)]
  (HERE / "neupims_dense_probs.csv").write_text("\n".join(lines) + "\n\n")
  # 2. FLAME-MoE / DynaNDE prefill-style set: one file per MoE layer.
  flame = HERE / "flame_layers"
  for layer in FLAME_LAYERS:
    scores = _sparse_rows(rng, FLAME_TOKENS)
    stem = (f"flame-moe-290m_runid31066_epoch5473_layer{layer}_shard0-0_to_0-1"
            f"_encoder_2seqs_{FLAME_TOKENS}tokens")
    _write_dynande(flame / f"{stem}.csv", scores)
    if layer == FLAME_LAYERS[0]:
      _write_stats(flame / f"{stem}_top{TOP_K}_stats.csv", scores)
  # 3. DynaNDE decoder batch: Decoder_Batch_x/{1st,2nd,...}/Layer_L/<file>.csv,
  #    token_id = request in the batch.
  dec = HERE / "dynande_decoder_batch"
  for pos in range(1, POSITIONS + 1):
    for layer in BATCH_LAYERS:
      stem = (f"flame-moe-290m_runid31066_epoch5473_layer{layer}_shard0-0_to_0-1"
              f"_firstTokens_{BATCH}x512")
      _write_dynande(dec / ORDINALS[pos] / f"Layer_{layer}" / f"{stem}.csv",
                     _sparse_rows(rng, BATCH))


if __name__ == "__main__":
  main()
