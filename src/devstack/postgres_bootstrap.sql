-- The application's PostgreSQL role and database: what Eventfold needs, no more.
--
-- A psql script run by a superuser (`eventfold infra up`, and the postgres-init
-- service of docker-compose.yml), idempotent. It reads the names and the
-- password from the environment, so the password is never on a command line:
--   APP_ROLE, APP_PASSWORD, APP_DATABASE
--
-- The role is no superuser. It needs:
--   CREATE on the database: the platform schema `eventfold` and one schema per tenant;
--   CREATEROLE: one NOLOGIN read role per tenant, granted to itself (eventfold.tenancy).
-- The database belongs to the superuser that runs this, not to the role.
\getenv role APP_ROLE
\getenv pw APP_PASSWORD
\getenv db APP_DATABASE

SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
-- Also demotes a role an older Eventfold created as a superuser.
SELECT format(
    'ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB CREATEROLE NOREPLICATION NOBYPASSRLS '
    'INHERIT PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I', :'db')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I', :'db', :'role') \gexec
