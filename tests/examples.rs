//! The example services of ../shared/PRODUCT.md (C22), unchanged, against a 3-node cluster
//! with standard drivers: the ride-sharing service's own pytest suite (Flask, SQLAlchemy,
//! psycopg, Alembic: input validation, concurrent joins that must not overbook a ride,
//! migrations down and up), and the vehicle telemetry example's quick run (writers at a
//! steady rate, fleet queries read with bounded staleness from every node, each answer
//! checked against what was written). Run with the virtual environment `.ci/run` makes
//! (`CAIRN_PYTHON`); skipped, saying so, without one.

mod common;

#[test]
fn the_ride_sharing_service_passes_its_own_tests() {
    let Some(python) = common::python() else {
        return;
    };
    let cluster = common::Cluster::start(3, &[]);
    let url = format!("postgresql+psycopg://rides@{}/cairn", cluster.nodes[2].pg);
    let dir = format!("{}/examples/rides", env!("CARGO_MANIFEST_DIR"));
    common::run_python(
        &python,
        &[
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            &format!("{dir}/tests"),
        ],
        &[("RIDES_DATABASE_URL", &url)],
    );
}

#[test]
fn the_telemetry_example_answers_every_fleet_query_correctly() {
    let Some(python) = common::python() else {
        return;
    };
    let cluster = common::Cluster::start(3, &[]);
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("postgres://fleet@{}/cairn", n.pg))
        .collect();
    let script = format!(
        "{}/examples/telemetry/telemetry.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let urls = urls.join(",");
    common::run_python(&python, &[&script, "--quick", "--url", &urls], &[]);
}
