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
