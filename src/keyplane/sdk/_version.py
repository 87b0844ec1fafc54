from keyplane import __version__

USER_AGENT = f"keyplane-sdk/{__version__}"
