"""Federated fine-tuning across sites (arXiv 2502.14187): only LoRA weights travel; labels stay at their site.
aggregators.py: FedAvg / FedProx / FedAdam / FedYogi; partition.py: sites, KTO-O, KTO-R, Dirichlet;
simulation.py: all sites in one process on one base model; flower.py: the same client and server code over Flower."""
