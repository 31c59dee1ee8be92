"""Unit tests of the protocol edge (a package, so generic module names cannot collide)."""
