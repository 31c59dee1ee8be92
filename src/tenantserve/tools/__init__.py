"""The tools wing: ``bench`` (load, plans, replays), ``fleet`` (model fleets) and ``remote``
(commands against a running server). They use the server's packages; only the CLI imports
them, and nothing in the server imports them (the contracts in pyproject.toml)."""
