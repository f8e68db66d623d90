"""Run by `test_checkpoint.test_data_parallel_run_killed_mid_epoch_resumes_exactly` under ``torchrun``
(not collected by pytest): every rank trains a tiny ListOps run straight, then the same run killed
mid-epoch and resumed; rank 0 writes what the test compares to ``OUT/result.json``."""
import json
import sys
from pathlib import Path

import torch

from graph_sparse_attn.train.loop import Trainer
from graph_sparse_attn.train.table import make_task, resolve_config
from test_checkpoint import TINY_LISTOPS, Killed, kill_after_checkpoint


class _Patch:
    """The one `monkeypatch.setattr` that `kill_after_checkpoint` needs, outside pytest."""

    def setattr(self, target, name, value):
        setattr(target, name, value)


def main(out: Path) -> None:
    def trainer(name: str) -> Trainer:
        config = resolve_config("listops", {**TINY_LISTOPS, "root": str(out / "data"), "run_dir": str(out / name)})
        return Trainer(config, make_task(config))

    straight = trainer("straight")
    straight.fit()
    save = Trainer.save_checkpoint
    kill_after_checkpoint(_Patch(), step=8)  # 6 batches per rank and epoch: the kill lands in epoch 2
    try:
        trainer("killed").fit()
    except Killed:
        pass
    Trainer.save_checkpoint = save
    saved = torch.load(out / "killed" / "last.pt", weights_only=False)
    resumed = trainer("killed")
    assert resumed.resume()
    resumed.fit()
    if torch.distributed.get_rank() == 0:
        result = {
            "step": saved["step"],
            "ranks_saved": len(saved["ranks"]),
            "ranks_draw_differently": not torch.equal(saved["ranks"][0]["rng"]["torch"], saved["ranks"][1]["rng"]["torch"]),
            "steps": [straight.step, resumed.step],
            "different_weights": [key for key, value in straight.model.state_dict().items()
                                  if not torch.equal(value, resumed.model.state_dict()[key])],
        }
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
