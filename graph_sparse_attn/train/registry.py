"""Task names → default budgets and task objects."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from .tasks import GraphPropertyTask, NodeClassificationTask, SequenceClassificationTask, Task

SEQUENCE_TASKS = ("listops", "imdb")
NODE_TASKS = ("cora", "citeseer", "ogbn-arxiv", "ogbn-products")


class UnknownTask(ValueError):
    """A task name that no loader knows."""


def task_defaults(task: str) -> Dict[str, Any]:
    """Budget and model defaults of ``task`` (CLI options override them)."""
    if task == "listops":
        # The default job: small, offline, a few minutes on 2 CPU cores. Pass --num-train 96000
        # --min-length 500 --max-length 2000 and a larger model/budget for the LRA setting.
        return {
            "epochs": 5, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "width_key": "dim",
            "task": {"num_train": 3000, "num_val": 300, "num_test": 300, "min_length": 100, "max_length": 500,
                     "pattern": ["longformer", {"window": 16, "global_indices": [0]}]},
            "model": {"dim": 64, "depth": 2, "heads": 4, "dropout": 0.0, "position": "learned"},
        }
    if task == "imdb":
        return {
            "epochs": 5, "batch_size": 16, "lr": 5e-4, "width_key": "dim",
            "task": {"max_length": 4096, "pattern": ["longformer", {"window": 64, "global_indices": [0]}]},
            "model": {"dim": 64, "depth": 2, "heads": 4, "dropout": 0.1, "pooling": "mean"},
        }
    if task.startswith("ogbg-") or task == "peptides-func":
        return {"epochs": 30, "batch_size": 64, "lr": 1e-3, "width_key": "hidden_channels", "model": {}}
    if task == "ogbn-products":  # 2.4M nodes, 62M edges: neighbour-sampled mini-batches
        return {"epochs": 10, "batch_size": 1024, "lr": 3e-3, "width_key": "hidden_channels", "model": {},
                "task": {"num_neighbors": [15, 10]}}
    if task in NODE_TASKS:
        return {"epochs": 200 if task in ("cora", "citeseer") else 100, "batch_size": 1024, "lr": 5e-3,
                "width_key": "hidden_channels", "model": {}}
    raise UnknownTask(f"unknown task {task!r}; known: listops, imdb, ogbg-<name>, {', '.join(NODE_TASKS)}, peptides-func")


def make_task(config) -> Task:
    """Build the task named in ``config`` (loading or generating its data under ``config.root``)."""
    task, root, options = config.task, Path(config.root), dict(config.task_options)
    task_defaults(task)
    if task in SEQUENCE_TASKS:
        return _sequence_task(task, root, options, config)
    if task.startswith("ogbg-"):
        return GraphPropertyTask.from_ogb(task, root, config.model_options)
    if task == "peptides-func":
        return GraphPropertyTask.peptides_func(root, config.model_options)
    if task in ("cora", "citeseer"):
        return _planetoid_task(task, root, config)
    if task.startswith("ogbn-"):
        return NodeClassificationTask.from_ogb(task, root, config.model_options, options.get("num_neighbors"))
    raise UnknownTask(f"task {task!r} is not available in this version")


def _sequence_task(task: str, root: Path, options: Dict[str, Any], config) -> SequenceClassificationTask:
    pattern_name, pattern_params = options.pop("pattern")
    if task == "listops":
        from ..data import listops

        splits = {
            split: listops.load_listops(root, split, num_train=options["num_train"], num_val=options["num_val"],
                                        num_test=options["num_test"], seed=config.seed, min_length=options["min_length"],
                                        max_length=options["max_length"])
            for split in ("train", "val", "test")
        }
        vocab_size, num_classes, cls_token = len(listops.VOCAB), 10, listops.CLS
    else:
        from ..data import imdb

        path = Path(options.get("imdb_path") or root / "aclImdb")
        train = imdb.load_imdb(path, "train", max_length=options["max_length"])
        # LRA Text has no validation split: hold out a fixed tenth of the training reviews.
        holdout = set(range(0, len(train), 10))
        kept = [i for i in range(len(train)) if i not in holdout]
        if "num_train" in options:  # a seeded subset of the training reviews, for small budgets
            order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(config.seed))
            kept = sorted(kept[i] for i in order[: options["num_train"]].tolist())
        splits = {
            "train": [train[i] for i in kept],
            "val": [train[i] for i in sorted(holdout)],
            "test": imdb.load_imdb(path, "test", max_length=options["max_length"]),
        }
        vocab_size, num_classes, cls_token = imdb.VOCAB_SIZE, 2, imdb.CLS
    return SequenceClassificationTask(task, splits, vocab_size, num_classes, cls_token=cls_token,
                                      pattern=(pattern_name, pattern_params), model_options=config.model_options)


def _planetoid_task(task: str, root: Path, config) -> NodeClassificationTask:
    from torch_geometric.datasets import Planetoid

    from .tasks import _require_offline_copy

    name = {"cora": "Cora", "citeseer": "CiteSeer"}[task]
    _require_offline_copy(root / name, f"{root / name}/raw/ind.{task}.{{x,y,tx,ty,allx,ally,graph,test.index}}",
                          "https://github.com/kimiyoung/planetoid/raw/master/data")
    data = Planetoid(str(root), name)[0]
    split_idx = {split: mask.nonzero().view(-1) for split, mask in (("train", data.train_mask), ("val", data.val_mask), ("test", data.test_mask))}
    return NodeClassificationTask(task, data, split_idx, int(data.y.max()) + 1, config.model_options,
                                  num_neighbors=config.task_options.get("num_neighbors"))
