"""Command-line interface: ``csekit train | eval | encode | data``."""
