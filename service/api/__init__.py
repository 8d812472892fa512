"""HTTP layer: blueprints, error mapping, JSON."""
