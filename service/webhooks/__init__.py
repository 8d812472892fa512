"""Outbound webhooks: Standard Webhooks signing, SSRF address policy, guarded HTTP delivery.

This package does no database or Flask work; the outbox, worker and API build on it.
"""
