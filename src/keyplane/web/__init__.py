"""The HTTP adapter: routes parse, call a service, serialise; errors are mapped here."""
