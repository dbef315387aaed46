"""Reads for analytics, by what they read: usage, quality, experiments, drift, the dashboard."""
