"""CLI verbs, one module each; every module defines `register(app)`."""
