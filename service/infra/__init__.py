"""Infrastructure: settings, database, Redis, mail, embedded servers, migrations, logging.

Nothing here imports from the layers above it (the import-linter contracts in pyproject say so).
"""
