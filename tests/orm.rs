//! ORMs and drivers from other languages, unchanged, against a 3-node cluster: each script
//! in `tests/python/` runs with the interpreter of the virtual environment `.ci/run`
//! makes (`CAIRN_PYTHON`, with `tests/python/requirements.txt`), through a node other than
//! the first (as an application behind a load balancer), on a cluster of its own. `.ci/run`
//! sets CAIRN_REQUIRE_PYTHON=1; elsewhere each test says it was skipped without one.

mod common;

fn run(script: &str, scheme: &str) {
    let Some(python) = common::python() else {
        return;
    };
    let cluster = common::Cluster::start(3, &[]);
    let url = format!("{scheme}://app@{}/cairn", cluster.nodes[1].pg);
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    common::run_python(&python, &[path.as_str(), url.as_str()], &[]);
}

/// create_all twice, inspect() (tables, columns, keys, indexes, unique constraints), an ORM
/// relationship and join, rollback, IntegrityError.
#[test]
fn sqlalchemy_orm_and_inspection_work_unchanged() {
    run("sqlalchemy_orm.py", "postgresql+psycopg");
}

/// upgrade head in one transaction, autogenerate (finds exactly the changed model's new
/// table, column and index), the generated revision applied, downgrade base.
#[test]
fn alembic_upgrade_autogenerate_and_downgrade_work_unchanged() {
    run("alembic_migrations.py", "postgresql+psycopg");
}

/// migrate (identity columns, a foreign key and UNIQUE added by ALTER TABLE, bulk inserts
/// through UNNEST of arrays), ORM CRUD, select_related, aggregates, atomic rollback, and
/// inspectdb naming every table, field, key and type modifier.
#[test]
fn django_migrate_orm_and_inspectdb_work_unchanged() {
    run("django_orm.py", "postgres");
}

/// asyncpg: binary prepared statements for every type, executemany, transactions,
/// copy_records_to_table (binary COPY), and `= ANY($1)` with an int[] parameter after its
/// type introspection query.
#[test]
fn asyncpg_binary_prepared_statements_copy_and_arrays_work_unchanged() {
    run("asyncpg_driver.py", "postgres");
}

/// psycopg 3: COPY FROM STDIN with write_row and in blocks, failing copies loading
/// nothing, COPY TO STDOUT as text and typed rows, executemany, server-side prepared
/// statements.
#[test]
fn psycopg_copy_in_and_out_works_unchanged() {
    run("psycopg_copy.py", "postgres");
}
