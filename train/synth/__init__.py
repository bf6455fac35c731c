"""Synthetic CT-RATE-layout studies and Speech-RATE-layout spoken reports."""
