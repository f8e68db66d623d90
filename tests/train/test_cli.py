"""The ``gsa`` CLI end to end: help, bad arguments, runs, kill-and-resume, OGB, data-parallel."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from graph_sparse_attn.train.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY_LISTOPS = ["--num-train", "96", "--num-val", "24", "--num-test", "24", "--min-length", "20", "--max-length", "60",
                "--dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "16"]


def gsa(*args, cwd, check=True, **kwargs):
    proc = subprocess.run([sys.executable, "-m", "graph_sparse_attn", *args], cwd=cwd, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"gsa {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_documents_every_option_of_the_task(capsys):
    text = help_text(capsys, "train")
    for option in ("--root", "--run-dir", "--device", "--deterministic", "--resume", "--epochs", "--max-steps", "--batch-size",
                   "--lr", "--schedule", "--seed", "--pattern", "--position", "--gate", "--knn", "--dim", "--depth", "--heads", "--checkpoint-every"):
        assert option in text
    assert "--attention" not in text and "--gps" not in text
    graph = help_text(capsys, "train", "ogbg-molhiv")
    assert "--attention" in graph and "--gps" in graph and "--pattern" not in graph and "--knn" not in graph
    assert "evaluate" in help_text(capsys)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "no-such-task"], "unknown task"),
        (["train", "listops", "--batch-size", "-3"], "positive"),
        (["train", "listops", "--epochs", "0"], "positive"),
        (["train", "listops", "--pattern", "spiral"], "unknown pattern"),
        (["train", "listops", "--pattern", "window:width=3"], "takes no parameter"),
        (["train", "listops", "--dropout", "1.5"], "[0, 1)"),
        (["train", "imdb", "--position", "rotary"], "invalid choice: 'rotary'"),
        (["evaluate", "/nonexistent/run"], "gsa evaluate: error: /nonexistent/run/best.pt does not exist"),
        (["train", "listops", "--resume"], "--resume needs"),
        (["train", "--epochs", "3", "cora"], "gsa train: error: the task comes first: gsa train cora [options]"),
        (["train", "listops", "--epochs", "3", "extra"], "gsa train listops: error: unrecognized arguments: extra"),
        # pattern values are checked by building the pattern, not at the first batch
        (["train", "listops", "--pattern", "window"], "needs parameter(s) ['window']"),
        (["train", "listops", "--pattern", "window:window=-1"], "argument --pattern: pattern 'window': window must be >= 0"),
        (["train", "listops", "--pattern", "window:window=1.5"], "window must be an int"),
        (["train", "listops", "--pattern", "random:num_random=2,generator=3"], "takes no parameter(s) ['generator']"),
        (["train", "listops", "--pattern", "longformer:window=3,global_indices=a+b"], "lists hold integers"),
        # numbers that would train wrongly rather than fail
        (["train", "listops", "--grad-clip", "-1"], "argument --grad-clip: must be a finite non-negative number, got -1.0"),
        (["train", "listops", "--weight-decay", "-1"], "argument --weight-decay: must be a finite non-negative number"),
        (["train", "listops", "--lr", "inf"], "argument --lr: must be a finite positive number, got inf"),
        (["train", "listops", "--seed", "-5"], "argument --seed: must be an integer in [0, 2**63), got -5"),
        # options valid alone, not together
        (["train", "listops", "--heads", "3"], "--dim (64) must be divisible by --heads (3)"),
        (["train", "listops", "--knn", "2", "--gate"], "--gate learns gates over a fixed pattern, --knn attends"),
        (["train", "listops", "--knn", "2", "--pattern", "window:window=3"], "--pattern does not apply with --knn"),
        (["train", "listops", "--device", "meta"], "--device meta: training runs on cpu or cuda"),
        (["train", "listops", "--pe", "none"], "--pe does not apply to listops"),  # given, though its value is None
        (["train", "listops", "--max-length", "100"], "--max-length (100) must be at least --min-length + 2 (102)"),
        # a mistyped dataset name fails here, not after a network probe for a dataset OGB does not have
        (["train", "ogbg-molhivv"], "unknown task 'ogbg-molhivv'"),
        (["train", "ogbg-ppa"], "unknown task 'ogbg-ppa'"),  # OGB's, but not a molecule set our model reads
        (["train", "listops", "--resume", "--run-dir", "no-such-run"], "holds no run to continue"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err  # one line, naming the argument
    assert not any(tmp_path.iterdir()), "nothing may be written before arguments are accepted"


def test_a_run_dir_under_a_file_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "listops", "--run-dir", "notes.txt/sub/run"])
    assert exit_info.value.code == 2
    assert f"--run-dir {tmp_path}/notes.txt/sub/run cannot be created: {tmp_path}/notes.txt is a file" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_where_there_is_none(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "listops", "--device", "cuda"])
    assert exit_info.value.code == 2 and "--device cuda: this machine has no CUDA device" in capsys.readouterr().err


def test_listops_run_writes_a_complete_run_directory_and_evaluates(tmp_path):
    run = tmp_path / "run"
    proc = gsa("train", "listops", *TINY_LISTOPS, "--epochs", "2", "--root", str(tmp_path / "data"), "--run-dir", str(run), cwd=tmp_path)
    assert "test accuracy" in proc.stdout and " s wall, " in proc.stdout and "samples/s" in proc.stdout
    assert "Warning" not in proc.stderr
    for name in ("config.json", "metrics.jsonl", "best.pt", "last.pt", "curves.png", "summary.json"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["train_loss"] > 0 for r in records)
    assert json.loads((run / "config.json").read_text())["data_options"]["num_train"] == 96
    result = json.loads(gsa("evaluate", str(run), cwd=tmp_path).stdout)
    summary = json.loads((run / "summary.json").read_text())
    assert result["test"] == pytest.approx(summary["test"])
    refused = gsa("train", "listops", *TINY_LISTOPS, "--root", str(tmp_path / "data"), "--run-dir", str(run), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr


# Runs `gsa` and SIGKILLs the process right after its checkpoint at step KILL_STEP (a real kill, at a known point).
KILLING_RUNNER = """
import os, signal, sys
from graph_sparse_attn.train import loop
from graph_sparse_attn.train.cli import main

