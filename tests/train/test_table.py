"""The task table and the CLI derived from it: help with real defaults, refusals, configuration round trip."""
import json
import re
from dataclasses import asdict

import pytest
import torch

from graph_sparse_attn.data import benchmarks
from graph_sparse_attn.train.cli import build_train_parser, config_from_args, main
from graph_sparse_attn.train.loop import TrainConfig, Trainer, config_differences
from graph_sparse_attn.train.table import (
    COMMON_DEFAULTS,
    DATA_OPTIONS,
    KINDS,
    TASKS,
    UnknownTask,
    find_task,
    parse_fanouts,
    parse_pattern,
    parse_pe,
    resolve_config,
    shipped_configs,
    split_options,
)


def test_every_entry_declares_kind_data_model_metric_and_defaults():
    for name, spec in TASKS.items():
        assert spec.kind in KINDS, name
        assert callable(spec.load) and callable(spec.model) and callable(spec.metric), name
        assert spec.load.__module__ == benchmarks.__name__, f"{name}: data builders live in data/benchmarks"
        assert {"epochs", "batch_size", "lr", "dim", "depth", "heads"} <= set(spec.defaults), name
    kinds = {spec.kind for spec in TASKS.values()}
    assert kinds == set(KINDS)


def test_options_follow_the_kind():
    sequence, graph, node = find_task("listops"), find_task("ogbg-molhiv"), find_task("cora")
    for option in ("pattern", "gate", "knn"):
        assert option in sequence.defaults and option not in graph.defaults and option not in node.defaults
    for option in ("attention", "gps"):
        assert option in graph.defaults and option in node.defaults and option not in sequence.defaults
    assert "num_neighbors" in node.defaults and "num_neighbors" not in graph.defaults


def test_any_ogbg_name_uses_the_family_entry_and_unknown_names_are_refused():
    spec = find_task("ogbg-molesol")
    assert spec.name == "ogbg-molesol" and spec.kind == "graph" and spec.defaults == TASKS["ogbg-<name>"].defaults
    for name in ("ogbg-", "no-such-task", "ogbn-proteins"):
        with pytest.raises(UnknownTask, match="unknown task"):
            find_task(name)


def test_split_options_refuses_an_option_of_another_kind():
    with pytest.raises(ValueError, match="knn"):
        split_options(find_task("ogbg-molhiv"), {"knn": 4})
    data, model = split_options(find_task("listops"), {"num_train": 5, "dim": 8, "epochs": 3})
    assert data == {"num_train": 5} and model == {"dim": 8}
    _, model = split_options(find_task("imdb"), {"position": "sinusoidal"})
    assert model == {"pooling": "mean", "position": "sinusoidal"}  # the task's fixed settings join the options


def test_pattern_and_fanout_spellings():
    assert parse_pattern("sliding_window:window=8") == parse_pattern("window:window=8") == ("window", {"window": 8})
    assert parse_pattern("longformer:window=4,global_indices=0+3") == ("longformer", {"window": 4, "global_indices": [0, 3]})
    with pytest.raises(ValueError, match="unknown pattern"):
        parse_pattern("spiral")
    assert parse_fanouts("15,10") == [15, 10] and parse_fanouts("-1") == [-1]
    assert parse_fanouts("0,2") == [0, 2]  # no neighbours at the first hop, as NeighborSampler (and PyG) take it
    for bad in ("a,b", "3,-2"):
        with pytest.raises(ValueError):
            parse_fanouts(bad)


def test_molecules_default_to_rwse_and_none_turns_it_off(tmp_path):
    assert parse_pe("none") is None and parse_pe("lap:3") == ["lap", 3]
    default, _ = config_from_args(["ogbg-molbbbp", "--run-dir", str(tmp_path / "a")])
    off, _ = config_from_args(["ogbg-molbbbp", "--pe", "none", "--run-dir", str(tmp_path / "b")])
    assert default.data_options["pe"] == ["rwse", 16] and off.data_options["pe"] is None


