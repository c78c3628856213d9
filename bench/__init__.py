"""Benchmarks, kept out of the product: each module runs as `python -m bench.<name>` from the repository root and
prints its figures (JSON on the last line). Their tiny-model versions run in the test suite (marker `bench`).

- bench.training: our trainer's speed, memory and held-out quality, and DPO/KTO against TRL on the same batches.
- bench.federated: the federated DPO / KTO-O / KTO-R reproduction.
- bench.labeling: "save a label + fetch the next task" on a large database.
- bench.imports: importing a million-row preference file, and the HH-RLHF test split.
- bench.live: the app while a job trains (chart latency, labeling latency).
"""
