"""Client library and CLI: lookup-then-POST (p2p) with retries, or forwarding through the proxy."""

from client.api import ClassifyError, Client

__all__ = ["Client", "ClassifyError"]
