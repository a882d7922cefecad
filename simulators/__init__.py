"""Simulated parks: physical sensor models, scenarios with ground truth, and a load generator."""
