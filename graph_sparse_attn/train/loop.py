"""The training loop: progress bars, metrics per epoch, atomic checkpoints (mid-epoch too), exact resume, DDP."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as dist_utils
from ..io import atomic_save, atomic_write_text
from ..ops.band_kernel import is_band
from ..ops.dispatch import backend_for_steps
from ..patterns.registry import RANDOM_PATTERNS, build_pattern
from .checkpoint import load_checkpoint, rng_state, set_rng_state
from .heap import TRIM_EVERY_STEPS, keep_large_blocks_on_heap, release_freed_heap
from .tasks import Task


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` in the run directory.

    ``checkpoint_every``: minutes between checkpoints inside an epoch (``0``: after every step);
    ``config_file``: the configuration file the options started from (``gsa train --config``), if any;
    ``backend``: the attention kernel (`sparse_attention`'s ``backend``), which changes speed, not the model
    (``"auto"`` takes the fused CPU kernels for runs of many steps: `ops.dispatch.backend_for_steps`);
    ``data_options`` go to the task's data builder, ``model_options`` to its model builder.
    """

    task: str
    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    deterministic: bool = False
    checkpoint_every: float = 10.0
    config_file: Optional[str] = None
    run_dir: str = "runs/default"
    root: str = "datasets"
    data_options: Dict[str, Any] = field(default_factory=dict)
    model_options: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))


# Options a run may change when it continues: where and how fast it runs and where its data lies,
# not what it computes (the configuration file is provenance; its options are compared one by one).
RUN_OPTIONS = ("device", "backend", "checkpoint_every", "root", "run_dir", "config_file", "imdb_path")
# Options added after runs were saved, with the value that reproduces how those runs behaved: a
# saved configuration that lacks one matches only that value (not today's default, which may change).
ADDED_OPTIONS = {"ffn_dim": None, "activation": "gelu", "position": "learned"}


def config_differences(saved: Dict[str, Any], config: TrainConfig, free: Sequence[str] = RUN_OPTIONS) -> List[str]:
    """What ``config`` changes against a run's saved ``config.json`` (``saved``), as ``"name (saved: X, now: Y)"``
    entries; options in ``free`` (top-level or data options) may differ, and ``data_options``/``model_options`` are
    compared key by key."""
    new = json.loads(json.dumps(asdict(config)))  # tuples become lists, as in the saved file
    missing = object()

    def recorded(old: Dict[str, Any], key: str) -> Any:
        return old.get(key, ADDED_OPTIONS.get(key, missing))

    changes = [(key, recorded(saved, key), new[key]) for key in new
               if key not in free and key not in ("data_options", "model_options") and recorded(saved, key) != new[key]]
    for group in ("data_options", "model_options"):
        old = saved.get(group, {})
        changes += [(f"{group}.{key}", recorded(old, key), new[group].get(key, missing)) for key in sorted(set(new[group]) | set(old))
                    if key not in free and (key not in new[group] or recorded(old, key) != new[group][key])]

    def show(value: Any) -> str:
        return "unset" if value is missing else repr(value)

    return [f"{name} (saved: {show(before)}, now: {show(after)})" for name, before, after in changes]