def test_resolved_config_holds_every_default_with_absolute_paths_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config("ogbn-products", {"run_dir": "runs/x", "root": "data", "epochs": 2})
    assert config.epochs == 2 and config.lr == TASKS["ogbn-products"].defaults["lr"]
    assert config.run_dir == str(tmp_path / "runs" / "x") and config.root == str(tmp_path / "data")
    assert config.data_options == {"num_neighbors": [15, 10]}
    assert config.model_options["attention"] == "graph" and config.model_options["dim"] == 64
    assert set(asdict(config)) - {"task", "data_options", "model_options"} == set(COMMON_DEFAULTS)
    assert TrainConfig.from_json(config.to_json()) == config

    sequence = resolve_config("imdb", {"run_dir": "r", "imdb_path": "reviews.tar.gz", "pattern": "sliding_window:window=8"})
    assert sequence.data_options["imdb_path"] == str(tmp_path / "reviews.tar.gz")
    assert sequence.model_options["pattern"] == ["window", {"window": 8}]
    assert TrainConfig.from_json(sequence.to_json()) == sequence
    assert set(sequence.data_options) <= DATA_OPTIONS


def help_text(capsys, task):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", task, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks


@pytest.mark.parametrize("task", ["listops", "imdb", "ogbg-molhiv", "cora"])
def test_help_shows_the_task_s_resolved_defaults(capsys, task):
    text = help_text(capsys, task)
    defaults = find_task(task).options
    options = text[text.index("options:"):]  # past the usage line
    for option in ("epochs", "batch_size", "lr", "dim", "depth", "heads", "dropout"):
        flag = "--" + option.replace("_", "-")
        # the option's own entry: its help runs up to the first "(default: ...)" with no other option in between
        entry = re.search(re.escape(flag) + r" [A-Z_]+ (?:(?! --|\(default: ).)*\(default: ([^)]*)\)", options)
        assert entry and entry.group(1) == str(defaults[option]), (task, flag, entry and entry.group(0))
    assert "(default: None)" not in text
    assert text.count("--epochs EPOCHS") == 2  # usage line and option line, with one default


def test_help_lists_pattern_names_including_the_python_spelling(capsys):
    text = help_text(capsys, "listops")
    assert "longformer:window=16,global_indices=0" in text
    for name in ("bigbird", "longformer", "window", "strided", "sliding_window = window"):
        assert name in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ogbg-molbbbp", "--knn", "4"], "--knn does not apply to ogbg-molbbbp"),
        (["ogbg-molbbbp", "--gate"], "--gate does not apply to ogbg-molbbbp"),
        (["ogbg-molbbbp", "--pattern", "window:window=8"], "--pattern does not apply to ogbg-molbbbp"),
        (["--attention", "exphormer", "--gps"], "--attention, --gps do not apply to listops"),
        (["cora", "--num-train", "10"], "--num-train does not apply to cora"),
        (["listops", "--num-neighbors", "10,5"], "--num-neighbors does not apply to listops"),
        (["imdb", "--min-length", "10"], "--min-length does not apply to imdb"),
        (["listops", "--checkpoint-every", "-1"], "argument --checkpoint-every: must be a finite non-negative number"),
        (["cora", "--num-neighbors", "-2"], "argument --num-neighbors: num_neighbors must be >= -1, got -2"),
        (["cora", "--num-neighbors", "5,x"], "argument --num-neighbors: num_neighbors must be comma-separated integers"),
        (["cora", "--pe", "rwse:4"], "--pe does not apply to cora"),
        (["cora", "--batch-size", "7"], "--batch-size applies to node tasks with --num-neighbors"),
        (["listops", "--seed", str(2**64)], "argument --seed: must be an integer in [0, 2**63)"),
        (["listops", "--conf", "listops-lra"], "unrecognized arguments: --conf"),  # an abbreviation would be ignored
        (["listops", "--pe", "rwse:4"], "--pe does not apply to listops"),
        (["ogbg-molhiv", "--pe", "spectral:3"], "KIND:DIM"),
        (["ogbg-molhiv", "--pe", "rwse"], "KIND:DIM"),
        (["listops", "--backend", "fast"], "--backend: invalid choice"),
        (["listops", "--device", "tpu9"], "--device tpu9"),
    ],
)
def test_inapplicable_or_bad_options_are_refused_in_one_line_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused_in_one_line(argv, message, capsys, tmp_path)


