"""The models a report compares, and which differences it states."""
from domainpt.layout import CONTROL_MODEL, MODELS

ARMS = MODELS + (CONTROL_MODEL,)
# (key in results.json, model a, model b): each difference is b minus a.
COMPARISONS = (("difference", "general_model", "domain_model"), ("difference_vs_control", CONTROL_MODEL, "domain_model"))
