"""Pattern pictures: the image matches the mask, and PNG files are written."""
import pytest
import torch

from graph_sparse_attn.viz import compare_patterns, draw_graph, mask_image, plot_mask


def test_mask_image_is_the_dense_mask_for_small_patterns():
    edge_index = torch.tensor([[0, 1, 4, 2], [0, 3, 3, 1]])
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for j, i in edge_index.t().tolist():
        expected[i, j] = 1.0
    assert torch.equal(mask_image(edge_index, 5), expected)


def test_mask_image_pools_large_patterns_into_blocks():
    n = 1000
    diagonal = torch.arange(n).repeat(2, 1)
    image = mask_image(diagonal, n, resolution=100)
    assert image.shape == (100, 100)
    torch.testing.assert_close(image.diagonal(), torch.full((100,), 10 / 100, dtype=torch.float64))
    assert image.sum() == image.diagonal().sum()


def test_pooled_image_spans_exactly_the_nodes():
    # 513 nodes in blocks of 2 fill 257 pixel rows; a 512-pixel image drew them in its top half only.
    n = 513
    image = mask_image(torch.arange(n).repeat(2, 1), n, resolution=512)
    assert image.shape == (257, 257) and bool((image.diagonal() > 0).all())


def test_pictures_are_saved(tmp_path):
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 3]])
    plot_mask(edge_index, 4, tmp_path / "mask.png")
    compare_patterns({"a": edge_index, "b": edge_index[:, :2]}, 4, tmp_path / "compare.png")
    draw_graph(edge_index, 4, tmp_path / "graph.png", weights=torch.rand(5, 2))
    for name in ("mask.png", "compare.png", "graph.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.parametrize("edge_index", [torch.tensor([[10], [0]]), torch.tensor([[-1], [3]]), torch.tensor([[0], [10]])])
def test_indices_outside_the_nodes_are_refused_not_drawn_elsewhere(edge_index):
    with pytest.raises(ValueError, match="edge_index"):
        mask_image(edge_index, 10)
    with pytest.raises(ValueError, match="edge_index"):
        draw_graph(edge_index, 10)
    with pytest.raises(ValueError, match="resolution must be >= 1"):
        mask_image(torch.tensor([[0], [1]]), 10, resolution=0)
