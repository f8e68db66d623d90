"""The training loop: progress bars, metrics per epoch, atomic checkpoints, exact resume, DDP."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as dist_utils
from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .tasks import Task


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` in the run directory."""

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
    deterministic: bool = False
    run_dir: str = "runs/default"
    root: str = "datasets"
    task_options: Dict[str, Any] = field(default_factory=dict)
    model_options: Dict[str, Any] = field(default_factory=dict)


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


class Trainer:
    """Train ``task``'s model under ``config``; rank 0 writes the run directory.

    Run directory: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` and
    ``best.pt`` (by validation metric), ``curves.png``. ``resume=True`` continues from
    ``last.pt`` with the same epoch, optimiser, scheduler and RNG states.
    """

    def __init__(self, config: TrainConfig, task: Task) -> None:
        self.config, self.task = config, task
        self.run_dir = Path(config.run_dir)
        self.device = dist_utils.local_device(config.device)
        self.distributed = dist_utils.init_from_env(self.device)
        torch.manual_seed(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        self.loaders = task.loaders(config.batch_size // dist_utils.world_size(), seed=config.seed)
        self.model = task.build_model().to(self.device)
        self.train_model: nn.Module = self.model
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * len(self.loaders["train"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config.schedule, config.warmup_steps, total_steps)
        )
        self.epoch = 0
        self.step = 0
        self.best: Optional[float] = None
        self.history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    def state(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "rng": rng_state(),
            "config": asdict(self.config),
        }

    def resume(self) -> bool:
        """Load ``last.pt`` if it exists; returns whether it did."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.best, self.history = state["epoch"], state["step"], state["best"], state["history"]
        set_rng_state(state["rng"])
        return True

    # ------------------------------------------------------------------ loop
    @property
    def finished(self) -> bool:
        """``max_steps`` optimiser steps done (``0``: no step limit)."""
        return bool(self.config.max_steps) and self.step >= self.config.max_steps

    def train_epoch(self, bar_position: int = 1) -> Dict[str, float]:
        self.train_model.train()
        loader = self.loaders["train"]
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(self.epoch)
        total_loss, total_samples, start = 0.0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", leave=False, position=bar_position, disable=not dist_utils.is_main())
        for batch in bar:
            if self.finished:
                break
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
            samples = self.task.num_samples(batch)
            total_loss += float(loss) * samples
            total_samples += samples
            bar.set_postfix(loss=f"{float(loss):.4f}", samples_per_s=f"{total_samples / (time.perf_counter() - start):.1f}")
        seconds = time.perf_counter() - start
        loss = dist_utils.mean_across_ranks(total_loss / max(total_samples, 1), self.device)
        return {"train_loss": loss, "train_seconds": seconds, "train_samples_per_s": total_samples / max(seconds, 1e-9)}

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        """The task's official metric on ``split`` (every rank evaluates the whole split)."""
        self.model.eval()
        predictions, targets = [], []
        for batch in self.loaders[split]:
            batch = batch.to(self.device)
            prediction, target = self.task.forward(self.model, batch, split)
            predictions.append(prediction.float().cpu())
            targets.append(target.cpu())
        return self.task.score(torch.cat(predictions), torch.cat(targets))

    def fit(self) -> Dict[str, Any]:
        """Train the remaining epochs; returns the final record (best validation epoch's test metric)."""
        main = dist_utils.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json.dumps(asdict(self.config), indent=2), self.run_dir / "config.json")
        epochs = tqdm(range(self.epoch, self.config.epochs), desc=f"{self.config.task}", position=0, disable=not main,
                      initial=self.epoch, total=self.config.epochs)
        for _ in epochs:
            if self.finished:
                break
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            val = record["val_" + self.task.metric] = self.evaluate("val")
            improved = self.best is None or (val > self.best if self.task.higher_is_better else val < self.best)
            # The reported test metric is the one at the best validation epoch, so the test split
            # is only scored when validation improves (it can be the costliest pass of an epoch).
            record["test_" + self.task.metric] = self.evaluate("test") if improved else None
            record["lr"] = self.scheduler.get_last_lr()[0]
            self.epoch += 1
            if improved:
                self.best = val
            record["best_val"] = self.best
            self.history.append(record)
            if main:
                self._write_epoch(record, improved)
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
        pick = max if self.task.higher_is_better else min
        best = pick(self.history, key=lambda r: r["val_" + metric])
        return {
            "task": self.config.task,
            "metric": metric,
            "epochs": self.epoch,
            "best_epoch": best["epoch"],
            "val": best["val_" + metric],
            "test": best["test_" + metric],
            "train_seconds": sum(r["train_seconds"] for r in self.history),
        }

    def _write_epoch(self, record: Dict[str, Any], improved: bool) -> None:
        state = self.state()
        if improved:
            atomic_save(state, self.run_dir / "best.pt")
        atomic_save(state, self.run_dir / "last.pt")
        # Rewritten whole from the checkpointed history, so a kill between files cannot duplicate lines.
        atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / "metrics.jsonl")
        plot_curves(self.history, self.task.metric, self.run_dir / "curves.png")


def plot_curves(history: List[Dict[str, Any]], metric: str, path: Path) -> None:
    """Training loss and validation metric per epoch (test where validation improved), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    for split, style in (("val", "o-"), ("test", "s")):
        scored = [r for r in history if r[f"{split}_{metric}"] is not None]
        ax_metric.plot([r["epoch"] for r in scored], [r[f"{split}_{metric}"] for r in scored], style, label=split)
    ax_metric.set(xlabel="epoch", ylabel=metric)
    ax_metric.legend()
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
