"""The monitored park: the ground every hazardwatch stage stands on.

The site file and the park model built from it, settings, the value types that cross stage
boundaries, the clock, and database plumbing (pool, migrations, registry sync). Nothing here
imports a stage (ingest, rules, alerting) or the application shell.
"""
