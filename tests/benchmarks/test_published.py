"""benchmarks/published.py: finished runs are read back from the committed ledger when their run directory is gone."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
published = pytest.importorskip("published")


def test_a_finished_run_outlives_its_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "LEDGER", tmp_path / "published-runs.json")
    run_dir = tmp_path / "runs" / "cpu" / "listops-seed0"
    options = ["--epochs", "5"]
    assert published.run("listops", [], options, 0, run_dir, "cpu", train=False) == {"status": "not run"}
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"")
    assert published.run("listops", [], options, 0, run_dir, "cpu", train=False)["status"].startswith("unfinished")

    summary = {"task": "listops", "metric": "accuracy", "epochs": 5, "best_epoch": 4, "val": 0.4, "test": 0.38, "train_seconds": 60.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    # A leftover run of other options is not recorded under this budget's.
    (run_dir / "config.json").write_text(published.budget_config("listops", [], ["--epochs", "3"], 0).to_json())
    stale = published.run("listops", [], options, 0, run_dir, "cpu", train=False)
    assert stale["status"].startswith("stale:") and "epochs (saved: 3, now: 5)" in stale["status"] and not published.LEDGER.exists()
    ran_with = published.budget_config("listops", [], options, 0)
    (run_dir / "config.json").write_text(ran_with.to_json())
    recorded = {**summary, "options": options, "hardware": published.HARDWARE, "config": json.loads(ran_with.to_json())}
    assert published.run("listops", [], options, 0, run_dir, "cpu", train=False) == {"status": "ok", **recorded}
    assert json.loads(published.LEDGER.read_text()) == {"cpu": {"listops-seed0": recorded}}

    for path in run_dir.iterdir():  # a fresh checkout: no run directory
        path.unlink()
    run_dir.rmdir()
    # Read back, not trained again (train=True would start a run if the ledger were ignored).
    with monkeypatch.context() as patch:
        patch.setattr(published.subprocess, "run", lambda *args, **kwargs: pytest.fail("trained again"))
        assert published.run("listops", [], options, 0, run_dir, "cpu", train=True) == {"status": "ok", **recorded}
    assert published.run("listops", [], options, 0, run_dir, "small", train=False) == {"status": "not run"}
    # A budget changed since the run: its entry is reported, not tabulated as if it had run with today's options.
    stale = published.run("listops", [], ["--epochs", "6"], 0, run_dir, "cpu", train=False)
    assert stale == {"status": "stale: listops-seed0 was run with --epochs 5"}
    # Same options, but the task's defaults changed since: the recorded configuration tells.
    changed = {**recorded, "config": {**recorded["config"], "model_options": {**recorded["config"]["model_options"], "dim": 7}}}
    published.record_in_ledger("cpu", "listops-seed0", changed)
    stale = published.run("listops", [], options, 0, run_dir, "cpu", train=False)
    assert stale["status"].startswith("stale: listops-seed0 was run with another configuration: model_options.dim (saved: 7")


def test_an_entry_without_its_configuration_is_tabulated_as_unchecked(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "LEDGER", tmp_path / "published-runs.json")
    options = ["--epochs", "5"]
    entry = {"task": "listops", "metric": "accuracy", "epochs": 5, "best_epoch": 4, "val": 0.4, "test": 0.38,
             "train_seconds": 60.0, "options": options, "hardware": published.HARDWARE}
    published.record_in_ledger("cpu", "listops-seed0", entry)
    result = published.run("listops", [], options, 0, tmp_path / "listops-seed0", "cpu", train=False)
    assert result == {"status": "ok", **entry, "unchecked": True}
    assert published.seeds_cell([result, {"status": "ok"}]) == "2 (1 unchecked)"
    assert published.seeds_cell([{"status": "ok"}]) == "1"


def test_a_failed_run_reports_the_last_line_of_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "LEDGER", tmp_path / "published-runs.json")
    run_dir = tmp_path / "listops-seed0"
    result = published.run("listops", [], ["--no-such-option"], 0, run_dir, "cpu", train=True)
    assert result["status"].startswith("failed:") and "--no-such-option" in result["status"]
    assert "--no-such-option" in (run_dir / "train.log").read_text() and not published.LEDGER.exists()


def test_recorded_seeds_are_read_per_budget_and_task(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "LEDGER", tmp_path / "published-runs.json")
    assert published.recorded_seeds("cpu", "listops") == set()
    for budget, key in (("cpu", "listops-seed0"), ("cpu", "listops-seed1"), ("cpu", "imdb-seed4"), ("small", "listops-seed2")):
        published.record_in_ledger(budget, key, {"test": 0.5})
    assert published.recorded_seeds("cpu", "listops") == {0, 1}
    assert published.recorded_seeds("small", "listops") == {2}
    assert published.recorded_seeds("cpu", "imdb") == {4}


@pytest.mark.parametrize("budget", ["small", "cpu", "full"])
def test_every_budget_resolves_to_a_configuration(budget):
    for task, options in published.BUDGETS[budget].items():
        config = published.budget_config(task, [], options, seed=0)
        assert config.task == task
    if budget == "full":  # the shipped published configurations, not options of our own
        assert published.budget_config("ogbg-molhiv", [], published.BUDGETS["full"]["ogbg-molhiv"], 0).model_options["depth"] == 10