def planned_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The optimiser steps a run of ``config`` trains: ``epochs`` x ``steps_per_epoch``, at most ``max_steps``."""
    steps = config.epochs * steps_per_epoch
    return min(steps, config.max_steps or steps)


def run_backend(config: TrainConfig, device: torch.device, steps_per_epoch: int) -> str:
    """The attention backend a run of ``config`` takes: `backend_for_steps` over its `planned_steps` and
    whether its sequence pattern runs on the ``band`` backend, asked of the pattern itself (built at
    the run's longest sequence, as ``"auto"`` asks each call): a window or Longformer pattern does,
    a dilated window does not."""
    pattern = config.model_options.get("pattern")
    windows = False
    if pattern is not None:
        length = config.data_options.get("max_length") or _BAND_PROBE_LENGTH
        name, params = pattern
        draws = {"generator": torch.Generator().manual_seed(0)} if name in RANDOM_PATTERNS else {}
        windows = is_band(build_pattern(name, length, **params, **draws), length)
    return backend_for_steps(config.backend, device, planned_steps(config, steps_per_epoch), windows)


# Sequence length at which a run without a max_length has its pattern checked for the band backend.
_BAND_PROBE_LENGTH = 2048
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def build_optimizer(config: TrainConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9, at ``config.lr`` with ``config.weight_decay``.

    AdamW runs PyTorch's fused kernel where every parameter is a CPU or CUDA float tensor: one call
    for all parameters instead of several per parameter (a model of ~80 small tensors spent about
    5x longer in the per-parameter step on CPU), the same update up to float rounding."""
    parameters = list(parameters)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``config.warmup_steps``, then ``config.schedule`` over the rest of the run's
    `planned_steps` (so a cosine reaches zero at ``max_steps`` when that ends the run first)."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config.schedule, config.warmup_steps, planned_steps(config, steps_per_epoch)))


def _lr_lambda(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _new_epoch_progress() -> Dict[str, Any]:
    """Running totals of the epoch in progress (checkpointed, so a resumed epoch reports the same numbers)."""
    return {"batches": 0, "loss_sum": 0.0, "samples": 0, "seconds": 0.0}


class Trainer:
    """Train ``task``'s model under ``config``; rank 0 writes the run directory.

    Run directory: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (written at
    every epoch end and every ``config.checkpoint_every`` minutes inside an epoch), ``best.pt`` (by
    validation metric), ``curves.png``, ``summary.json``. `resume` continues from ``last.pt``
    exactly: same epoch and batch, optimiser, scheduler, loader positions and every random state
    (bitwise at the same CPU thread count: kernels split their sums by thread).

    On CPU (glibc) the process serves large blocks from its heap (`heap.keep_large_blocks_on_heap`,
    process-wide) and hands freed heap pages back every ``TRIM_EVERY_STEPS`` steps (and scoring batches).
    """

    def __init__(self, config: TrainConfig, task: Task) -> None:
        self.config, self.task = config, task
        self.run_dir = Path(config.run_dir)
        self.device = dist_utils.local_device(config.device)
        self.distributed = dist_utils.init_from_env(self.device)
        if self.device.type == "cpu":
            keep_large_blocks_on_heap()
        torch.manual_seed(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        ranks = dist_utils.world_size()
        if task.uses_batch_size and config.batch_size % ranks:  # a floored per-rank batch would train another global batch size
            raise ValueError(f"--batch-size {config.batch_size} must be divisible by the {ranks} data-parallel processes")
        self.loaders = task.loaders(config.batch_size // ranks, seed=config.seed)
        # The attention kernel is a run option (like the device), not part of the model's definition.
        self.backend = run_backend(config, self.device, len(self.loaders["train"]))
        self.model = task.build_model(self.backend).to(self.device)
        self.train_model: nn.Module = self.model
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.scheduler = build_scheduler(config, self.optimizer, len(self.loaders["train"]))
        self.epoch = 0
        self.step = 0
        self.best: Optional[float] = None
        self.history: List[Dict[str, Any]] = []
        self.progress = _new_epoch_progress()
        self._last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------ state
    def state(self) -> Dict[str, Any]:
        """Everything `resume` needs. Under data parallelism every rank must call it: ``ranks`` holds each
        rank's own loader positions (of loaders that expose ``state_dict``) and random states."""
        own = {"loaders": {split: loader.state_dict() for split, loader in self.loaders.items() if hasattr(loader, "state_dict")},
               "rng": rng_state()}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "progress": dict(self.progress),
            "ranks": dist_utils.gather_objects(own),
            "best": self.best,
            "history": self.history,
            "config": asdict(self.config),
        }

    def resume(self) -> bool:
        """Load ``last.pt`` if it exists; returns whether it did."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        # On CPU: the RNG states must stay there (CUDA and CPU generators take CPU byte tensors), and
        # load_state_dict moves the model and optimiser tensors to their parameters' device.
        state = load_checkpoint(path)
        if "ranks" not in state:  # written before checkpoints held every rank's states: one process's
            state["ranks"] = [{"loaders": state.pop("loaders"), "rng": state.pop("rng")}]
        ranks = dist_utils.world_size()
        if len(state["ranks"]) != ranks:  # each rank's batch size, data shard and random states depend on it
            raise ValueError(f"{path} was written by {len(state['ranks'])} data-parallel process(es); "
                             f"resume it with as many, not {ranks}")
        own = state["ranks"][dist_utils.rank()]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]
        self.progress = dict(state["progress"])
        for split, loader_state in own["loaders"].items():
            if hasattr(self.loaders[split], "load_state_dict"):  # not evaluation splits drawn anew each pass
                self.loaders[split].load_state_dict(loader_state)
        set_rng_state(own["rng"])
        return True

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` now (rank 0), mid-epoch or not; every rank must call it."""
        state = self.state()
        if dist_utils.is_main():
            atomic_save(state, self.run_dir / "last.pt")
        self._last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------ loop
    @property
    def finished(self) -> bool:
        """``max_steps`` optimiser steps done (``0``: no step limit)."""
        return bool(self.config.max_steps) and self.step >= self.config.max_steps

    def train_epoch(self, bar_position: int = 1) -> Dict[str, float]:
        """Train the rest of the current epoch (all of it unless resumed inside it)."""
        self.train_model.train()
        loader = self.loaders["train"]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        progress = self.progress
        start = time.perf_counter() - progress["seconds"]
        batches = iter(loader)
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", leave=False, position=bar_position, disable=not dist_utils.is_main(),
                   initial=progress["batches"], total=len(loader))
        try:
            for batch in bar:
                batch = batch.to(self.device)
                prediction, target = self.task.forward(self.train_model, batch, "train")
                loss = self.task.loss(prediction, target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.config.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self._release_heap_every_few(self.step)
                samples, loss_value = self.task.num_samples(batch), loss.item()
                progress["batches"] += 1
                progress["loss_sum"] += loss_value * samples
                progress["samples"] += samples
                progress["seconds"] = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_value:.4f}", samples_per_s=f"{progress['samples'] / progress['seconds']:.1f}")
                if self.finished:
                    break
                epoch_ends = progress["batches"] == len(loader)  # the epoch-end checkpoint follows
                due = time.monotonic() - self._last_checkpoint >= 60 * self.config.checkpoint_every
                if not epoch_ends and dist_utils.any_rank(due, self.device):  # ranks' clocks differ; all must gather
                    self.save_checkpoint()
        finally:
            bar.close()
            if hasattr(batches, "close"):  # an epoch cut short by max_steps: the loader's next epoch starts afresh
                batches.close()
        self.progress = _new_epoch_progress()
        loss = dist_utils.mean_across_ranks(progress["loss_sum"] / max(progress["samples"], 1), self.device)
        # All processes' samples in the slowest process's time: the run's throughput, not one process's.
        samples = int(dist_utils.sum_across_ranks(progress["samples"], self.device))
        seconds = max(dist_utils.gather_objects(progress["seconds"]))
        return {"train_loss": loss, "train_seconds": seconds, "train_samples": samples,
                "train_samples_per_s": samples / max(seconds, 1e-9)}

    def _release_heap_every_few(self, count: int) -> None:
        """On CPU, hand freed heap pages back after every ``TRIM_EVERY_STEPS``-th step or batch (``count``)."""
        if self.device.type == "cpu" and count % TRIM_EVERY_STEPS == 0:
            release_freed_heap()

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        """The task's official metric on ``split`` (every rank evaluates the whole split)."""
        self.model.eval()
        predictions, targets = [], []
        loader = self.loaders[split]
        # Scoring a large split (LRA Text's 25,000 test reviews) can take as long as an epoch's training.
        bar = tqdm(loader, desc=split, leave=False, position=1, disable=not dist_utils.is_main(), total=len(loader))
        for index, batch in enumerate(bar, 1):
            batch = batch.to(self.device)
            prediction, target = self.task.forward(self.model, batch, split)
            predictions.append(prediction.float().cpu())
            targets.append(target.cpu())
            self._release_heap_every_few(index)
        return self.task.score(torch.cat(predictions), torch.cat(targets))

    def fit(self) -> Dict[str, Any]:
        """Train the remaining epochs; returns the final record (best validation epoch's test metric)."""
        main = dist_utils.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config.to_json(), self.run_dir / "config.json")
        epochs = tqdm(range(self.epoch, self.config.epochs), desc=f"{self.config.task}", position=0, disable=not main,
                      initial=self.epoch, total=self.config.epochs)
        for _ in epochs:
            if self.finished:
                break
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            val = record["val_" + self.task.metric] = self.evaluate("val")
            # NaN (a diverged epoch) is never the best: a later real score must still count as an improvement.
            improved = not math.isnan(val) and (self.best is None or (val > self.best if self.task.higher_is_better else val < self.best))
            # The reported test metric is the one at the best validation epoch, so the test split
            # is only scored when validation improves (it can be the costliest pass of an epoch).
            record["test_" + self.task.metric] = self.evaluate("test") if improved else None
            record["lr"] = self.scheduler.get_last_lr()[0]
            self.epoch += 1
            if improved:
                self.best = val
            record["best_val"] = self.best
            self.history.append(record)
            state = self.state()  # on every rank: it gathers each rank's loader positions and random states
            if main:
                self._write_epoch(state, improved)
            self._last_checkpoint = time.monotonic()
            dist_utils.barrier()
            epochs.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{val:.4f}")
        final = self.summary()
        if main:
            atomic_write_text(json.dumps(final, indent=2), self.run_dir / "summary.json")
        return final

    def summary(self) -> Dict[str, Any]:
        metric = self.task.metric
        if not self.history:
            return {"task": self.config.task, "metric": metric, "epochs": 0}
        scored = [r for r in self.history if not math.isnan(r["val_" + metric])]
        if not scored:  # every epoch diverged: no best epoch to report
            return {"task": self.config.task, "metric": metric, "backend": self.backend, "epochs": self.epoch,
                    "best_epoch": None, "val": math.nan, "test": math.nan, **self._throughput()}
        pick = max if self.task.higher_is_better else min
        best = pick(scored, key=lambda r: r["val_" + metric])
        return {
            "task": self.config.task,
            "metric": metric,
            "backend": self.backend,
            "epochs": self.epoch,
            "best_epoch": best["epoch"],
            "val": best["val_" + metric],
            "test": best["test_" + metric],
            **self._throughput(),
        }

    def _throughput(self) -> Dict[str, float]:
        seconds = sum(r["train_seconds"] for r in self.history)
        return {"train_seconds": seconds, "train_samples_per_s": sum(r["train_samples"] for r in self.history) / max(seconds, 1e-9)}

    def _write_epoch(self, state: Dict[str, Any], improved: bool) -> None:
        # Rewritten whole from the history, and before the checkpoints: a kill between files leaves
        # last.pt one epoch behind, and the resumed run redoes that epoch and rewrites them all.
        atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / "metrics.jsonl")
        from ..viz import plot_curves  # matplotlib and networkx load when a run first plots, not with the CLI

        plot_curves(self.history, self.task.metric, self.run_dir / "curves.png")
        if improved:
            atomic_save(state, self.run_dir / "best.pt")
        atomic_save(state, self.run_dir / "last.pt")

