"""Deployment artefacts generated from the site file (``hazardwatch deploy …``)."""
