"""The aiohttp edge on port 12480 (forward and lookup modes). Not built yet: see issue 3."""
