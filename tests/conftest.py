"""Shared fixtures: loaded from tests/fixtures/ (models, servers, S3)."""

pytest_plugins = ["fixtures.models", "fixtures.s3", "fixtures.server"]
