"""Eventfold's shared kernel: settings, envelope, schemas, tenancy, clients, CLI."""

__version__ = "0.1.0"
