"""Layers and models built on the attention kernels (`ops`) and patterns (`patterns`)."""
from .conv import SparseAttnConv

__all__ = ["SparseAttnConv"]
