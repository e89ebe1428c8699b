"""Test helpers: tiny models, analytic distributions, fault injection, crash harnesses and a local Hub server.

Imported as `support.<module>` (pytest puts tests/ on sys.path); the harness scripts run as subprocesses and import
their siblings directly.
"""
