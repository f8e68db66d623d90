"""Task plumbing: how training seeds are sharded across data-parallel ranks."""
import pytest
import torch

from graph_sparse_attn.train import tasks


@pytest.mark.parametrize("count", [0, 1, 3, 20, 21])
@pytest.mark.parametrize("ranks", [1, 2, 3, 8])
def test_every_rank_gets_as_many_seeds_and_together_all_of_them(count, ranks, monkeypatch):
    """Unequal shards gave ranks unequal step counts: one rank then waited in an all-reduce the others never joined."""
    seeds = torch.arange(100, 100 + count)
    monkeypatch.setattr(tasks.dist_utils, "world_size", lambda: ranks)
    shards = []
    for rank in range(ranks):
        monkeypatch.setattr(tasks.dist_utils, "rank", lambda: rank)
        shards.append(tasks._rank_shard(seeds))
    assert len({shard.numel() for shard in shards}) == 1
    assert set(torch.cat(shards).tolist()) == set(seeds.tolist())
    assert shards[0].numel() == (-(-count // ranks) if count else 0)


def test_evaluation_draws_random_sequence_patterns_alike_on_every_pass(tmp_path):
    """bigbird's random edges came from the global RNG: the same weights scored differently each pass."""
    from graph_sparse_attn.train.table import make_task, resolve_config

    config = resolve_config("listops", {"num_train": 16, "num_val": 16, "num_test": 16, "min_length": 20, "max_length": 40,
                                        "pattern": "bigbird:window=1,global_indices=0,num_random=3",
                                        "root": str(tmp_path / "data"), "run_dir": str(tmp_path / "run")})
    loaders = make_task(config).loaders(batch_size=8, seed=0)
    passes = []
    for _ in range(2):
        torch.rand(5)  # the global RNG moves between passes, as training moves it
        passes.append([batch.edge_index for batch in loaders["val"]])
    assert all(torch.equal(a, b) for a, b in zip(*passes, strict=True))
    first_train, second_train = ([batch.edge_index for batch in loaders["train"]] for _ in range(2))
    assert not all(torch.equal(a, b) for a, b in zip(first_train, second_train))  # training keeps fresh draws
