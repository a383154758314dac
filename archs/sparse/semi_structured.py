"""N:M semi-structured sparsity (2:4 is what NVIDIA's sparse tensor cores and cuSPARSELt run,
through torch's ``to_sparse_semi_structured``). The mask arithmetic lives with pruning
(archs.pruning.structure, which ``--prune_structure 2:4`` uses); the names stay importable here.
"""
from archs.pruning.structure import is_n_of_m, n_of_m_mask, unstructured_reason  # noqa: F401
