"""Sparse attention in five steps: op, reusable pattern, PyG layer, learnable gates, pictures.

Run: python examples/quickstart.py   (writes patterns.png next to this file; --out PATH elsewhere)
"""
import argparse
from pathlib import Path

import torch

from graph_sparse_attn import CSRPattern, SparseAttnConv, patterns, sparse_attention
from graph_sparse_attn.nn import RelativePositionGate
from graph_sparse_attn.viz import compare_patterns

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", type=Path, default=Path(__file__).with_name("patterns.png"), help="where to draw the patterns (PNG)")
args = parser.parse_args()

torch.manual_seed(0)
n, heads, dim = 512, 4, 16

# 1. Patterns are edge_index tensors (row 0 = source j, row 1 = target i), composable by union.
window = patterns.sliding_window(n, 8)
longformer = patterns.longformer(n, 8, [0])
bigbird = patterns.bigbird(n, 8, [0], 4, generator=torch.Generator().manual_seed(0))
print(f"window: {window.size(1):,} edges, longformer: {longformer.size(1):,}, bigbird: {bigbird.size(1):,}")

# 2. The op: exact softmax attention over each target's incoming edges.
q, k, v = (torch.randn(n, heads, dim, requires_grad=True) for _ in range(3))
out, alpha = sparse_attention(q, k, v, longformer, return_attention=True)
out.sum().backward()
row_sums = torch.zeros(n, heads).index_add_(0, longformer[1], alpha.detach())
print(f"out {tuple(out.shape)}, alpha {tuple(alpha.shape)}, rows of alpha sum to 1 (max error {(row_sums - 1).abs().max():.1e})")

# 3. Sort a pattern once and reuse it across layers.
pattern = CSRPattern.from_edge_index(bigbird, n)
conv1, conv2 = SparseAttnConv(32, 8, heads=4), SparseAttnConv(32, 8, heads=4)
x = torch.randn(n, 32)
print("two SparseAttnConv layers over one CSRPattern:", tuple(conv2(conv1(x, pattern).relu(), pattern).shape))

# 4. A learnable pattern: relative-position gates multiply each edge's weight (gate_mode="log").
gate = RelativePositionGate(heads)(window)
out = sparse_attention(q, k, v, window, edge_gate=gate, gate_mode="log")
print(f"gated attention {tuple(out.shape)}; prune with patterns.prune(window, gate, 0.5)")

# 5. Look at the patterns.
compare_patterns({"window ±8": window, "longformer": longformer, "bigbird": bigbird,
                  "log_sparse": patterns.log_sparse(n, causal=False)}, n, args.out)
print(f"wrote {args.out}")
