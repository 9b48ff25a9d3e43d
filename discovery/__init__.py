"""Everything that talks to Consul: registration, health, drain (and, next, watching)."""
