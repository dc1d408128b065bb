"""Second stage: the ranker over (request, candidate item) rows, LightGBM or DCN-v2.

- `frame`: the one conversion from joined Feast rows to the model's input matrix, shared by
  training and serving
- `lgbm_ranker`: LambdaRank training, text persistence, scoring and plots
- `dcn`: DCN-v2 training in PyTorch (listwise loss, early stopping on validation NDCG), refit
- `selection`: the kinds trained on the same rows, the one better on validation chosen
"""
