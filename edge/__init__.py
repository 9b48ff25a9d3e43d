"""The shared HTTP edge: what both HTTP fronts (worker and proxy) run in front of their
handlers. Errors, bearer auth, request ids and logs, HTTP metrics, the upload reader,
image decoding and preprocessing, and the app skeleton that wires them together.

Dependencies point one way: edge <- worker <- proxy. Nothing here imports either tier.
"""
