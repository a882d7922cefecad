"""The HTTP API and board; ``create_app`` builds the FastAPI application."""

from hazardwatch.api.app import Commands, create_app

__all__ = ["Commands", "create_app"]
