"""PertTX: a perturbation transformer with gene-graph priors, as an scvi-tools model."""

__version__ = "0.1.0"
