"""The small domain core that schemas, services and webhooks depend on.

Errors, scopes, events, the views services return and schemas render, and pages of them.
"""
