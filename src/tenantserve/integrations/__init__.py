"""Optional integrations with other systems, one module each; nothing in the core imports them."""
