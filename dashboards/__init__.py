"""Grafana dashboards for the duty room's wall screens, built in code and pushed with grafana-client.

The panels query the contract's tables (``readings``, ``readings_1m``, ``sensors``, ``alarms``,
``units``) through Grafana's PostgreSQL data source, so they work on plain PostgreSQL, the Apache
edition and the full edition of TimescaleDB alike.
"""
