"""Writes for analytics, by job: usage rollups and retention, quality, drift reports, alerts."""