save = loop.Trainer.save_checkpoint

def save_then_die(self):
    save(self)
    if self.step == int(os.environ["KILL_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

loop.Trainer.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sinusoidal_positions_replace_the_learned_table(tmp_path):
    run = tmp_path / "run"
    proc = gsa("train", "listops", *TINY_LISTOPS, "--root", str(tmp_path / "data"), "--run-dir", str(run), "--max-steps", "1",
               "--position", "sinusoidal", cwd=tmp_path)
    assert "note: --warmup-steps 50 spans the whole run (1 step): the learning rate never reaches --lr 0.002" in proc.stderr
    assert json.loads((run / "config.json").read_text())["model_options"]["position"] == "sinusoidal"
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert "embed.weight" in weights and not any(name.startswith("pos_embed") for name in weights)


def test_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    # 96 samples / 16 per batch = 6 batches per epoch; checkpoints after every step; killed at step 9 (epoch 2, batch 3).
    args = ["train", "listops", *TINY_LISTOPS, "--epochs", "3", "--root", str(tmp_path / "data"), "--dropout", "0.1",
            "--checkpoint-every", "0"]
    # Bitwise equality holds for one thread count: CPU kernels split work by thread (AdamW's fused step takes a
    # vector or a scalar path by chunk), and two thread counts differed by 1e-4 after these 18 steps. CI saw its
    # processes differ, so every process here runs one thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    gsa(*args, "--run-dir", str(tmp_path / "straight"), cwd=tmp_path, env=env)

    interrupted = tmp_path / "interrupted"
    proc = subprocess.run([sys.executable, "-c", KILLING_RUNNER, *args, "--run-dir", str(interrupted)], cwd=tmp_path,
                          capture_output=True, text=True, env={**env, "KILL_STEP": "9"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len((interrupted / "metrics.jsonl").read_text().splitlines()) == 1
    # Continuing with other options would mix two runs in one: refused in one line, the run untouched.
    before = (interrupted / "last.pt").read_bytes()
    other = gsa(*args, "--dropout", "0.2", "--run-dir", str(interrupted), "--resume", cwd=tmp_path, check=False, env=env)
    assert other.returncode == 2 and "model_options.dropout (saved: 0.1, now: 0.2)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert (interrupted / "last.pt").read_bytes() == before
    resumed = gsa(*args, "--run-dir", str(interrupted), "--resume", cwd=tmp_path, env=env)
    assert "at epoch 2, batch 3" in resumed.stderr

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(interrupted / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 18
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("train_loss", "val_accuracy", "test_accuracy"):
        assert [r[key] for r in a["history"]] == [r[key] for r in b["history"]], key


def test_evaluate_works_from_any_folder(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    gsa("train", "listops", *TINY_LISTOPS, "--epochs", "1", "--root", "data", "--run-dir", "run", cwd=work)
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["root"] == str(work / "data") and config["run_dir"] == str(work / "run")
    result = json.loads(gsa("evaluate", str(work / "run"), cwd=elsewhere).stdout)
    assert result["test"] == pytest.approx(json.loads((work / "run" / "summary.json").read_text())["test"])
    assert not any(elsewhere.iterdir()), "evaluate must not regenerate data under the current folder"
    (work / "data").rename(elsewhere / "moved")  # data moved after training: --root says where it went
    moved = json.loads(gsa("evaluate", str(work / "run"), "--root", "moved", cwd=elsewhere).stdout)
    assert moved["test"] == result["test"] and not (work / "data").exists()
    state = torch.load(work / "run" / "best.pt", weights_only=False)  # as if trained on a GPU's triton kernels
    state["config"]["backend"] = "triton"
    torch.save(state, work / "run" / "best.pt")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = gsa("evaluate", str(work / "run"), "--root", "moved", cwd=elsewhere, env=env)
    assert json.loads(proc.stdout)["test"] == result["test"] and "backend triton does not run on cpu; scoring with auto" in proc.stderr


def copy_shared(name, tmp_path):
    source = SHARED / "ogb" / name
    if not source.exists():
        pytest.skip(f"shared dataset {source} is absent (tests read real data from ../shared/data)")
    root = tmp_path / "ogb"
    shutil.copytree(source, root / name)
    return root


def rescore_best_checkpoint(run, score):
    """``score(prediction, target)`` of the test split under ``run``'s ``best.pt``, outside the trainer's scoring
    path: what the summary reports must be the official metric of the model's own predictions."""
    from graph_sparse_attn.train.loop import TrainConfig
    from graph_sparse_attn.train.table import make_task

    state = torch.load(run / "best.pt", weights_only=False)
    task = make_task(TrainConfig(**state["config"]))
    model = task.build_model("auto")
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        pairs = [task.forward(model, batch, "test") for batch in task.loaders(64, seed=0)["test"]]
    return score(torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs]))


def test_ogb_graph_task_with_official_metric(tmp_path):
    root = copy_shared("ogbg_molbace", tmp_path)
    run = tmp_path / "run"
    proc = gsa("train", "ogbg-molbace", "--root", str(root), "--run-dir", str(run), "--epochs", "1", "--dim", "16", "--depth", "1",
               "--heads", "2", "--batch-size", "128", cwd=tmp_path)
    assert "rocauc" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "rocauc" and 0.0 <= summary["test"] <= 1.0
    from ogb.graphproppred import Evaluator

    def rocauc(prediction, target):
        return Evaluator("ogbg-molbace").eval({"y_true": target.numpy(), "y_pred": prediction.numpy()})["rocauc"]

    assert summary["test"] == pytest.approx(rescore_best_checkpoint(run, rocauc), abs=1e-6)


@pytest.mark.parametrize("pe", ["rwse:4", "lap:3"])
def test_positional_encodings_reach_the_model(tmp_path, pe):
    root = copy_shared("ogbg_molbace", tmp_path)
    run = tmp_path / "run"
    gsa("train", "ogbg-molbace", "--root", str(root), "--run-dir", str(run), "--max-steps", "2", "--dim", "16", "--depth", "1",
        "--heads", "2", "--batch-size", "64", "--pe", pe, cwd=tmp_path)
    kind, dim = pe.split(":")
    assert json.loads((run / "config.json").read_text())["data_options"]["pe"] == [kind, int(dim)]
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert weights["pe_encoder.1.weight"].shape[1] == int(dim)
    # Random-walk encodings are batch-normalised before the projection (GraphGPS), eigenvectors are not.
    assert ("pe_encoder.0.running_mean" in weights) == (kind == "rwse")


def test_missing_dataset_offline_fails_fast_with_instructions(tmp_path):
    start = time.time()
    proc = gsa("train", "ogbg-molhiv", "--root", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"), cwd=tmp_path,
               check=False, stdin=subprocess.DEVNULL, timeout=120)
    if proc.returncode == 0:
        pytest.skip("this machine can reach the OGB server, so the dataset was downloaded")
    assert proc.returncode == 1
    assert "ogbg_molhiv" in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot be reached" in proc.stderr and "csv_mol_download" in proc.stderr and "RELEASE_v1.txt" in proc.stderr
    assert time.time() - start < 60


def test_data_parallel_matches_single_process(tmp_path):
    # SGD, because Adam's first step lr·g/|g| turns rounding noise in zero gradients (e.g. key biases) into full steps.
    common = ["train", "listops", *TINY_LISTOPS[:-2], "--batch-size", "8", "--max-steps", "1", "--epochs", "1",
              "--root", str(tmp_path / "data"), "--dropout", "0", "--grad-clip", "0", "--optimizer", "sgd", "--lr", "0.1"]
    gsa(*common, "--run-dir", str(tmp_path / "single"), cwd=tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "graph_sparse_attn"]
    proc = subprocess.run([*torchrun, *common, "--run-dir", str(tmp_path / "ddp")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best validation") == 1  # one process reports for the launch
    records = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("single", "ddp")]
    assert records[0]["train_samples"] == records[1]["train_samples"] == 8  # both processes' samples
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert single["step"] == ddp["step"] == 1
    single, ddp = single["model"], ddp["model"]
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-6, rtol=1e-5, msg=key)


def test_peptides_func_task_reports_average_precision(tmp_path):
    source = SHARED / "lrgb" / "peptides-functional"
    if not source.exists():
        pytest.skip(f"shared dataset {source} is absent (tests read real data from ../shared/data)")
    shutil.copytree(source, tmp_path / "lrgb" / "peptides-functional")
    run = tmp_path / "run"
    proc = gsa("train", "peptides-func", "--root", str(tmp_path / "lrgb"), "--run-dir", str(run), "--max-steps", "3",
               "--dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "32", cwd=tmp_path)
    assert "test ap" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "ap" and 0.0 < summary["test"] <= 1.0
    from sklearn.metrics import average_precision_score

    def mean_ap(prediction, target):  # Peptides-func's labels are complete: every task has both classes
        return sum(average_precision_score(target[:, t], prediction[:, t]) for t in range(target.size(1))) / target.size(1)

    assert summary["test"] == pytest.approx(rescore_best_checkpoint(run, mean_ap), abs=1e-6)


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    from graph_sparse_attn.train.cli import _new_run_dir

    monkeypatch.chdir(tmp_path)
    assert _new_run_dir("runs/listops-seed0") == "runs/listops-seed0"
    (tmp_path / "runs" / "listops-seed0").mkdir(parents=True)
    (tmp_path / "runs" / "listops-seed0-2").mkdir()
    assert _new_run_dir("runs/listops-seed0") == "runs/listops-seed0-3"


@pytest.mark.parametrize("extra", [[], ["--num-neighbors", "10,5", "--batch-size", "256"]])
def test_planetoid_node_task_full_graph_and_neighbour_sampled(tmp_path, extra):
    source = SHARED / "planetoid" / "Cora"
    if not source.exists():
        pytest.skip(f"shared dataset {source} is absent (tests read real data from ../shared/data)")
    shutil.copytree(source, tmp_path / "planetoid" / "Cora")
    run = tmp_path / "run"
    proc = gsa("train", "cora", "--root", str(tmp_path / "planetoid"), "--run-dir", str(run), "--epochs", "3", "--dim", "16",
               "--depth", "1", "--heads", "2", *extra, cwd=tmp_path)
    assert "test accuracy" in proc.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and records[0]["test_accuracy"] is not None
    assert all(r["test_accuracy"] is None or 0.0 <= r["test_accuracy"] <= 1.0 for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    # Re-scoring the best checkpoint reproduces the recorded scores: sampled evaluation splits draw
    # the same neighbourhoods on every pass.
    summary, result = json.loads((run / "summary.json").read_text()), json.loads(gsa("evaluate", str(run), cwd=tmp_path).stdout)
    assert (result["val"], result["test"]) == pytest.approx((summary["val"], summary["test"]), abs=1e-9)


@pytest.mark.parametrize("error", [EOFError("Ran out of input"), __import__("pickle").UnpicklingError("invalid load key")])
def test_a_corrupt_processed_cache_is_reported_in_one_line(error, capsys, tmp_path, monkeypatch):
    from graph_sparse_attn.train import cli

    def corrupt(config):  # what torch.load raises on a truncated or garbled processed/ file
        raise error

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "make_task", corrupt)
    assert main(["train", "listops", "--root", "data", "--run-dir", "run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"gsa train: error: listops data under {tmp_path / 'data'}: {error}"
