"""The proxy tier: the aiohttp edge on port 12480 (forward and lookup modes)."""
