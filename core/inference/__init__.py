"""Model inference shared by training (evaluation, candidate generation) and serving.

Nothing here imports torch, Spark or plotting: serving loads these modules on its request path.

- `two_tower`: the two-tower model's data types and its user tower in numpy (from saved weights)
- `ann_index`: FAISS index build / search / persistence
- `baselines`: popularity, trending and co-visitation recommenders (candidate sources)
- `inputs`: Feast rows -> model inputs (id maps, user dense features, histories)
- `candidates`: candidate assembly from every source, with the retrieval features
- `frame`: joined Feast rows -> the ranker's input matrix
- `ranker`: the ranker interface (`Ranker`) over its kinds, LightGBM loading and scoring
- `dcn`: the DCN-v2 ranker's inputs and forward pass in numpy (from saved weights)
"""
