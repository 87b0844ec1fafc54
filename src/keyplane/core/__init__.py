"""The domain core: pure Python, no web, SQL or Redis imports."""