def test_the_cpu_backend_is_refused_on_cuda(capsys, tmp_path, monkeypatch):
    import graph_sparse_attn.train.cli as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "local_device", lambda requested: torch.device("cuda"))  # as on a machine with CUDA
    refused_in_one_line(["listops", "--backend", "compiled", "--device", "cuda"], "backend='compiled' is the CPU fused backend",
                        capsys, tmp_path)


def refused_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "nothing may be written before arguments are accepted"


def test_sliding_window_is_accepted_on_the_command_line():
    args = build_train_parser(find_task("listops")).parse_args(["--pattern", "sliding_window:window=4"])
    assert args.pattern == ("window", {"window": 4})


def test_parser_defaults_are_the_table_s():
    for task in ("listops", "ogbn-products"):
        spec = find_task(task)
        args = vars(build_train_parser(spec).parse_args([]))
        for option, default in spec.options.items():
            if option == "pattern":
                assert args[option] == parse_pattern(default)
            elif option == "num_neighbors" and default is not None:
                assert args[option] == parse_fanouts(default)
            else:
                assert args[option] == default, option


def test_evaluate_reports_missing_data_in_one_line(tmp_path, capsys, monkeypatch):
    import socket

    import torch

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    run = tmp_path / "run"
    run.mkdir()
    config = resolve_config("ogbg-molbbbp", {"run_dir": str(run), "root": str(tmp_path / "empty")})
    torch.save({"config": asdict(config), "model": {}, "epoch": 1}, run / "best.pt")
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert "ogbg_molbbbp" in err and len(err.strip().splitlines()) == 1
    # the line says what to do: where the data comes from and the layout to copy it in
    assert "snap.stanford.edu cannot be reached" in err and "csv_mol_download" in err and "RELEASE_v1.txt" in err
    (tmp_path / "empty" / "ogbg_molbbbp").mkdir(parents=True)  # an empty folder is no copy either
    assert main(["evaluate", str(run)]) == 1
    assert "is missing or empty and snap.stanford.edu cannot be reached" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_configs_cite_a_source_and_resolve(name, tmp_path):
    content = json.loads(shipped_configs()[name].read_text())
    assert content["source"].count("https://") == 1
    config, _ = config_from_args(["--config", name, "--run-dir", str(tmp_path / "run")])
    assert config.task == content["task"] and config.config_file == str(shipped_configs()[name])
    for option, value in content["options"].items():
        resolved = {**asdict(config), **config.data_options, **config.model_options}[option]
        if option == "pe":
            value = parse_pe(value)
        assert resolved == value, option


def test_help_with_a_config_shows_the_file_s_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--config", "ogbg-molhiv-gps", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--depth DEPTH number of Transformer blocks (default: 10)" in text and "(default: rwse:16)" in text


def test_command_line_options_override_a_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text(json.dumps({"task": "listops", "options": {"dim": 24, "depth": 3, "gate": True,
                                                                                    "num-train": 50, "pattern": "window:window=3"}}))
    config, _ = config_from_args(["listops", "--config", "mine.json", "--depth", "1", "--run-dir", "run"])
    assert config.model_options["dim"] == 24 and config.model_options["depth"] == 1 and config.model_options["gate"] is True
    assert config.model_options["pattern"] == ["window", {"window": 3}] and config.data_options["num_train"] == 50
    assert config.config_file == str(tmp_path / "mine.json")
    config, _ = config_from_args(["listops", "--config", "mine.json", "--no-gate", "--run-dir", "run"])
    assert config.model_options["gate"] is False  # a file's switch can be turned off again


def test_a_config_file_takes_values_in_the_form_config_json_records_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recorded = {"pe": ["rwse", 16], "dim": 32}
    (tmp_path / "graph.json").write_text(json.dumps({"task": "ogbg-molhiv", "options": recorded}))
    config, _ = config_from_args(["--config", "graph.json", "--run-dir", "run"])
    assert config.data_options["pe"] == ["rwse", 16]
    pattern = ["longformer", {"window": 3, "global_indices": [0, 5]}]
    (tmp_path / "sequence.json").write_text(json.dumps({"task": "listops", "options": {"pattern": pattern}}))
    config, _ = config_from_args(["--config", "sequence.json", "--run-dir", "run"])
    assert config.model_options["pattern"] == pattern


