"""Second stage: the LightGBM ranker over (request, candidate item) rows.

- `frame`: the one conversion from joined Feast rows to the model's input matrix, shared by
  training and serving
- `lgbm_ranker`: LambdaRank training, text persistence, scoring and plots
"""
