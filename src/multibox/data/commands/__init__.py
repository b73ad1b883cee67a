"""``multibox data ...`` sub-commands, one module each with ``register(subparsers)``."""
