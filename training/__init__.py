"""Training jobs: objectives (pure losses), batching, model loading, the trainer loop, generation, evaluation
and federated rounds. Run as `python -m training RUN_DIR`. Imports neither app nor storage's database code."""
