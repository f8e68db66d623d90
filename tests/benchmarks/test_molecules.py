"""benchmarks/molecules.py: every model takes a training step on a batch that carries an encoding."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
molecules = pytest.importorskip("molecules")


def _batch(pe_dim: int = 16) -> SimpleNamespace:
    """Two chain molecules with OGB-range atom/bond features and a task encoding ``pe`` (as RWSE batches carry)."""
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    gen = torch.Generator().manual_seed(0)
    sizes = [5, 4]
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    starts = [0, sizes[0]]
    src = torch.tensor([s + i for s, n in zip(starts, sizes) for i in range(n - 1)])
    edge_index = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
    x = torch.stack([torch.randint(0, d, (batch.numel(),), generator=gen) for d in get_atom_feature_dims()], 1)
    bond = torch.stack([torch.randint(0, d, (src.numel(),), generator=gen) for d in get_bond_feature_dims()], 1)
    return SimpleNamespace(x=x, edge_index=edge_index, edge_attr=torch.cat([bond, bond]), batch=batch,
                           pe=torch.rand(batch.numel(), pe_dim, generator=gen), y=torch.tensor([[1.0], [0.0]]))


@pytest.mark.parametrize("name", ["graph", "transformer", "gps", "gine"])
def test_models_without_an_encoding_input_train_on_batches_that_carry_one(name):
    # The task's batches carry RWSE; (a) and the baselines have no input for it and must not be given it.
    task = SimpleNamespace(loss=F.binary_cross_entropy_with_logits)
    model = molecules.build_model(name, task, 1, {"backend": "gather"} if name == "graph" else {}, "gather")
    step = molecules.training_step(model, task)
    batch = _batch()
    before = [p.detach().clone() for p in model.parameters()]
    assert torch.isfinite(step(batch))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_model_with_an_encoding_input_reads_it():
    from graph_sparse_attn.nn import GraphTransformer

    seen = []
    model = GraphTransformer("atom", 8, 1, depth=1, heads=2, attention="graph", edge_dim="bond", pe_dim=16, backend="gather")
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("pe")), with_kwargs=True)
    molecules.training_step(model, SimpleNamespace(loss=F.binary_cross_entropy_with_logits))(_batch())
    assert seen[0] is not None and seen[0].shape == (9, 16)
