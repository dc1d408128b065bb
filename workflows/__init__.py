"""End-to-end orchestration on top of every stage: `python -m workflows demo` and `... movielens`.

The only package that may import training, serving and monitoring together.
"""
