"""Evaluation: task data, log-likelihood scoring, perplexity, shipped metric modules."""
