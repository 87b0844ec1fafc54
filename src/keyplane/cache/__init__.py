"""Caches: the in-process verification cache, Redis fan-out, rate-limit storage."""
