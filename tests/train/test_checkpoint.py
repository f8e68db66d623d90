"""Checkpoints inside an epoch and exact resume: a run stopped mid-epoch ends where an uninterrupted one does."""
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graph_sparse_attn.data.benchmarks import NodeData, accuracy_metric
from graph_sparse_attn.io import atomic_save, atomic_write_text
from graph_sparse_attn.train.loop import TrainConfig, Trainer, build_optimizer, build_scheduler
from graph_sparse_attn.train.table import make_task, node_model, resolve_config
from graph_sparse_attn.train.tasks import NodeClassificationTask, ResumableLoader

TINY_LISTOPS = {"num_train": 48, "num_val": 16, "num_test": 16, "min_length": 20, "max_length": 40, "dim": 16, "depth": 1,
                "heads": 2, "batch_size": 8, "epochs": 2, "dropout": 0.1, "checkpoint_every": 0.0,
                # bigbird draws its random edges in the collator from the global RNG: resuming must replay them
                "pattern": "bigbird:window=2,global_indices=0,num_random=2"}


class Killed(Exception):
    """Stands for a kill: the trainer never runs another line."""


def kill_after_checkpoint(monkeypatch, step):
    save = Trainer.save_checkpoint

    def save_then_die(self):
        save(self)
        if self.step == step:
            raise Killed

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)


def assert_same_run(a: Trainer, b: Trainer):
    assert a.step == b.step and a.epoch == b.epoch
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    for record_a, record_b in zip(a.history, b.history, strict=True):
        for key in record_a:
            if "seconds" not in key and "per_s" not in key:
                assert record_a[key] == record_b[key], key


def test_listops_killed_mid_epoch_resumes_bit_exactly(tmp_path, monkeypatch):
    def config(name):
        return resolve_config("listops", {**TINY_LISTOPS, "root": str(tmp_path / "data"), "run_dir": str(tmp_path / name)})

    straight = Trainer(config("straight"), make_task(config("straight")))
    straight.fit()

    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, step=8)  # 6 batches per epoch: the kill lands in epoch 2
        with pytest.raises(Killed):
            Trainer(config("killed"), make_task(config("killed"))).fit()
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert (saved["epoch"], saved["progress"]["batches"], saved["ranks"][0]["loaders"]["train"]) == (1, 2, {"position": 2})

    resumed = Trainer(config("killed"), make_task(config("killed")))
    assert resumed.resume() and resumed.progress["batches"] == 2
    resumed.fit()
    assert_same_run(straight, resumed)
    records = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_data_parallel_run_killed_mid_epoch_resumes_exactly(tmp_path):
    """Each rank resumes its own random state: the ranks' dropout masks and random attention edges
    differ, so loading rank 0's state on every rank would train other weights than the straight run."""
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(tmp_path)]
    proc = subprocess.run(torchrun, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["step"] == 8 and result["ranks_saved"] == 2 and result["ranks_draw_differently"]
    assert result["steps"] == [12, 12] and result["different_weights"] == []


def test_resume_refuses_another_number_of_processes(tmp_path):
    config = resolve_config("listops", {**TINY_LISTOPS, "root": str(tmp_path / "data"), "run_dir": str(tmp_path / "run"), "epochs": 1})
    Trainer(config, make_task(config)).fit()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    saved["ranks"].append(saved["ranks"][0])  # as if two processes had written it
    atomic_save(saved, tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match="written by 2 data-parallel process.*resume it with as many, not 1"):
        Trainer(config, make_task(config)).resume()
    # A checkpoint of an earlier version (one process's loader and random states at the top level) still resumes.
    earlier = {**saved, **saved["ranks"][0]}
    del earlier["ranks"]
    atomic_save(earlier, tmp_path / "run" / "last.pt")
    resumed = Trainer(config, make_task(config))
    assert resumed.resume() and torch.equal(torch.get_rng_state(), saved["ranks"][0]["rng"]["torch"])


def synthetic_node_task(num_neighbors):
    generator = torch.Generator().manual_seed(0)
    num_nodes = 60
    edge_index = torch.randint(0, num_nodes, (2, 300), generator=generator)
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    from torch_geometric.data import Data

    data = Data(x=torch.randn(num_nodes, 8, generator=generator), y=torch.randint(0, 3, (num_nodes,), generator=generator),
                edge_index=edge_index)
    order = torch.randperm(num_nodes, generator=generator)
    split_idx = {"train": order[:40], "val": order[40:50], "test": order[50:]}
    model_options = {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.3, "attn_dropout": 0.1, "attention": "graph", "gps": False}
    return NodeClassificationTask("synthetic", NodeData(data, split_idx, 3), accuracy_metric("synthetic"), node_model, model_options,
                                  num_neighbors=num_neighbors)


def test_neighbour_sampled_run_killed_mid_epoch_resumes_bit_exactly(tmp_path, monkeypatch):
    def config(name):
        return TrainConfig(task="synthetic", epochs=3, batch_size=8, lr=1e-2, checkpoint_every=0.0, run_dir=str(tmp_path / name))

    straight = Trainer(config("straight"), synthetic_node_task([3, 2]))
    straight.fit()
    with monkeypatch.context() as patch:
        kill_after_checkpoint(patch, step=7)  # 5 batches per epoch
        with pytest.raises(Killed):
            Trainer(config("killed"), synthetic_node_task([3, 2])).fit()
    resumed = Trainer(config("killed"), synthetic_node_task([3, 2]))
    assert resumed.resume() and (resumed.epoch, resumed.progress["batches"]) == (1, 2)
    resumed.fit()
    assert_same_run(straight, resumed)


def test_resume_loads_the_checkpoint_on_the_cpu_whatever_the_run_s_device(tmp_path):
    """A CUDA run resumes too: the random states (CPU byte tensors, the only kind generators take) must not
    follow the model to its device; load_state_dict moves model and optimiser tensors there itself."""
    config = TrainConfig(task="synthetic", epochs=1, batch_size=8, run_dir=str(tmp_path / "run"))
    Trainer(config, synthetic_node_task([3, 2])).fit()
    resumed = Trainer(config, synthetic_node_task([3, 2]))
    resumed.device = torch.device("meta")  # stands for a GPU here: no tensor may be loaded onto it
    assert resumed.resume()


def test_checkpoint_every_minutes_spaces_mid_epoch_checkpoints(tmp_path, monkeypatch):
    saved_at = []
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: saved_at.append(self.step))
    config = TrainConfig(task="synthetic", epochs=1, batch_size=8, checkpoint_every=10.0, run_dir=str(tmp_path / "run"))
    Trainer(config, synthetic_node_task([3, 2])).fit()
    assert saved_at == []  # a 5-step epoch is far shorter than 10 minutes
    config.checkpoint_every = 0.0
    Trainer(config, synthetic_node_task([3, 2])).fit()
    assert saved_at == [1, 2, 3, 4]  # after every step but the epoch's last (the epoch-end checkpoint covers it)


