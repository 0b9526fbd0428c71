"""The symbi kernel: every cell of a notebook runs in a sandbox."""

from .kernel import SymbiKernel

__all__ = ["SymbiKernel"]
