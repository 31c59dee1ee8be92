"""``python -m tenantserve`` runs the CLI."""

from tenantserve.cli import main

main()
