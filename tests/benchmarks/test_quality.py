"""benchmarks/quality.py: the reference models against brute force, and a tiny sweep that resumes."""
import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SHARED_OGB = BENCHMARKS.parent.parent / "shared" / "data" / "ogb"
sys.path.insert(0, str(BENCHMARKS))
quality = pytest.importorskip("quality")


def _molecules(num_graphs: int = 3, seed: int = 0):
    """A batch of random molecules with OGB-range atom/bond features (symmetric bonds), float64 models."""
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 7, (num_graphs,), generator=generator).tolist()
    batch = torch.repeat_interleave(torch.arange(num_graphs), torch.tensor(sizes))
    x = torch.stack([torch.randint(0, d, (batch.numel(),), generator=generator) for d in get_atom_feature_dims()], dim=1)
    edges, start = [], 0
    for size in sizes:
        for i in range(size - 1):  # a chain, plus one random chord where it fits
            edges.append((start + i, start + i + 1))
        if size > 3:
            edges.append((start, start + size - 1))
        start += size
    src, dst = torch.tensor(edges).t()
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    bond = torch.stack([torch.randint(0, d, (src.numel(),), generator=generator) for d in get_bond_feature_dims()], dim=1)
    return x, edge_index, torch.cat([bond, bond]), batch


def _ogb_gin_virtual_node(model, x, edge_index, edge_attr, batch):
    """OGB's ``GNN_node_Virtualnode`` + mean pool + linear head, written out by hand over ``model``'s parameters (eval)."""
    num_graphs = int(batch.max()) + 1
    virtual = model.virtual.weight.expand(num_graphs, -1)
    h = model.atom(x)
    layers = len(model.convs)
    for layer in range(layers):
        h = h + virtual[batch]
        bond = model.bonds[layer](edge_attr)
        aggregated = torch.zeros_like(h)
        for e in range(edge_index.size(1)):  # OGB's message ReLU(x_j + e_ji), summed at i
            j, i = edge_index[:, e].tolist()
            aggregated[i] += F.relu(h[j] + bond[e])
        conv = model.convs[layer]
        out = model.norms[layer](conv.nn((1 + conv.eps) * h + aggregated))
        out = out if layer == layers - 1 else F.relu(out)
        if layer < layers - 1:
            pooled = torch.stack([h[batch == g].sum(0) for g in range(num_graphs)])
            virtual = model.virtual_mlps[layer](pooled + virtual)
        h = out
    return model.head(torch.stack([h[batch == g].mean(0) for g in range(num_graphs)]))


def test_gin_virtual_node_matches_ogb_math():
    torch.manual_seed(0)
    model = quality.GINVirtualNode(out_channels=2, hidden_channels=8, num_layers=3).double()
    with torch.no_grad():  # make eps, the virtual node and the BatchNorm statistics matter
        for conv in model.convs:
            conv.eps.fill_(0.3)
        model.virtual.weight.normal_()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    inputs = _molecules()
    torch.testing.assert_close(model(*inputs), _ogb_gin_virtual_node(model, *inputs))
    with pytest.raises(ValueError, match="pe"):
        model(*inputs, pe=torch.zeros(inputs[0].size(0), 4, dtype=torch.float64))


def test_gpsconv_model_reads_rwse_through_atom_rwse_encoder():
    x, edge_index, edge_attr, batch = _molecules()
    model = quality.GPSConvModel(out_channels=1, hidden_channels=16, num_layers=2, heads=2, pe_dim=4, pe_width=4)
    pe = torch.randn(x.size(0), 4)
    assert model(x, edge_index, edge_attr, batch, pe=pe).shape == (3, 1)
    model.eval()
    changed = model(x, edge_index, edge_attr, batch, pe=pe + 1)
    assert not torch.allclose(model(x, edge_index, edge_attr, batch, pe=pe), changed)
    with pytest.raises(ValueError, match="pe must be"):
        model(x, edge_index, edge_attr, batch)
    with pytest.raises(ValueError, match="pe must be"):
        quality.GPSConvModel(out_channels=1, hidden_channels=16)(x, edge_index, edge_attr, batch, pe=pe)


