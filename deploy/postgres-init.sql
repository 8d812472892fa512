-- Run once by the postgres image on an empty data directory (deploy/compose.yaml).
-- The API also sends these as connection startup parameters, which PgBouncer drops
-- (ignore_startup_parameters): the role's defaults keep them in force through the pooler.
ALTER ROLE conduit SET statement_timeout = '5s';
ALTER ROLE conduit SET jit = off;