def test_null_in_a_config_file_means_no_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text(json.dumps({"task": "ogbg-molhiv", "options": {"pe": None, "ffn-dim": None}}))
    config, _ = config_from_args(["--config", "mine.json", "--run-dir", "run"])
    assert config.data_options["pe"] is None and config.model_options["ffn_dim"] is None  # not the task's rwse:16 / 128
    config, _ = config_from_args(["--config", "mine.json", "--ffn-dim", "32", "--run-dir", "run"])
    assert config.model_options["ffn_dim"] == 32


@pytest.mark.parametrize(
    "content,message",
    [
        ({"task": "listops", "options": {"no_such_option": None}}, "sets no_such_option, which is not an option of a run"),
        ({"task": "listops", "options": {"resume": True}}, "sets resume, which is not an option of a run"),
        ({"task": "listops", "options": {"help": True, "config": "x"}}, "sets config, help, which are not options of a run"),
        ({"task": "cora", "options": {"knn": 3}}, "--knn does not apply to cora"),
        ({"task": "listops", "options": {"epochs": 0}}, "positive"),
        ({"options": {}}, "must hold"),
        ({"task": "listops", "options": {"pattern": "spiral"}}, "unknown pattern"),
        # A typo (or a run's config.json) whose options would be ignored.
        ({"task": "listops", "option": {"dim": 63}}, "has unknown key(s) option"),
        ({"task": "listops", "options": {"min_length": None}}, "min_length cannot be null"),
    ],
)
def test_bad_config_files_are_refused_in_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_backend_is_a_run_option_that_reaches_every_attention_layer(tmp_path, monkeypatch):
    from graph_sparse_attn.train.table import make_task

    monkeypatch.chdir(tmp_path)
    config, _ = config_from_args(["listops", "--backend", "csr", "--num-train", "8", "--num-val", "4", "--num-test", "4",
                                  "--min-length", "5", "--max-length", "20", "--run-dir", "run"])
    assert config.backend == "csr" and "backend" not in config.model_options  # the model's definition stays the same
    model = Trainer(config, make_task(config)).model
    assert [layer.attn.backend for layer in model.layers] == ["csr"] * len(model.layers)


@pytest.mark.parametrize(
    "pattern, max_steps, expected",
    [("bigbird:window=4,global_indices=0,num_random=2", 0, "compiled"), ("bigbird:window=4,global_indices=0,num_random=2", 3, "auto"),
     # windows that "auto" runs on `band` stay with it; ±4 fills too little of a band's slots for that
     ("longformer:window=32,global_indices=0", 0, "auto"), ("longformer:window=4,global_indices=0", 0, "compiled")],
    ids=["long-run", "short-run", "long-run-over-windows", "long-run-over-narrow-windows"],
)
def test_auto_backend_takes_the_compiled_kernels_for_long_cpu_runs(tmp_path, monkeypatch, pattern, max_steps, expected):
    from graph_sparse_attn.ops import dispatch
    from graph_sparse_attn.train.table import make_task

    monkeypatch.setattr(dispatch, "COMPILED_MIN_STEPS", 10)
    monkeypatch.setattr(dispatch.kernel_module("compiled"), "available", lambda: True)
    config, _ = config_from_args(["listops", "--epochs", "3", "--batch-size", "4", "--max-steps", str(max_steps),
                                  "--num-train", "16", "--num-val", "4", "--num-test", "4", "--min-length", "5",
                                  "--max-length", "200", "--pattern", pattern, "--run-dir", str(tmp_path / "run")])
    trainer = Trainer(config, make_task(config))  # 3 epochs x 4 batches = 12 steps, or --max-steps 3
    assert trainer.backend == expected
    assert [layer.attn.backend for layer in trainer.model.layers] == [expected] * len(trainer.model.layers)
    assert config.backend == "auto"  # the run option stays as given; the model holds what it resolved to


@pytest.mark.parametrize("task", ["listops", "ogbg-molhiv", "cora"])
def test_feed_forward_width_and_activation_are_model_options(task, tmp_path):
    # GraphGPS's feed-forward block is 2 x dim with ReLU (ReLU in its GINE branch too); other tasks default to 4 x GELU.
    config, _ = config_from_args([task, "--ffn-dim", "40", "--activation", "relu", "--run-dir", str(tmp_path / "run")])
    assert config.model_options["ffn_dim"] == 40 and config.model_options["activation"] == "relu"
    with pytest.raises(SystemExit):
        config_from_args([task, "--activation", "tanh", "--run-dir", str(tmp_path / "other")])


