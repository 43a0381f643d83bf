"""Heartbeat and presence for Django Channels."""

__version__ = "0.1.0"
