-- Autonomous-vehicle fleet telemetry: the vehicles, and the position reports they send.
-- Plain SQL that PostgreSQL accepts as is.
--
-- On Cairn a table is hash-distributed by its first primary-key column, and a foreign key to
-- a hash-distributed table makes the referencing table co-located with it (the key must be
-- the distribution column). So a vehicle's reports sit on the same shard as the vehicle:
-- per-vehicle queries are single-shard, fleet-wide queries scatter over every shard and
-- gather. (No `WITH (colocate_with = ...)`: the foreign key already implies it, and
-- PostgreSQL would refuse the option.)

CREATE TABLE vehicles (
    vehicle_id integer PRIMARY KEY,
    name text NOT NULL,
    model text NOT NULL,
    depot text NOT NULL
);

CREATE TABLE positions (
    vehicle_id integer NOT NULL,
    seq bigint NOT NULL,             -- the vehicle's report number, 0, 1, 2, ...
    ts timestamptz NOT NULL,         -- simulated time of the report
    lat double precision NOT NULL,
    lon double precision NOT NULL,
    speed_kmh double precision NOT NULL,
    heading smallint NOT NULL,       -- degrees clockwise from north
    battery_pct real NOT NULL,
    PRIMARY KEY (vehicle_id, seq),
    FOREIGN KEY (vehicle_id) REFERENCES vehicles (vehicle_id)
);

CREATE INDEX positions_ts ON positions (ts);
