"""Client library and CLI (lookup-then-POST, forwarding, load tests). Not built yet: see issue 3."""
