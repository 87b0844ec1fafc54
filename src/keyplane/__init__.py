"""Keyplane: a self-hosted control plane for API keys and connected apps."""

__version__ = "0.1.0"
