"""Online serving: FastAPI ranker over the Feast online store and a trained model bundle."""
