//! The catalog: every table's columns with their declared PostgreSQL types, which SQLite does
//! not keep faithfully (its column types are affinities). `api/` uses them for RowDescription
//! and parameter types; `sql/` uses them to infer parameter types and to coerce values.
//!
//! For now the catalog lives in each replica, in `_cairn_columns`, and changes only through
//! replicated DDL (the DDL op's SQL text updates it on every replica in the same
//! transaction). The sharding work moves it into the meta group.

use crate::error::Result;
use crate::types::PgType;
use rusqlite::Connection;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: PgType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    tables: HashMap<String, Table>,
}

impl Catalog {
    pub fn load(conn: &Connection) -> Result<Catalog> {
        let mut stmt = conn.prepare(
            "SELECT table_name, column_name, pg_type FROM _cairn_columns ORDER BY table_name, ordinal",
        )?;
        let mut tables: HashMap<String, Table> = HashMap::new();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let table: String = row.get(0)?;
            let column: String = row.get(1)?;
            let ty: String = row.get(2)?;
            let ty = PgType::parse_declared(&ty).unwrap_or(PgType::Text);
            tables
                .entry(table.to_lowercase())
                .or_insert_with(|| Table {
                    name: table.clone(),
                    columns: Vec::new(),
                })
                .columns
                .push(Column { name: column, ty });
        }
        Ok(Catalog { tables })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(&name.to_lowercase())
    }

    pub fn column_type(&self, table: &str, column: &str) -> Option<PgType> {
        self.table(table)?.column(column).map(|c| c.ty)
    }

    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tables.values()
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL that records a new table's columns (appended to the CREATE TABLE in the DDL op).
pub fn record_table_sql(table: &str, columns: &[Column]) -> String {
    let mut sql = format!(
        "DELETE FROM _cairn_columns WHERE table_name = {};",
        quote_literal(table)
    );
    for (i, c) in columns.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO _cairn_columns (table_name, column_name, ordinal, pg_type) VALUES ({}, {}, {i}, {});",
            quote_literal(table),
            quote_literal(&c.name),
            quote_literal(c.ty.name())
        ));
    }
    sql
}

/// SQL that records a column added by ALTER TABLE.
pub fn record_column_sql(table: &str, column: &Column) -> String {
    format!(
        "INSERT INTO _cairn_columns (table_name, column_name, ordinal, pg_type) \
         SELECT {t}, {c}, coalesce(max(ordinal) + 1, 0), {ty} FROM _cairn_columns WHERE table_name = {t};",
        t = quote_literal(table),
        c = quote_literal(&column.name),
        ty = quote_literal(column.ty.name())
    )
}

/// SQL that forgets a dropped table.
pub fn forget_table_sql(table: &str) -> String {
    format!(
        "DELETE FROM _cairn_columns WHERE table_name = {};",
        quote_literal(table)
    )
}
