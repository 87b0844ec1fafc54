"""The SDK's version: the version of the ``keyplane-sdk`` distribution, kept equal to the
server's (``tests/sdk/test_protocol_contract.py`` checks it). Read by the SDK's packaging."""

__version__ = "0.1.0"
USER_AGENT = f"keyplane-sdk/{__version__}"
