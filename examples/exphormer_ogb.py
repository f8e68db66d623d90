"""Exphormer on an OGB molecule dataset: attention patterns built in the data pipeline.

The deterministic part of Exphormer's pattern (graph edges + self loops + a virtual node) is a
``pre_transform``, computed once and cached with the dataset; the random expander is a
``transform``, drawn afresh for every graph by PyG's own ``DataLoader``. ``GraphTransformer``
takes the pattern from the batch.

    python examples/exphormer_ogb.py --root COPY            # a copy of ogb's folder layout
    python examples/exphormer_ogb.py --root COPY --name ogbg-molbace --steps 50

``COPY`` holds only raw files: a root that ``gsa train`` has processed was processed without
this example's ``pre_transform``, and the example refuses it.

Runs offline on a local copy: ``ROOT/ogbg_molhiv/{raw,split,mapping,RELEASE_v1.txt}``
(the loader writes ``processed/`` beside it).
"""
import argparse

import torch
import torch.nn.functional as F
from ogb.graphproppred import Evaluator, PygGraphPropPredDataset
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import Compose

from graph_sparse_attn import GraphTransformer
from graph_sparse_attn.transforms import AddExpanderPattern, AddGraphPattern, AddVirtualNodes


def batch_inputs(batch):
    """The model's inputs from a PyG batch, its attention pattern included."""
    return dict(x=batch.x, edge_index=batch.edge_index, edge_attr=batch.edge_attr, batch=batch.batch,
                attn_index=batch.attn_index, attn_type=batch.attn_type, attn_edge=batch.attn_edge, num_graphs=batch.num_graphs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding a copy of the OGB dataset folder")
    parser.add_argument("--name", default="ogbg-molhiv")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--expander-degree", type=int, default=4)
    parser.add_argument("--num-virtual", type=int, default=1)
    parser.add_argument("--subset", type=int, default=512, help="validation graphs (drawn at random) scored at the end")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)

    pre_transform = Compose([AddGraphPattern(), AddVirtualNodes(args.num_virtual)])
    # ogb reloads its cache with torch.load(weights_only=True): allow PyG's storage classes.
    with torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage]):
        dataset = PygGraphPropPredDataset(args.name, root=args.root, pre_transform=pre_transform,
                                          transform=AddExpanderPattern(args.expander_degree))
    first = dataset[0]
    if "attn_index" not in first or int(first.num_virtual) != args.num_virtual:
        # PyG only warns when processed/ was made with another pre_transform (a `gsa train` run's, say).
        raise SystemExit(f"{dataset.processed_dir} was processed without this example's pre_transform "
                         f"(graph pattern + {args.num_virtual} virtual node(s)): delete it or use another --root")
    split = dataset.get_idx_split()
    train = dataset[split["train"]]
    valid = dataset[split["valid"][torch.randperm(len(split["valid"]))[: args.subset]]]
    valid.transform = AddExpanderPattern(args.expander_degree, seed_per_graph=0)  # fixed expanders for evaluation
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

    model = GraphTransformer("atom", args.hidden, dataset.num_tasks, depth=3, heads=4, edge_dim="bond", attention="exphormer",
                             expander_degree=args.expander_degree, num_virtual=args.num_virtual)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = F.mse_loss if dataset.task_type == "regression" else F.binary_cross_entropy_with_logits
    step = 0
    while step < args.steps:
        for batch in loader:
            out = model(**batch_inputs(batch))
            labelled = ~torch.isnan(batch.y)  # OGB marks missing labels with NaN
            loss = criterion(out[labelled], batch.y[labelled].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
            if step == args.steps:
                break

    model.eval()
    with torch.no_grad():
        batches = list(DataLoader(valid, batch_size=args.batch_size))
        y_pred = torch.cat([model(**batch_inputs(b)) for b in batches])
        y_true = torch.cat([b.y for b in batches])
    evaluator = Evaluator(args.name)
    score = evaluator.eval({"y_true": y_true.numpy(), "y_pred": y_pred.numpy()})[evaluator.eval_metric]
    print(f"validation {evaluator.eval_metric} on {len(valid)} graphs: {score:.4f}")


if __name__ == "__main__":
    main()
