"""Everything that talks to Consul: registration, health, drain, and watching the live set."""
