"""A handler module that cannot be imported (for boot-failure tests)."""

raise ImportError("broken_import: this module fails on purpose")


def handle(message):  # pragma: no cover - never reached
    return None