def test_cpu_training_keeps_large_blocks_on_the_heap_and_returns_freed_heap_every_few_steps(tmp_path, monkeypatch):
    from graph_sparse_attn.train import loop

    trimmed_at, kept = [], []
    monkeypatch.setattr(loop, "TRIM_EVERY_STEPS", 2)
    monkeypatch.setattr(loop, "release_freed_heap", lambda: trimmed_at.append((trainer.step, trainer.model.training)))
    monkeypatch.setattr(loop, "keep_large_blocks_on_heap", lambda: kept.append(True))
    config = TrainConfig(task="synthetic", epochs=2, batch_size=8, run_dir=str(tmp_path / "run"))
    trainer = Trainer(config, synthetic_node_task([3, 2]))
    trainer.fit()
    assert kept == [True]
    assert [step for step, training in trimmed_at if training] == [2, 4, 6, 8, 10]  # 5 steps an epoch
    # Scoring a split trims too, every few batches (LRA Text's test split takes as long as an epoch).
    trimmed_at.clear()
    monkeypatch.setattr(loop, "TRIM_EVERY_STEPS", 1)
    trainer.evaluate("val")
    assert len(trimmed_at) == len(trainer.loaders["val"]) > 0
    assert not any(training for _, training in trimmed_at)


def test_resumable_loader_continues_inside_the_epoch():
    dataset = list(range(20))
    full = ResumableLoader(dataset, 3, seed=5)
    full.set_epoch(2)
    expected = [batch.tolist() for batch in full]
    partial = ResumableLoader(dataset, 3, seed=5)
    partial.set_epoch(2)
    iterator = iter(partial)
    first = [next(iterator).tolist() for _ in range(4)]
    state = partial.state_dict()
    assert state == {"position": 4}
    again = ResumableLoader(dataset, 3, seed=5)
    again.load_state_dict(state)
    again.set_epoch(2)
    assert first + [batch.tolist() for batch in again] == expected
    assert again.state_dict() == {"position": 0}  # the next epoch starts at its beginning
    before = torch.get_rng_state()
    list(again)
    assert torch.equal(torch.get_rng_state(), before), "iterating must not draw from the global RNG"


