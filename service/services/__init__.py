"""Business rules: no Flask imports; raise the domain exceptions of `service.domain.errors`."""
