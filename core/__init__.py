"""The shared core: what more than one stage needs. The bottom layer of the platform.

Layers (each imports only from the layers below it; tests/test_layers.py holds that):

    workflows/                      end-to-end orchestration (`python -m workflows demo|movielens`)
    training/  serving/  monitoring/  the three stages, side by side, never importing each other
    feature_repo/                   the Feast definitions (entities, views, feature services)
    feast_ext/                      the platform's Feast extensions and the Feast internals they use
    core/                           settings, contracts, bundle format, model inference, atomic I/O

- `settings`: platform settings and the data layout (`Settings.raw_dir`, ...), one object
- `schema`: the raw data contract (events, users, items), validation and partitioned writes
- `time_window`: the one rule for which event and request times are accepted
- `contracts`: feature-service and column names, the served-log schema
- `bundle`: the model bundle format (`Bundle`: every file, its writer and reader)
- `inference`: the model code serving runs and training evaluates (user tower, ANN search,
  candidate sources and assembly, ranker input and scoring)
- `metrics`: ranking metrics, one definition shared by offline evaluation and online monitoring
- `experiment`: A/B variant assignment (serving assigns, monitoring analyses)
- `atomic`: write-to-temp-then-rename file writes
- `loops`: the background thread loop every periodic task uses
"""