@pytest.mark.skipif(not (SHARED_OGB / "ogbg_molfreesolv").exists(), reason="../shared/data/ogb/ogbg_molfreesolv is absent")
def test_sweep_writes_runs_refuses_to_overwrite_and_resumes(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(SHARED_OGB / "ogbg_molfreesolv", root / "ogbg_molfreesolv")
    out = tmp_path / "out"
    base = ["--dataset", "ogbg-molfreesolv", "--models", "gin-vn", "gpsconv", "--epochs", "1", "--max-steps", "2",
            "--root", str(root), "--out", str(out), "--gps-pe", ""]

    quality.main([*base, "--seeds", "0"])
    first = capsys.readouterr().out
    record = json.loads((out / "gin-vn-seed0.json").read_text())
    assert record["metric"] == "rmse" and record["higher_is_better"] is False and record["steps"] == 2
    assert (out / "val_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "test rmse ↓" in first
    assert f"{record['torch_threads']} torch thread(s) per run" in first  # the runs' own setting, recorded with them
    with pytest.raises(SystemExit) as refused:
        quality.main([*base, "--seeds", "0", "1"])
    assert refused.value.code == 2 and "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="other epochs"):  # a finished run of another budget is not mixed in
        quality.main([*base, "--seeds", "0", "--epochs", "2", "--resume"])
    (out / "gpsconv-seed0.json").write_text(json.dumps({**json.loads((out / "gpsconv-seed0.json").read_text()), "marker": 1}))
    quality.main([*base, "--seeds", "0", "1", "--resume"])
    resumed = capsys.readouterr().out
    assert json.loads((out / "gpsconv-seed0.json").read_text())["marker"] == 1  # finished runs are not redone
    assert (out / "gpsconv-seed1.json").exists()
    assert "| 0, 1 |" in resumed
    for model in ("gin-vn", "gpsconv"):  # each row's figure is the mean ± std of its runs' recorded test metric
        tests = [json.loads((out / f"{model}-seed{seed}.json").read_text())["summary"]["test"] for seed in (0, 1)]
        assert f"| {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f} |" in resumed

    written = {}
    monkeypatch.setattr(quality, "HERE", tmp_path)  # --write: RESULTS.md block and plot, here in tmp_path
    monkeypatch.setattr(quality, "update_results", lambda section, markdown: written.update({section: markdown}))
    quality.main([*base, "--seeds", "0", "1", "--resume", "--write"])
    assert written["quality-ogbg-molfreesolv"].startswith("## Equal-budget quality, ogbg-molfreesolv")
    assert "--resume" not in written["quality-ogbg-molfreesolv"] and "(quality-ogbg-molfreesolv.png)" in written["quality-ogbg-molfreesolv"]
    assert (tmp_path / "quality-ogbg-molfreesolv.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_table_rows_and_pairs_are_the_records_means(higher_is_better):
    def run(model, seed, test):
        summary = {"test": test, "val": test + 0.01, "best_epoch": seed + 1, "train_seconds": 10.0, "train_samples_per_s": 100.0}
        return {"model": model, "seed": seed, "metric": "m", "higher_is_better": higher_is_better, "parameters": 1000,
                "wall_seconds": 12.0, "summary": summary}

    tests = {"default": [0.80, 0.70], "gin-vn": [0.72, 0.74], "ours-gps": [0.60, 0.62], "gpsconv": [0.65, 0.66]}
    records = {model: [run(model, seed, value) for seed, value in enumerate(values)] for model, values in tests.items()}
    args = argparse.Namespace(epochs=3, max_steps=0, dataset="ogbg-molx", device="cpu")
    table = quality.format_table(records, args, "python benchmarks/quality.py", [])
    assert f"| {quality.MODELS['default']} | 1,000 | 0.7500 ± 0.0707 | 0.7600 ± 0.0707 | 1, 2 |" in table
    assert f"| {quality.MODELS['gin-vn']} | 1,000 | 0.7300 ± 0.0141 |" in table
    first, second = ("met", "not met") if higher_is_better else ("not met", "met")
    assert f"| {quality.MODELS['default']} vs {quality.MODELS['gin-vn']} | +0.0200 | {first} |" in table
    assert f"| {quality.MODELS['ours-gps']} vs {quality.MODELS['gpsconv']} | -0.0450 | {second} |" in table
    assert ("test m ↑" if higher_is_better else "test m ↓") in table


@pytest.mark.skipif(not (SHARED_OGB / "ogbg_molfreesolv").exists(), reason="../shared/data/ogb/ogbg_molfreesolv is absent")
def test_set_overrides_the_default_and_ablations_tabulate_variants(tmp_path, capsys):
    ablations = pytest.importorskip("ablations")
    root = tmp_path / "data"
    shutil.copytree(SHARED_OGB / "ogbg_molfreesolv", root / "ogbg_molfreesolv")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="bogus"):  # an option the task table does not know is refused
        quality.main(["--dataset", "ogbg-molfreesolv", "--models", "default", "--epochs", "1", "--max-steps", "1", "--seeds", "0",
                      "--root", str(root), "--out", str(tmp_path / "refused"), "--set", "bogus=1"])

    ablations.main(["--dataset", "ogbg-molfreesolv", "--variants", "baseline", "dropout-0.5", "--epochs", "1", "--seeds", "0",
                    "--root", str(root), "--out", str(out)])
    table = capsys.readouterr().out
    configs = {variant: json.loads((out / variant / "default-seed0.json").read_text())["config"] for variant in ("baseline", "dropout-0.5")}
    assert configs["dropout-0.5"]["model_options"]["dropout"] == 0.5
    assert configs["baseline"]["model_options"]["dropout"] == 0.1
    # The base recipe is spelled out: today's default encoding (RWSE) must not leak into it.
    assert configs["baseline"]["data_options"]["pe"] is None and configs["baseline"]["batch_size"] == 64
    assert "| dropout-0.5 | dropout=0.5 |" in table and "test rmse ↓" in table


def test_a_run_continues_only_with_its_own_options(tmp_path):
    # An option added after a run was saved matches only the value that reproduces that run
    # (ADDED_OPTIONS), whatever today's default; every recorded option, top-level or model/data,
    # must match exactly; device and backend are free.
    import copy
    from dataclasses import asdict

    from graph_sparse_attn.train.table import resolve_config

    def config(**options):
        return resolve_config("ogbg-molhiv", {"run_dir": str(tmp_path / "run"), "root": str(tmp_path), **options})

    saved = json.loads(json.dumps(asdict(config())))
    quality.check_same_options(saved, config(device="cpu", backend="compiled"), tmp_path)
    older = copy.deepcopy(saved)
    del older["model_options"]["ffn_dim"], older["model_options"]["activation"]
    as_before = {"ffn_dim": None, "activation": "gelu"}  # how runs behaved before the options existed
    quality.check_same_options(older, config(**as_before), tmp_path)
    with pytest.raises(SystemExit, match="model_options.activation"):
        quality.check_same_options(older, config(ffn_dim=None, activation="relu"), tmp_path)
    with pytest.raises(SystemExit, match="model_options.ffn_dim"):  # today's molecule default is another model
        quality.check_same_options(older, config(), tmp_path)
    del older["grad_clip"]  # not an added option: a run without it is another run
    with pytest.raises(SystemExit, match="grad_clip"):
        quality.check_same_options(older, config(**as_before), tmp_path)
    for changed, message in (({"dim": 32}, "model_options.dim"), ({"epochs": 3}, r"epochs \(saved: 30, now: 3\)")):
        with pytest.raises(SystemExit, match=message):
            quality.check_same_options(saved, config(**changed), tmp_path)
