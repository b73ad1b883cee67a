"""Top-level ``multibox`` sub-commands that live in their own modules (each has ``register(subparsers)``)."""
