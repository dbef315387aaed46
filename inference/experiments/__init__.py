"""A/B experiments: create, list, stop and promote traffic splits between versions.

The Experiment model and the routing live in inference (models.py, routing.py); results
and their statistics are analytics' (analytics.selectors.experiments).
"""
