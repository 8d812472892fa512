"""The small domain core that schemas, services and webhooks depend on: errors, scopes, views."""
