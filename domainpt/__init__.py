"""domainpt: domain-adaptive continued pre-training with an honest comparison report."""

__version__ = "0.1.0"
