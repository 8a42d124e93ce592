"""The models a report compares, and which differences it states."""

ARMS = ("general_model", "domain_model", "control_model")
# (key in results.json, model a, model b): each difference is b minus a.
COMPARISONS = (("difference", "general_model", "domain_model"), ("difference_vs_control", "control_model", "domain_model"))
