"""Federated fine-tuning across sites (arXiv 2502.14187): only LoRA weights travel; labels stay at their site.
aggregators.py: FedAvg / FedProx / FedAdam / FedYogi; partition.py: sites, KTO-O, KTO-R, Dirichlet;
rounds.py: the server's round loop; simulation.py: all sites in one process on one base model; flower.py: the same
client step and round loop over Flower (the site's ClientApp, which reads its labels, is app/flower_site.py)."""