def test_models_build_the_feed_forward_they_are_given():
    from torch import nn

    from graph_sparse_attn.nn import GraphTransformer, SequenceTransformer

    for model in (GraphTransformer("atom", 16, 2, depth=2, edge_dim="bond", gps=True, ffn_dim=40, activation="relu"),
                  SequenceTransformer(11, 3, dim=16, depth=2, ffn_dim=40, activation="relu")):
        for layer in model.layers:
            assert layer.ffn.net[0].out_features == 40 and isinstance(layer.ffn.net[1], nn.ReLU)
            assert layer.local is None or isinstance(layer.local.nn[1], nn.ReLU)
    with pytest.raises(ValueError, match="activation must be one of"):
        GraphTransformer("atom", 16, 2, activation="tanh")


def test_a_run_saved_before_an_option_existed_continues_with_the_value_it_ran_with(tmp_path):
    learned = resolve_config("imdb", {"run_dir": str(tmp_path)})
    saved = json.loads(learned.to_json())
    del saved["model_options"]["position"]  # an LRA Text run saved before --position existed ran learned positions
    assert config_differences(saved, learned) == []
    sinusoidal = resolve_config("imdb", {"run_dir": str(tmp_path), "position": "sinusoidal"})
    assert config_differences(saved, sinusoidal) == ["model_options.position (saved: 'learned', now: 'sinusoidal')"]


def test_where_the_data_lies_is_not_a_configuration_difference(tmp_path):
    # The IMDB archive read from another folder is the same data: a run is neither refused on resume
    # nor reported stale for it (the published ledger's seed 2 read the shared copy).
    here = resolve_config("imdb", {"run_dir": str(tmp_path), "imdb_path": str(tmp_path / "a.tar.gz"), "root": str(tmp_path)})
    there = resolve_config("imdb", {"run_dir": str(tmp_path / "b"), "imdb_path": "/elsewhere/a.tar.gz", "root": "/elsewhere"})
    assert config_differences(json.loads(here.to_json()), there) == []
    longer = resolve_config("imdb", {"run_dir": str(tmp_path), "max_length": 64})
    assert config_differences(json.loads(here.to_json()), longer) == [f"data_options.max_length (saved: {here.data_options['max_length']!r}, now: 64)"]


@pytest.mark.parametrize("pattern,band", [
    (("window", {"window": 16}), True),
    (("longformer", {"window": 32, "global_indices": [0]}), True),
    (("window", {"window": 16, "dilation": 4}), False),  # named a window, but not a band: used to stay on "auto"
    (("strided", {"stride": 8}), False),
    (("bigbird", {"window": 3, "global_indices": [0], "num_random": 3}), False),
])
def test_long_runs_leave_to_auto_exactly_the_patterns_it_runs_on_band(monkeypatch, pattern, band):
    from graph_sparse_attn.ops import dispatch
    from graph_sparse_attn.train.loop import run_backend

    monkeypatch.setattr(dispatch.kernel_module("compiled"), "available", lambda: True)
    config = TrainConfig(task="listops", data_options={"max_length": 2000}, model_options={"pattern": pattern})
    cpu = torch.device("cpu")
    assert run_backend(config, cpu, dispatch.COMPILED_MIN_STEPS) == ("auto" if band else "compiled")
    assert run_backend(config, cpu, 1) == "auto"  # short runs never compile


def test_unreadable_run_files_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    def refused():
        return pytest.raises(SystemExit, match="2")

    with refused():
        main(["train", "listops", "--run-dir", "afile"])
    assert "afile is a file, not a run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{broken")
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with refused():
        main(["train", "listops", "--run-dir", "run", "--resume"])
    err = capsys.readouterr().err
    assert "is not a readable run configuration" in err and len(err.strip().splitlines()) == 1
    (run / "best.pt").write_bytes(b"PK truncated")
    with refused():
        main(["evaluate", "run"])
    err = capsys.readouterr().err
    assert "best.pt is not a readable checkpoint" in err and len(err.strip().splitlines()) == 1
