"""Commands against a running server: ``tenantserve status`` and ``tenantserve models …``."""
