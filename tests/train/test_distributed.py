"""Device choice per data-parallel rank."""
import torch

from graph_sparse_attn.train.distributed import local_device


def test_cuda_without_an_index_is_this_rank_s_gpu(monkeypatch):
    """Under torchrun every rank asked for --device cuda must get its own GPU, not all of them cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert local_device("cuda") == torch.device("cuda", 2) == local_device("auto")
    assert local_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device("cuda") == torch.device("cuda", 0)
    assert local_device("cpu") == torch.device("cpu")
