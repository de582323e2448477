-- Sample tables for `ngsiflow produce` samples (service "demo", servicepath "/city"), one per
-- flow and entity type, routed by dm-by-entity-type-database: demo.city_<type><suffix>.
-- Used by the local stack, the docker PostGIS init script and the tests. Idempotent.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE SCHEMA IF NOT EXISTS demo;
DO $$
DECLARE
  flow record;
BEGIN
  FOR flow IN SELECT * FROM (VALUES
      ('',          'PRIMARY KEY (timeinstant, entityid)'),
      ('_lastdata', 'PRIMARY KEY (entityid)'),
      ('_mutable',  'PRIMARY KEY (entityid, timeinstant)')) AS f(suffix, pk)
  LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS demo.%I (
        recvtime timestamptz NOT NULL DEFAULT now(),
        fiwareservicepath text, entityid text NOT NULL, entitytype text, timeinstant timestamptz,
        temperature double precision, count integer, bignum bigint, price numeric(20,6),
        active boolean, name text, config jsonb, tags json,
        observedat timestamp, day date, location geometry(Point, 4326), %s)',
      'city_sensor' || flow.suffix, flow.pk);
    EXECUTE format('CREATE TABLE IF NOT EXISTS demo.%I (
        recvtime timestamptz NOT NULL DEFAULT now(),
        fiwareservicepath text, entityid text NOT NULL, entitytype text, timeinstant timestamptz,
        route geometry(LineString, 4326), area geometry(Polygon, 4326),
        bbox geometry(Polygon, 4326), shape geometry(MultiPolygon, 4326),
        feature geometry(Geometry, 4326), %s)',
      'city_zone' || flow.suffix, flow.pk);
  END LOOP;
END $$;
