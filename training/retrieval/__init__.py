"""Candidate retrieval models over contiguous user/item indices.

Submodules are imported explicitly (no re-exports) so that, e.g., loading a FAISS index does not
pull in PyTorch:

- `baselines`: popularity, trending and co-visitation recommenders
- `mf`: BPR matrix factorisation
- `two_tower`: two-tower model, trainer and persistence
- `ann_index`: FAISS index build/search/persistence
"""