def test_optimiser_and_scheduler_builders():
    model = torch.nn.Linear(2, 2)
    config = TrainConfig(task="t", optimizer="sgd", lr=0.5, warmup_steps=2, schedule="linear", epochs=2)
    optimizer = build_optimizer(config, model.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=3)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.5, 0.375, 0.25, 0.125])
    # max_steps ends the run before its epochs do: the schedule spans those steps (warm-up 2, then linear to 0 at step 4)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(TrainConfig(task="t", lr=0.5, warmup_steps=2, schedule="linear", epochs=2, max_steps=4), optimizer, 3)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(TrainConfig(task="t", optimizer="lamb"), model.parameters())
    with pytest.raises(ValueError, match="schedule"):
        build_scheduler(TrainConfig(task="t", schedule="step"), optimizer, 3)


def test_a_diverged_epoch_is_never_the_best(tmp_path, monkeypatch):
    config = resolve_config("listops", {**TINY_LISTOPS, "root": str(tmp_path / "data"), "run_dir": str(tmp_path / "run"), "epochs": 3})
    trainer = Trainer(config, make_task(config))
    scores = iter([math.nan, 0.4, 0.5, 0.3])  # val 1 (diverged), val 2 and its test, val 3
    monkeypatch.setattr(trainer, "evaluate", lambda split: next(scores))
    summary = trainer.fit()
    assert (summary["best_epoch"], summary["val"], summary["test"]) == (2, 0.4, 0.5)
    assert [r["best_val"] for r in trainer.history][1:] == [0.4, 0.4]

    config = dataclasses.replace(config, run_dir=str(tmp_path / "nan"), epochs=1)
    trainer = Trainer(config, make_task(config))
    monkeypatch.setattr(trainer, "evaluate", lambda split: math.nan)
    summary = trainer.fit()
    assert summary["best_epoch"] is None and math.isnan(summary["val"]) and math.isnan(summary["test"])


def test_a_batch_the_data_parallel_processes_do_not_divide_is_refused(tmp_path, monkeypatch):
    from graph_sparse_attn.train import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    config = resolve_config("listops", {**TINY_LISTOPS, "root": str(tmp_path / "data"), "run_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="--batch-size 8 must be divisible by the 3 data-parallel processes"):
        Trainer(config, make_task(config))
    full_graph = TrainConfig(task="synthetic", batch_size=8, run_dir=str(tmp_path / "full"))
    Trainer(full_graph, synthetic_node_task(None))  # one whole graph a step: no batch to divide


def test_a_diverged_model_scores_nan_and_the_cli_says_so(tmp_path):
    task = synthetic_node_task(None)
    assert math.isnan(task.score(torch.full((4, 3), math.nan), torch.zeros(4, dtype=torch.long)))  # not the argmax's class 0
    proc = subprocess.run([sys.executable, "-m", "graph_sparse_attn", "train", "listops", "--num-train", "48", "--num-val", "16",
                           "--num-test", "16", "--min-length", "20", "--max-length", "40", "--dim", "16", "--depth", "1", "--epochs", "1",
                           "--optimizer", "sgd", "--lr", "1e30", "--grad-clip", "0", "--warmup-steps", "0",
                           "--root", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "every epoch diverged" in proc.stderr, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=float)
    assert summary["best_epoch"] is None and math.isnan(summary["val"])


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "file.json"
    atomic_write_text("old", path)

    def failing(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    from graph_sparse_attn.io import atomic_write

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["file.json"]
    atomic_save({"a": torch.arange(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.arange(3))


def test_adamw_runs_fused_and_steps_like_the_per_parameter_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    config = TrainConfig(task="t", lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(config, model.parameters())
    assert optimizer.defaults["fused"] is True
    reference = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    x = torch.randn(16, 4)
    for _ in range(5):
        for net, opt in ((model, optimizer), (twin, reference)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_a_run_killed_while_writing_its_last_epoch_ends_with_complete_files_when_resumed(tmp_path, monkeypatch):
    from graph_sparse_attn.train import loop

    config = resolve_config("listops", {**TINY_LISTOPS, "root": str(tmp_path / "data"), "run_dir": str(tmp_path / "run"),
                                        "checkpoint_every": 60.0})
    write, metric_writes = loop.atomic_write_text, []

    def die_writing_the_last_epochs_metrics(text, path):
        if Path(path).name == "metrics.jsonl":
            metric_writes.append(text)
            if len(metric_writes) == config.epochs:
                raise Killed
        write(text, path)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "atomic_write_text", die_writing_the_last_epochs_metrics)
        with pytest.raises(Killed):
            Trainer(config, make_task(config)).fit()
    resumed = Trainer(config, make_task(config))
    assert resumed.resume()
    resumed.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, config.epochs + 1))
