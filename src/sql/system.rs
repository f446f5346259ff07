//! PostgreSQL's system catalogs — `pg_catalog` and `information_schema` — generated from
//! Cairn's catalog, so that psql's `\d` commands, drivers and ORMs find the tables, columns,
//! keys and indexes they ask about.
//!
//! A statement is rewritten once into SQL the coordinator's SQLite can run ([`rewrite`]):
//! `pg_catalog.` qualifiers dropped, `information_schema.x` named `"information_schema.x"`,
//! regular-expression operators and `COLLATE pg_catalog.default` made SQLite's, casts to
//! `regclass`/`regtype`/`regnamespace` turned into lookups, `ARRAY(subquery)` into a text
//! array. The system tables then exist for the translator like any table ([`augment`]),
//! and a query over them runs in a scratch database holding them, filled from the catalog
//! at that moment ([`populate`]). Always-empty catalogs (policies, triggers, publications,
//! ...) make a query that inner-joins them answer no rows without running it
//! ([`provably_empty`]): some of those queries use PostgreSQL features SQLite lacks.
//!
//! OIDs: PostgreSQL's own for types, namespaces and built-ins; for tables and indexes a
//! stable hash of the name (16384 and up), so two queries a moment apart agree.

use crate::catalog::{Catalog, Column, Table};
use crate::error::{Error, Result};
use crate::types::{PgType, Typmod};
use rusqlite::types::Value;
use rusqlite::Connection;
use sqlparser::ast::{
    self, BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Statement, TableFactor,
    Value as AstValue, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;
use std::sync::OnceLock;

pub const NAMESPACE_CATALOG: i64 = 11;
pub const NAMESPACE_PUBLIC: i64 = 2200;
pub const NAMESPACE_INFORMATION_SCHEMA: i64 = 13_000;
const OWNER: i64 = 10;
/// `pg_class`'s own OID (the `classid` of relations in pg_depend and pg_description).
const PG_CLASS: i64 = 1259;
const DATABASE: i64 = 16_383;
const AM_HEAP: i64 = 2;
const AM_BTREE: i64 = 403;
const COLLATION_DEFAULT: i64 = 100;

/// One system table: its name as the rewritten SQL names it, its columns (`name:kind`,
/// kinds `i` bigint/oid, `n` integer, `s` smallint, `f` real, `t` text, `b` boolean), and
/// whether Cairn always keeps it empty.
struct Spec {
    name: &'static str,
    columns: &'static str,
    empty: bool,
}

const fn spec(name: &'static str, columns: &'static str) -> Spec {
    Spec {
        name,
        columns,
        empty: false,
    }
}

const fn empty(name: &'static str, columns: &'static str) -> Spec {
    Spec {
        name,
        columns,
        empty: true,
    }
}

const SPECS: &[Spec] = &[
    spec("pg_namespace", "oid:i nspname:t nspowner:i nspacl:A"),
    spec(
        "pg_class",
        "oid:i relname:t relnamespace:i reltype:i reloftype:i relowner:i relam:i relfilenode:i \
         reltablespace:i relpages:n reltuples:f relallvisible:n reltoastrelid:i relhasindex:b \
         relisshared:b relpersistence:c relkind:c relnatts:s relchecks:s relhasrules:b \
         relhastriggers:b relhassubclass:b relrowsecurity:b relforcerowsecurity:b \
         relispopulated:b relreplident:c relispartition:b relrewrite:i relfrozenxid:I \
         relminmxid:I relacl:A reloptions:A relpartbound:t",
    ),
    spec(
        "pg_attribute",
        "attrelid:i attname:t atttypid:i attstattarget:n attlen:s attnum:s attndims:n \
         attcacheoff:n atttypmod:n attbyval:b attalign:c attstorage:c attcompression:c \
         attnotnull:b atthasdef:b atthasmissing:b attidentity:c attgenerated:c attisdropped:b \
         attislocal:b attinhcount:n attcollation:i attacl:A attoptions:A attfdwoptions:t",
    ),
    spec(
        "pg_type",
        "oid:i typname:t typnamespace:i typowner:i typlen:s typbyval:b typtype:c \
         typcategory:c typispreferred:b typisdefined:b typdelim:c typrelid:i typelem:i \
         typarray:i typinput:t typoutput:t typreceive:t typsend:t typalign:c typstorage:c \
         typnotnull:b typbasetype:i typtypmod:n typndims:n typcollation:i typdefault:t",
    ),
    spec(
        "pg_index",
        "indexrelid:i indrelid:i indnatts:s indnkeyatts:s indisunique:b indnullsnotdistinct:b \
         indisprimary:b indisexclusion:b indimmediate:b indisclustered:b indisvalid:b \
         indcheckxmin:b indisready:b indislive:b indisreplident:b indkey:v indcollation:V \
         indclass:V indoption:v indexprs:t indpred:t _indexdef:t",
    ),
    spec(
        "pg_constraint",
        "oid:i conname:t connamespace:i contype:c condeferrable:b condeferred:b \
         convalidated:b conrelid:i contypid:i conindid:i conparentid:i confrelid:i \
         confupdtype:c confdeltype:c confmatchtype:c conislocal:b coninhcount:n \
         connoinherit:b conkey:S confkey:S conbin:t _condef:t",
    ),
    spec("pg_attrdef", "oid:i adrelid:i adnum:s adbin:t"),
    spec("pg_am", "oid:i amname:t amhandler:t amtype:c"),
    spec(
        "pg_database",
        "oid:i datname:t datdba:i encoding:n datlocprovider:c datistemplate:b datallowconn:b \
         datconnlimit:n datcollate:t datctype:t daticulocale:t datcollversion:t datacl:A \
         dattablespace:i",
    ),
    spec(
        "pg_roles",
        "oid:i rolname:t rolsuper:b rolinherit:b rolcreaterole:b rolcreatedb:b rolcanlogin:b \
         rolreplication:b rolconnlimit:n rolpassword:t rolvaliduntil:t rolbypassrls:b \
         rolconfig:A",
    ),
    spec(
        "pg_user",
        "usename:t usesysid:i usecreatedb:b usesuper:b userepl:b usebypassrls:b passwd:t \
         valuntil:t useconfig:t",
    ),
    spec(
        "pg_collation",
        "oid:i collname:t collnamespace:i collowner:i collprovider:t collencoding:n",
    ),
    spec(
        "pg_tablespace",
        "oid:i spcname:t spcowner:i spcacl:t spcoptions:t",
    ),
    spec(
        "pg_settings",
        "name:t setting:t unit:t category:t short_desc:t context:t vartype:t source:t \
         min_val:t max_val:t boot_val:t reset_val:t",
    ),
    spec(
        "pg_tables",
        "schemaname:t tablename:t tableowner:t tablespace:t hasindexes:b hasrules:b \
         hastriggers:b rowsecurity:b",
    ),
    spec(
        "pg_indexes",
        "schemaname:t tablename:t indexname:t tablespace:t indexdef:t",
    ),
    spec(
        "pg_views",
        "schemaname:t viewname:t viewowner:t definition:t",
    ),
    empty(
        "pg_matviews",
        "schemaname:t matviewname:t matviewowner:t definition:t",
    ),
    spec(
        "pg_sequence",
        "seqrelid:i seqtypid:i seqstart:I seqincrement:I seqmax:I seqmin:I seqcache:I seqcycle:b",
    ),
    spec(
        "pg_sequences",
        "schemaname:t sequencename:t sequenceowner:t data_type:t start_value:I min_value:I \
         max_value:I increment_by:I cycle:b cache_size:I last_value:I",
    ),
    spec(
        "pg_description",
        "objoid:i classoid:i objsubid:n description:t",
    ),
    spec(
        "pg_proc",
        "oid:i proname:t pronamespace:i proowner:i prolang:i prokind:c prorettype:i \
         pronargs:s proargtypes:V proisstrict:b proretset:b provolatile:c prosrc:t",
    ),
    empty(
        "pg_auth_members",
        "oid:i roleid:i member:i grantor:i admin_option:b",
    ),
    empty(
        "pg_inherits",
        "inhrelid:i inhparent:i inhseqno:n inhdetachpending:b",
    ),
    empty(
        "pg_policy",
        "oid:i polname:t polrelid:i polcmd:t polpermissive:b polroles:t polqual:t polwithcheck:t",
    ),
    empty(
        "pg_statistic_ext",
        "oid:i stxrelid:i stxname:t stxnamespace:i stxowner:i stxstattarget:n stxkeys:t stxkind:t",
    ),
    empty(
        "pg_publication",
        "oid:i pubname:t pubowner:i puballtables:b pubinsert:b pubupdate:b pubdelete:b \
         pubtruncate:b pubviaroot:b",
    ),
    empty("pg_publication_namespace", "oid:i pnpubid:i pnnspid:i"),
    empty(
        "pg_publication_rel",
        "oid:i prpubid:i prrelid:i prqual:t prattrs:t",
    ),
    empty(
        "pg_trigger",
        "oid:i tgrelid:i tgparentid:i tgname:t tgfoid:i tgtype:s tgenabled:t tgisinternal:b \
         tgconstrrelid:i tgconstrindid:i tgconstraint:i tgdeferrable:b tginitdeferred:b tgnargs:s",
    ),
    empty(
        "pg_rewrite",
        "oid:i rulename:t ev_class:i ev_type:t is_instead:b",
    ),
    spec(
        "pg_depend",
        "classid:i objid:i objsubid:n refclassid:i refobjid:i refobjsubid:n deptype:t",
    ),
    empty("pg_enum", "oid:i enumtypid:i enumsortorder:f enumlabel:t"),
    empty(
        "pg_range",
        "rngtypid:i rngsubtype:i rngmultitypid:i rngcollation:i rngsubopc:i rngcanonical:t \
         rngsubdiff:t",
    ),
    empty(
        "pg_opclass",
        "oid:i opcmethod:i opcname:t opcnamespace:i opcowner:i opcfamily:i opcintype:i \
         opcdefault:b opckeytype:i",
    ),
    empty(
        "pg_extension",
        "oid:i extname:t extowner:i extnamespace:i extversion:t",
    ),
    empty(
        "pg_partitioned_table",
        "partrelid:i partstrat:t partnatts:s partattrs:t",
    ),
    empty("pg_foreign_table", "ftrelid:i ftserver:i ftoptions:t"),
    empty(
        "pg_stat_activity",
        "datid:i datname:t pid:n usesysid:i usename:t application_name:t client_addr:t \
         backend_start:t state:t query:t",
    ),
    spec(
        "information_schema.schemata",
        "catalog_name:t schema_name:t schema_owner:t",
    ),
    spec(
        "information_schema.tables",
        "table_catalog:t table_schema:t table_name:t table_type:t is_insertable_into:t \
         is_typed:t commit_action:t",
    ),
    spec(
        "information_schema.columns",
        "table_catalog:t table_schema:t table_name:t column_name:t ordinal_position:n \
         column_default:t is_nullable:t data_type:t character_maximum_length:n \
         numeric_precision:n numeric_scale:n datetime_precision:n udt_catalog:t udt_schema:t \
         udt_name:t is_identity:t identity_generation:t is_generated:t generation_expression:t \
         is_updatable:t",
    ),
    spec(
        "information_schema.table_constraints",
        "constraint_catalog:t constraint_schema:t constraint_name:t table_catalog:t \
         table_schema:t table_name:t constraint_type:t is_deferrable:t initially_deferred:t \
         enforced:t",
    ),
    spec(
        "information_schema.key_column_usage",
        "constraint_catalog:t constraint_schema:t constraint_name:t table_catalog:t \
         table_schema:t table_name:t column_name:t ordinal_position:n \
         position_in_unique_constraint:n",
    ),
    spec(
        "information_schema.referential_constraints",
        "constraint_catalog:t constraint_schema:t constraint_name:t \
         unique_constraint_catalog:t unique_constraint_schema:t unique_constraint_name:t \
         match_option:t update_rule:t delete_rule:t",
    ),
    spec(
        "information_schema.views",
        "table_catalog:t table_schema:t table_name:t view_definition:t check_option:t \
         is_updatable:t is_insertable_into:t",
    ),
    spec(
        "information_schema.sequences",
        "sequence_catalog:t sequence_schema:t sequence_name:t data_type:t start_value:t \
         minimum_value:t maximum_value:t increment:t cycle_option:t",
    ),
];

fn kind(letter: &str) -> PgType {
    match letter {
        "i" => PgType::Oid,
        "I" => PgType::Int8,
        "c" => PgType::Char,
        "v" => PgType::Int2Vector,
        "V" => PgType::OidVector,
        "S" => PgType::Int2Array,
        "A" => PgType::TextArray,
        "n" => PgType::Int4,
        "s" => PgType::Int2,
        "f" => PgType::Float4,
        "b" => PgType::Bool,
        _ => PgType::Text,
    }
}

fn sqlite_type(ty: PgType) -> &'static str {
    match ty {
        PgType::Int8 | PgType::Int4 | PgType::Int2 | PgType::Bool | PgType::Oid => "INTEGER",
        PgType::Float4 => "REAL",
        _ => "TEXT",
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The system tables as catalog tables (columns typed; DDL for a scratch database).
fn definitions() -> &'static [Table] {
    static TABLES: OnceLock<Vec<Table>> = OnceLock::new();
    TABLES.get_or_init(|| {
        SPECS
            .iter()
            .map(|s| {
                let columns: Vec<Column> = s
                    .columns
                    .split_whitespace()
                    .map(|c| {
                        let (name, k) = c.split_once(':').expect("name:kind");
                        Column {
                            name: name.to_string(),
                            ty: kind(k),
                            typmod: None,
                        }
                    })
                    .collect();
                let ddl = format!(
                    "CREATE TABLE {} ({})",
                    quote(s.name),
                    columns
                        .iter()
                        .map(|c| format!("{} {}", quote(&c.name), sqlite_type(c.ty)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Table {
                    ddl: vec![ddl],
                    ..Table::scratch(s.name.to_string(), columns)
                }
            })
            .collect()
    })
}

/// Whether a statement calls a function that looks up the catalog's objects (filled in by
/// [`populate`]).
pub fn uses_objects(sql: &str) -> bool {
    const FUNCTIONS: [&str; 9] = [
        "cairn_reg_",
        "obj_description",
        "col_description",
        "pg_get_viewdef",
        "pg_get_indexdef",
        "pg_get_constraintdef",
        "pg_get_serial_sequence",
        "pg_get_function_",
        "pg_table_is_visible",
    ];
    let lower = sql.to_ascii_lowercase();
    FUNCTIONS.iter().any(|f| lower.contains(f))
}

/// Whether `name` (as the rewritten statement names it) is a system table.
pub fn is_system_table(name: &str) -> bool {
    let n = name.to_lowercase();
    SPECS.iter().any(|s| s.name == n)
}

fn always_empty(name: &str) -> bool {
    let n = name.to_lowercase();
    SPECS.iter().any(|s| s.name == n && s.empty)
}

/// `catalog` with the system tables added (for translating and describing statements).
pub fn augment(catalog: &Catalog) -> Catalog {
    let mut c = catalog.clone();
    for t in definitions() {
        if c.any_table(&t.name).is_none() {
            c.put_table(t.clone());
        }
    }
    c
}

/// The user tables of an augmented catalog.
pub fn user_tables(catalog: &Catalog) -> impl Iterator<Item = &Table> {
    catalog.tables().filter(|t| !is_system_table(&t.name))
}

/// The system tables a (rewritten) statement reads.
pub fn tables_read(stmt: &Statement) -> Vec<String> {
    let mut names = Vec::new();
    let _ = ast::visit_relations(stmt, |n| {
        let name = super::translate::object_name(n).to_lowercase();
        if is_system_table(&name) && !names.contains(&name) {
            names.push(name);
        }
        ControlFlow::<()>::Continue(())
    });
    names
}

/// A stable OID for a user object: 16384 and up, from its name.
pub fn oid_of(kind: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(name.to_lowercase().bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    16_384 + (h % 2_000_000_000) as i64
}

/// PostgreSQL's `atttypmod` for a column.
fn typmod_of(c: &Column) -> i64 {
    match c.typmod {
        Some(Typmod::Length(n)) => n as i64 + 4,
        Some(Typmod::Numeric { precision, scale }) => ((precision as i64) << 16 | scale as i64) + 4,
        None => -1,
    }
}

/// `format_type(oid, typmod)`.
pub fn format_type(oid: i64, typmod: i64) -> Option<String> {
    let ty = PgType::from_oid(oid as u32)?;
    let base = ty.name();
    Some(match ty {
        PgType::Varchar | PgType::Bpchar if typmod >= 4 => format!("{base}({})", typmod - 4),
        PgType::Numeric if typmod >= 4 => {
            let m = typmod - 4;
            format!("numeric({},{})", m >> 16, m & 0xffff)
        }
        _ => base.to_string(),
    })
}

/// Extra built-in types catalogs refer to (beyond the types Cairn keeps values of).
const EXTRA_TYPES: &[(i64, &str, i64, &str)] =
    &[(2205, "regclass", 4, "N"), (2206, "regtype", 4, "N")];

fn type_category(ty: PgType) -> &'static str {
    if ty.is_array() {
        return "A";
    }
    match ty {
        PgType::Bool => "B",
        PgType::Int2
        | PgType::Int4
        | PgType::Int8
        | PgType::Float4
        | PgType::Float8
        | PgType::Numeric => "N",
        PgType::Date | PgType::Timestamp | PgType::Timestamptz => "D",
        PgType::Text | PgType::Varchar | PgType::Bpchar | PgType::Name => "S",
        PgType::Interval => "T",
        PgType::Oid => "N",
        PgType::Char => "Z",
        PgType::Int2Vector | PgType::OidVector => "A",
        PgType::Unknown => "X",
        _ => "U",
    }
}

fn type_len(ty: PgType) -> i64 {
    match ty {
        PgType::Bool => 1,
        PgType::Char => 1,
        PgType::Int2 => 2,
        PgType::Int4 | PgType::Float4 | PgType::Date | PgType::Oid => 4,
        PgType::Interval => 16,
        PgType::Name => 64,
        PgType::Int8 | PgType::Float8 | PgType::Timestamp | PgType::Timestamptz => 8,
        PgType::Uuid => 16,
        _ => -1,
    }
}

/// What SQLite says about one user table's keys (its DDL loaded into the scratch database).
struct Keys {
    /// Per column (by position): NOT NULL, DEFAULT expression.
    columns: Vec<(bool, Option<String>)>,
    /// Primary-key column names, in key order.
    primary: Vec<String>,
    /// Unique constraints: column names.
    uniques: Vec<Vec<String>>,
    foreign: Vec<ForeignKey>,
}

struct ForeignKey {
    columns: Vec<String>,
    parent: String,
    /// The parent's columns (empty: its primary key).
    referred: Vec<String>,
    on_update: String,
    on_delete: String,
}

fn keys(conn: &Connection, table: &Table) -> Result<Keys> {
    let q = quote(&table.name);
    let mut columns = Vec::new();
    let mut primary: Vec<(i64, String)> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({q})"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(1)?;
            let notnull: i64 = r.get(3)?;
            let default: Option<String> = r.get(4)?;
            let pk: i64 = r.get(5)?;
            if pk > 0 {
                primary.push((pk, name.clone()));
            }
            // A serial column's default is its implicit sequence, as PostgreSQL shows it.
            let default = default.or_else(|| match (&table.identity, table.implicit_sequence()) {
                (None, Some((seq, column))) if column.eq_ignore_ascii_case(&name) => {
                    Some(format!("nextval('{seq}'::regclass)"))
                }
                _ => None,
            });
            columns.push((notnull != 0 || pk > 0, default));
        }
    }
    primary.sort();
    let mut uniques = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("PRAGMA index_list({q})"))?;
        let list: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (index, origin) in list {
            if origin != "u" {
                continue;
            }
            let mut info = conn.prepare(&format!("PRAGMA index_info({})", quote(&index)))?;
            let cols: Vec<String> = info
                .query_map([], |r| r.get::<_, String>(2))?
                .collect::<rusqlite::Result<_>>()?;
            uniques.push(cols);
        }
    }
    let mut foreign: Vec<ForeignKey> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!("PRAGMA foreign_key_list({q})"))?;
        let mut rows = stmt.query([])?;
        let mut last_id = -1i64;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let parent: String = r.get(2)?;
            let from: String = r.get(3)?;
            let to: Option<String> = r.get(4)?;
            let on_update: String = r.get(5)?;
            let on_delete: String = r.get(6)?;
            if id != last_id {
                foreign.push(ForeignKey {
                    columns: Vec::new(),
                    parent,
                    referred: Vec::new(),
                    on_update,
                    on_delete,
                });
                last_id = id;
            }
            let fk = foreign.last_mut().expect("pushed");
            fk.columns.push(from);
            fk.referred.extend(to);
        }
    }
    Ok(Keys {
        columns,
        primary: primary.into_iter().map(|(_, n)| n).collect(),
        uniques,
        foreign,
    })
}

/// `attidentity` of a column: "a" or "d" for an identity column, else empty.
fn identity_of(t: &Table, column: &str) -> String {
    match &t.identity {
        Some(i) if i.column.eq_ignore_ascii_case(column) => {
            (if i.always { "a" } else { "d" }).to_string()
        }
        _ => String::new(),
    }
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn flag(b: bool) -> Value {
    Value::Integer(b as i64)
}

const NULL: Value = Value::Null;

fn fk_action(a: &str) -> (&'static str, &'static str) {
    match a.to_uppercase().as_str() {
        "CASCADE" => ("c", "CASCADE"),
        "SET NULL" => ("n", "SET NULL"),
        "SET DEFAULT" => ("d", "SET DEFAULT"),
        "RESTRICT" => ("r", "RESTRICT"),
        _ => ("a", "NO ACTION"),
    }
}

/// One index or key of a table, as the catalogs show it.
struct Index {
    name: String,
    columns: Vec<String>,
    unique: bool,
    primary: bool,
    /// A constraint (PRIMARY KEY / UNIQUE) rather than a CREATE INDEX.
    constraint: bool,
}

fn indexes_of(table: &Table, keys: &Keys) -> Vec<Index> {
    let mut out = Vec::new();
    if !keys.primary.is_empty() {
        out.push(Index {
            name: format!("{}_pkey", table.name),
            columns: keys.primary.clone(),
            unique: true,
            primary: true,
            constraint: true,
        });
    }
    for cols in &keys.uniques {
        if *cols == keys.primary {
            continue;
        }
        out.push(Index {
            name: format!("{}_{}_key", table.name, cols.join("_")),
            columns: cols.clone(),
            unique: true,
            primary: false,
            constraint: true,
        });
    }
    for (name, sql) in &table.indexes {
        let upper = sql.to_uppercase();
        let columns = sql
            .rfind('(')
            .and_then(|open| {
                sql[open + 1..]
                    .rfind(')')
                    .map(|close| &sql[open + 1..open + 1 + close])
            })
            .map(|inside| {
                inside
                    .split(',')
                    .map(|c| c.trim().trim_matches('"').to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Index {
            name: name.clone(),
            columns,
            unique: upper.starts_with("CREATE UNIQUE"),
            primary: false,
            constraint: false,
        });
    }
    out
}

/// What the `reg*` casts and `pg_get_*def` functions look up.
#[derive(Default)]
struct Objects {
    /// (kind, oid) → name, kinds `regclass`, `regtype`, `regnamespace`, `regrole`.
    names: std::collections::HashMap<(&'static str, i64), String>,
    /// Index and constraint OID → definition; view OID → its query.
    defs: std::collections::HashMap<i64, String>,
    /// (object OID, column number or 0) → comment.
    comments: std::collections::HashMap<(i64, i64), String>,
    /// (table, column) → the implicit sequence of a serial or identity column.
    serials: std::collections::HashMap<(String, String), String>,
}

fn objects(conn: &Connection, objects: std::sync::Arc<Objects>) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let o = objects.clone();
    conn.create_scalar_function("cairn_reg_name", 2, flags, move |ctx| {
        let kind: String = ctx.get(0)?;
        let kind = ["regclass", "regtype", "regnamespace", "regrole", "regproc"]
            .into_iter()
            .find(|k| *k == kind)
            .unwrap_or("regclass");
        Ok(match ctx.get::<Value>(1)? {
            Value::Integer(oid) => Some(
                o.names
                    .get(&(kind, oid))
                    .cloned()
                    .unwrap_or_else(|| oid.to_string()),
            ),
            Value::Text(t) => match t.parse::<i64>() {
                Ok(oid) => o.names.get(&(kind, oid)).cloned().or(Some(t)),
                Err(_) => Some(t),
            },
            _ => None,
        })
    })?;
    let o = objects.clone();
    conn.create_scalar_function("cairn_reg_oid", 2, flags, move |ctx| {
        let kind: String = ctx.get(0)?;
        Ok(match ctx.get::<Value>(1)? {
            Value::Integer(oid) => Some(oid),
            Value::Text(t) => t.parse::<i64>().ok().or_else(|| {
                // `public.t`, `pg_catalog.pg_class`, `"T"`: the object's own name.
                let name = t
                    .rsplit('.')
                    .next()
                    .unwrap_or(&t)
                    .trim_matches('"')
                    .to_lowercase();
                o.names
                    .iter()
                    .find(|((k, _), n)| *k == kind && n.to_lowercase() == name)
                    .map(|((_, oid), _)| *oid)
            }),
            _ => None,
        })
    })?;
    for name in ["pg_get_indexdef", "pg_get_constraintdef", "pg_get_viewdef"] {
        let o = objects.clone();
        conn.create_scalar_function(name, -1, flags, move |ctx| {
            let oid = match ctx.get::<Value>(0)? {
                Value::Integer(oid) => Some(oid),
                Value::Text(t) => t.parse::<i64>().ok().or_else(|| {
                    let n = t.trim_start_matches("public.").to_lowercase();
                    o.names
                        .iter()
                        .find(|((k, _), x)| *k == "regclass" && x.to_lowercase() == n)
                        .map(|((_, oid), _)| *oid)
                }),
                _ => None,
            };
            Ok(oid.and_then(|oid| o.defs.get(&oid).cloned()))
        })?;
    }
    // obj_description(oid[, catalog]), col_description(oid, column number).
    for n in [1, 2] {
        let o = objects.clone();
        conn.create_scalar_function("obj_description", n, flags, move |ctx| {
            let oid: Option<i64> = ctx.get(0)?;
            Ok(oid.and_then(|oid| o.comments.get(&(oid, 0)).cloned()))
        })?;
    }
    let o = objects.clone();
    conn.create_scalar_function("col_description", 2, flags, move |ctx| {
        let (oid, column): (Option<i64>, Option<i64>) = (ctx.get(0)?, ctx.get(1)?);
        Ok(match (oid, column) {
            (Some(oid), Some(c)) => o.comments.get(&(oid, c)).cloned(),
            _ => None,
        })
    })?;
    let o = objects.clone();
    conn.create_scalar_function("pg_get_serial_sequence", 2, flags, move |ctx| {
        let (Some(table), Some(column)) =
            (ctx.get::<Option<String>>(0)?, ctx.get::<Option<String>>(1)?)
        else {
            return Ok(None);
        };
        let table = table
            .trim_matches('"')
            .trim_start_matches("public.")
            .to_lowercase();
        Ok(o.serials
            .get(&(table, column.to_lowercase()))
            .map(|s| format!("public.{s}")))
    })?;
    Ok(())
}

/// Fill the system tables `used` in `conn` from `catalog`'s user tables, whose DDL is
/// loaded into `conn` first (SQLite then reports their keys).
pub fn populate(conn: &Connection, catalog: &Catalog, used: &[String]) -> Result<()> {
    conn.execute_batch("ATTACH DATABASE ':memory:' AS sys")?;
    let tables: Vec<&Table> = user_tables(catalog).collect();
    for t in &tables {
        for sql in &t.ddl {
            conn.execute_batch(sql)?;
        }
    }
    let mut keys_of = Vec::with_capacity(tables.len());
    for t in &tables {
        keys_of.push(keys(conn, t)?);
    }
    let mut found = Objects::default();
    for (oid, name) in [
        (NAMESPACE_CATALOG, "pg_catalog"),
        (NAMESPACE_PUBLIC, "public"),
        (NAMESPACE_INFORMATION_SCHEMA, "information_schema"),
    ] {
        found.names.insert(("regnamespace", oid), name.to_string());
    }
    found.names.insert(("regrole", OWNER), "cairn".to_string());
    // The catalogs themselves, as `'pg_catalog.pg_class'::regclass` names them.
    for (oid, name) in [
        (1247, "pg_type"),
        (1249, "pg_attribute"),
        (1255, "pg_proc"),
        (PG_CLASS, "pg_class"),
        (1262, "pg_database"),
        (2606, "pg_constraint"),
        (2608, "pg_depend"),
        (2609, "pg_description"),
        (2610, "pg_index"),
        (2615, "pg_namespace"),
        (2618, "pg_rewrite"),
        (2620, "pg_trigger"),
        (3079, "pg_extension"),
    ] {
        found.names.insert(("regclass", oid), name.to_string());
    }
    for ty in crate::types::ALL_TYPES {
        found
            .names
            .insert(("regtype", ty.oid() as i64), ty.name().to_string());
    }
    for (oid, name, ..) in EXTRA_TYPES {
        found.names.insert(("regtype", *oid), name.to_string());
    }
    // Both tables keep the object's OID first and its definition last.
    for name in ["pg_index", "pg_constraint"] {
        for row in rows_of(name, catalog, &tables, &keys_of) {
            if let (Some(Value::Integer(oid)), Some(Value::Text(def))) = (row.first(), row.last()) {
                found.defs.insert(*oid, def.clone());
            }
        }
    }
    for t in &tables {
        found
            .names
            .insert(("regclass", oid_of("table", &t.name)), t.name.clone());
        if let Some((seq, column)) = t.implicit_sequence() {
            found
                .names
                .insert(("regclass", oid_of("sequence", &seq)), seq.clone());
            found
                .serials
                .insert((t.name.to_lowercase(), column.to_lowercase()), seq);
        }
    }
    for v in catalog.views() {
        let oid = oid_of("view", &v.name);
        found.names.insert(("regclass", oid), v.name.clone());
        found.defs.insert(oid, view_definition(v));
    }
    for q in catalog.sequences() {
        found
            .names
            .insert(("regclass", oid_of("sequence", &q.name)), q.name.clone());
    }
    for (target, oid, column) in comment_targets(catalog, &tables) {
        if let Some(text) = catalog.comment(&target) {
            found.comments.insert((oid, column), text.to_string());
        }
    }
    for (t, k) in tables.iter().zip(&keys_of) {
        for i in indexes_of(t, k) {
            found
                .names
                .insert(("regclass", oid_of("index", &i.name)), i.name);
        }
    }
    objects(conn, std::sync::Arc::new(found))?;
    for name in used {
        let def = definitions()
            .iter()
            .find(|d| d.name == *name)
            .ok_or_else(|| Error::internal(format!("no system table {name}")))?;
        let ddl = def.ddl[0].replacen("CREATE TABLE ", "CREATE TABLE sys.", 1);
        conn.execute_batch(&ddl)?;
        let rows = rows_of(name, catalog, &tables, &keys_of);
        if rows.is_empty() {
            continue;
        }
        let marks = vec!["?"; def.columns.len()].join(", ");
        let mut insert =
            conn.prepare(&format!("INSERT INTO sys.{} VALUES ({marks})", quote(name)))?;
        for row in rows {
            debug_assert_eq!(row.len(), def.columns.len(), "{name}");
            insert.execute(rusqlite::params_from_iter(row))?;
        }
    }
    Ok(())
}

/// A function `pg_proc` lists.
struct Function {
    name: &'static str,
    /// In `public` (Cairn's own) or `pg_catalog` (PostgreSQL's).
    public: bool,
    /// `f` function, `a` aggregate, `w` window.
    kind: &'static str,
    result: &'static str,
    arguments: &'static str,
}

const fn func(name: &'static str, result: &'static str, arguments: &'static str) -> Function {
    Function {
        name,
        public: false,
        kind: "f",
        result,
        arguments,
    }
}

const fn agg(name: &'static str, result: &'static str, arguments: &'static str) -> Function {
    Function {
        name,
        public: false,
        kind: "a",
        result,
        arguments,
    }
}

/// The functions Cairn has, as `pg_proc` shows them (one signature each): Cairn's own
/// layout functions in `public` (`\df` lists them), PostgreSQL's in `pg_catalog`.
const FUNCTIONS: &[Function] = &[
    Function {
        name: "create_distributed_table",
        public: true,
        kind: "f",
        result: "void",
        arguments: "table_name regclass, distribution_column text, colocate_with text DEFAULT 'default'::text, shard_count integer DEFAULT NULL::integer",
    },
    Function {
        name: "create_reference_table",
        public: true,
        kind: "f",
        result: "void",
        arguments: "table_name regclass",
    },
    func("now", "timestamp with time zone", ""),
    func("version", "text", ""),
    func("current_database", "name", ""),
    func("current_schema", "name", ""),
    func("current_setting", "text", "text"),
    func("set_config", "text", "text, text, boolean"),
    func("gen_random_uuid", "uuid", ""),
    func("random", "double precision", ""),
    func("length", "integer", "text"),
    func("lower", "text", "text"),
    func("upper", "text", "text"),
    func("left", "text", "text, integer"),
    func("right", "text", "text, integer"),
    func("lpad", "text", "text, integer, text"),
    func("rpad", "text", "text, integer, text"),
    func("split_part", "text", "text, text, integer"),
    func("concat", "text", "VARIADIC \"any\""),
    func("concat_ws", "text", "text, VARIADIC \"any\""),
    func("repeat", "text", "text, integer"),
    func("reverse", "text", "text"),
    func("strpos", "integer", "text, text"),
    func("starts_with", "boolean", "text, text"),
    func("initcap", "text", "text"),
    func("regexp_replace", "text", "text, text, text, text"),
    func("date_trunc", "timestamp with time zone", "text, timestamp with time zone"),
    func("date_part", "double precision", "text, timestamp with time zone"),
    func("age", "interval", "timestamp with time zone, timestamp with time zone"),
    func("make_interval", "interval", "years integer, months integer, weeks integer, days integer, hours integer, mins integer, secs double precision"),
    func("make_date", "date", "year integer, month integer, day integer"),
    func("to_timestamp", "timestamp with time zone", "double precision"),
    func("to_char", "text", "timestamp with time zone, text"),
    func("justify_hours", "interval", "interval"),
    func("justify_days", "interval", "interval"),
    func("array_length", "integer", "anyarray, integer"),
    func("cardinality", "integer", "anyarray"),
    func("array_position", "integer", "anycompatiblearray, anycompatible"),
    func("array_append", "anycompatiblearray", "anycompatiblearray, anycompatible"),
    func("array_prepend", "anycompatiblearray", "anycompatible, anycompatiblearray"),
    func("array_cat", "anycompatiblearray", "anycompatiblearray, anycompatiblearray"),
    func("array_remove", "anycompatiblearray", "anycompatiblearray, anycompatible"),
    func("array_to_string", "text", "anyarray, text"),
    func("string_to_array", "text[]", "text, text"),
    func("unnest", "SETOF anyelement", "anyarray"),
    func("generate_series", "SETOF bigint", "bigint, bigint, bigint"),
    func("nextval", "bigint", "regclass"),
    func("currval", "bigint", "regclass"),
    func("setval", "bigint", "regclass, bigint"),
    func("lastval", "bigint", ""),
    func("coalesce", "anyelement", "VARIADIC anyarray"),
    agg("count", "bigint", "\"any\""),
    agg("sum", "numeric", "numeric"),
    agg("avg", "numeric", "numeric"),
    agg("min", "anyelement", "anyelement"),
    agg("max", "anyelement", "anyelement"),
    agg("array_agg", "anyarray", "anynonarray"),
    agg("string_agg", "text", "text, text"),
    agg("bool_and", "boolean", "boolean"),
    agg("bool_or", "boolean", "boolean"),
    Function {
        name: "row_number",
        public: false,
        kind: "w",
        result: "bigint",
        arguments: "",
    },
];

fn function_oid(f: &Function) -> i64 {
    oid_of("function", &format!("{}({})", f.name, f.arguments))
}

/// A view's definition as `pg_get_viewdef` prints it.
fn view_definition(v: &crate::catalog::View) -> String {
    format!(" {};", v.query)
}

/// Every object a comment may be on: (comment key, OID, column number or 0).
fn comment_targets(catalog: &Catalog, tables: &[&Table]) -> Vec<(String, i64, i64)> {
    use crate::catalog::comment_key;
    let mut out = Vec::new();
    for t in tables {
        let oid = oid_of("table", &t.name);
        out.push((comment_key("table", &t.name), oid, 0));
        for (i, c) in t.columns.iter().enumerate() {
            out.push((
                comment_key("column", &format!("{}.{}", t.name, c.name)),
                oid,
                i as i64 + 1,
            ));
        }
        for (index, _) in &t.indexes {
            out.push((comment_key("index", index), oid_of("index", index), 0));
        }
    }
    for v in catalog.views() {
        let oid = oid_of("view", &v.name);
        out.push((comment_key("view", &v.name), oid, 0));
        for (i, c) in v.columns.iter().enumerate() {
            out.push((
                comment_key("column", &format!("{}.{}", v.name, c.name)),
                oid,
                i as i64 + 1,
            ));
        }
    }
    for q in catalog.sequences() {
        out.push((
            comment_key("sequence", &q.name),
            oid_of("sequence", &q.name),
            0,
        ));
    }
    out
}

/// The column a sequence belongs to: (table, column, identity rather than serial).
type SequenceOwner = Option<(String, String, bool)>;

/// Every sequence: those made by CREATE SEQUENCE, and the implicit ones of serial and
/// identity columns (with their owner).
fn all_sequences(
    catalog: &Catalog,
    tables: &[&Table],
) -> Vec<(crate::catalog::Sequence, SequenceOwner)> {
    let mut out: Vec<_> = catalog
        .sequences()
        .map(|q| {
            let owner = q.owned_by.clone().map(|(t, c)| (t, c, false));
            (q.clone(), owner)
        })
        .collect();
    for t in tables {
        if let Some((name, column)) = t.implicit_sequence() {
            let ty = t.column(column).map_or(PgType::Int8, |c| c.ty);
            let max = match ty {
                PgType::Int2 => i16::MAX as i64,
                PgType::Int4 => i32::MAX as i64,
                _ => i64::MAX,
            };
            let identity = t.identity.is_some();
            out.push((
                crate::catalog::Sequence {
                    name,
                    data_type: ty,
                    start: 1,
                    increment: 1,
                    min: 1,
                    max,
                    cache: 1,
                    cycle: false,
                    owned_by: None,
                },
                Some((t.name.clone(), column.to_string(), identity)),
            ));
        }
    }
    out
}

fn rows_of(name: &str, catalog: &Catalog, tables: &[&Table], keys: &[Keys]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    let all = || tables.iter().zip(keys);
    match name {
        "pg_namespace" => {
            for (oid, n) in [
                (NAMESPACE_CATALOG, "pg_catalog"),
                (NAMESPACE_PUBLIC, "public"),
                (NAMESPACE_INFORMATION_SCHEMA, "information_schema"),
            ] {
                rows.push(vec![int(oid), text(n), int(OWNER), NULL]);
            }
        }
        "pg_class" => {
            for (t, k) in all() {
                let indexes = indexes_of(t, k);
                let keyed = !k.foreign.is_empty()
                    || keys.iter().any(|other| {
                        other
                            .foreign
                            .iter()
                            .any(|fk| fk.parent.eq_ignore_ascii_case(&t.name))
                    });
                rows.push(class_row(
                    oid_of("table", &t.name),
                    &t.name,
                    "r",
                    AM_HEAP,
                    t.columns.len(),
                    !indexes.is_empty(),
                    keyed,
                ));
                for i in indexes {
                    rows.push(class_row(
                        oid_of("index", &i.name),
                        &i.name,
                        "i",
                        AM_BTREE,
                        i.columns.len(),
                        false,
                        false,
                    ));
                }
            }
            for v in catalog.views() {
                let mut row = class_row(
                    oid_of("view", &v.name),
                    &v.name,
                    "v",
                    0,
                    v.columns.len(),
                    false,
                    false,
                );
                row[19] = flag(true); // relhasrules: a view is its _RETURN rule
                rows.push(row);
            }
            for (q, _) in all_sequences(catalog, tables) {
                rows.push(class_row(
                    oid_of("sequence", &q.name),
                    &q.name,
                    "S",
                    0,
                    3,
                    false,
                    false,
                ));
            }
        }
        "pg_attribute" => {
            for (t, k) in all() {
                let rel = oid_of("table", &t.name);
                for (i, c) in t.columns.iter().enumerate() {
                    let (notnull, default) = k.columns.get(i).cloned().unwrap_or((false, None));
                    rows.push(attribute_row(
                        rel,
                        i,
                        c,
                        notnull,
                        default.is_some(),
                        &identity_of(t, &c.name),
                    ));
                }
            }
            for v in catalog.views() {
                let rel = oid_of("view", &v.name);
                for (i, c) in v.columns.iter().enumerate() {
                    rows.push(attribute_row(rel, i, c, false, false, ""));
                }
            }
        }
        "pg_attrdef" => {
            for (t, k) in all() {
                let rel = oid_of("table", &t.name);
                for (i, (_, default)) in k.columns.iter().enumerate() {
                    if let Some(d) = default {
                        rows.push(vec![
                            int(oid_of("default", &format!("{}.{i}", t.name))),
                            int(rel),
                            int(i as i64 + 1),
                            text(d),
                        ]);
                    }
                }
            }
        }
        "pg_type" => {
            for ty in crate::types::ALL_TYPES {
                if ty == PgType::Unknown {
                    continue;
                }
                let mut row = type_row(
                    ty.oid() as i64,
                    &ty.typname(),
                    type_len(ty),
                    type_category(ty),
                    matches!(ty, PgType::Text | PgType::Varchar | PgType::Bpchar),
                );
                row[12] = int(ty.element().map_or(0, |e| e.oid().into()));
                row[13] = int(ty.array().map_or(0, |a| a.oid().into()));
                rows.push(row);
            }
            for (oid, name, len, category) in EXTRA_TYPES {
                rows.push(type_row(*oid, name, *len, category, false));
            }
        }
        "pg_index" => {
            for (t, k) in all() {
                let rel = oid_of("table", &t.name);
                for i in indexes_of(t, k) {
                    let positions: Vec<String> = i
                        .columns
                        .iter()
                        .map(|c| {
                            t.columns
                                .iter()
                                .position(|x| x.name.eq_ignore_ascii_case(c))
                                .map_or(0, |p| p + 1)
                                .to_string()
                        })
                        .collect();
                    let n = i.columns.len() as i64;
                    let def = format!(
                        "CREATE {}INDEX {} ON public.{} USING btree ({})",
                        if i.unique { "UNIQUE " } else { "" },
                        i.name,
                        t.name,
                        i.columns.join(", ")
                    );
                    rows.push(vec![
                        int(oid_of("index", &i.name)),
                        int(rel),
                        int(n),
                        int(n),
                        flag(i.unique),
                        flag(false),
                        flag(i.primary),
                        flag(false),
                        flag(true),
                        flag(false),
                        flag(true),
                        flag(false),
                        flag(true),
                        flag(true),
                        flag(false),
                        text(format!("[{}]", positions.join(","))),
                        text(format!("[{}]", vec!["0"; i.columns.len()].join(","))),
                        text(format!("[{}]", vec!["1978"; i.columns.len()].join(","))),
                        text(format!("[{}]", vec!["0"; i.columns.len()].join(","))),
                        NULL,
                        NULL,
                        text(def),
                    ]);
                }
            }
        }
        "pg_constraint" => {
            for (t, k) in all() {
                let rel = oid_of("table", &t.name);
                let position = |c: &str| {
                    t.columns
                        .iter()
                        .position(|x| x.name.eq_ignore_ascii_case(c))
                        .map_or(0, |p| p + 1)
                };
                for i in indexes_of(t, k).into_iter().filter(|i| i.constraint) {
                    let (kind, def) = if i.primary {
                        ("p", format!("PRIMARY KEY ({})", i.columns.join(", ")))
                    } else {
                        ("u", format!("UNIQUE ({})", i.columns.join(", ")))
                    };
                    let key: Vec<String> =
                        i.columns.iter().map(|c| position(c).to_string()).collect();
                    rows.push(constraint_row(
                        oid_of("constraint", &i.name),
                        &i.name,
                        kind,
                        rel,
                        oid_of("index", &i.name),
                        0,
                        ("a", "a"),
                        format!("[{}]", key.join(",")),
                        NULL,
                        def,
                    ));
                }
                for ForeignKey {
                    columns: cols,
                    parent,
                    referred: to,
                    on_update,
                    on_delete,
                } in &k.foreign
                {
                    let name = format!("{}_{}_fkey", t.name, cols.join("_"));
                    let to = if to.is_empty() {
                        keys_of_table(tables, keys, parent)
                    } else {
                        to.clone()
                    };
                    let (upd, upd_sql) = fk_action(on_update);
                    let (del, del_sql) = fk_action(on_delete);
                    let mut def = format!(
                        "FOREIGN KEY ({}) REFERENCES {parent}({})",
                        cols.join(", "),
                        to.join(", ")
                    );
                    if upd != "a" {
                        def.push_str(&format!(" ON UPDATE {upd_sql}"));
                    }
                    if del != "a" {
                        def.push_str(&format!(" ON DELETE {del_sql}"));
                    }
                    let key: Vec<String> = cols.iter().map(|c| position(c).to_string()).collect();
                    let parent_table = tables.iter().find(|p| p.name.eq_ignore_ascii_case(parent));
                    let fkey: Vec<String> = to
                        .iter()
                        .map(|c| {
                            parent_table
                                .and_then(|p| {
                                    p.columns
                                        .iter()
                                        .position(|x| x.name.eq_ignore_ascii_case(c))
                                })
                                .map_or(0, |p| p + 1)
                                .to_string()
                        })
                        .collect();
                    rows.push(constraint_row(
                        oid_of("constraint", &name),
                        &name,
                        "f",
                        rel,
                        0,
                        oid_of("table", parent),
                        (upd, del),
                        format!("[{}]", key.join(",")),
                        text(format!("[{}]", fkey.join(","))),
                        def,
                    ));
                }
            }
        }
        "pg_am" => {
            rows.push(vec![
                int(AM_HEAP),
                text("heap"),
                text("heap_tableam_handler"),
                text("t"),
            ]);
            rows.push(vec![
                int(AM_BTREE),
                text("btree"),
                text("bthandler"),
                text("i"),
            ]);
        }
        "pg_database" => rows.push(vec![
            int(DATABASE),
            text("cairn"),
            int(OWNER),
            int(6),
            text("c"),
            flag(false),
            flag(true),
            int(-1),
            text("C.UTF-8"),
            text("C.UTF-8"),
            NULL,
            NULL,
            NULL,
            int(1663),
        ]),
        "pg_roles" => rows.push(vec![
            int(OWNER),
            text("cairn"),
            flag(true),
            flag(true),
            flag(true),
            flag(true),
            flag(true),
            flag(true),
            int(-1),
            text("********"),
            NULL,
            flag(true),
            NULL,
        ]),
        "pg_user" => rows.push(vec![
            text("cairn"),
            int(OWNER),
            flag(true),
            flag(true),
            flag(true),
            flag(true),
            text("********"),
            NULL,
            NULL,
        ]),
        "pg_collation" => rows.push(vec![
            int(COLLATION_DEFAULT),
            text("default"),
            int(NAMESPACE_CATALOG),
            int(OWNER),
            text("d"),
            int(-1),
        ]),
        "pg_tablespace" => {
            rows.push(vec![int(1663), text("pg_default"), int(OWNER), NULL, NULL]);
            rows.push(vec![int(1664), text("pg_global"), int(OWNER), NULL, NULL]);
        }
        "pg_settings" => {
            for (n, v) in SETTINGS {
                rows.push(vec![
                    text(*n),
                    text(*v),
                    NULL,
                    text("Cairn"),
                    text(""),
                    text("user"),
                    text("string"),
                    text("default"),
                    NULL,
                    NULL,
                    text(*v),
                    text(*v),
                ]);
            }
        }
        "pg_tables" => {
            for (t, k) in all() {
                rows.push(vec![
                    text("public"),
                    text(&t.name),
                    text("cairn"),
                    NULL,
                    flag(!indexes_of(t, k).is_empty()),
                    flag(false),
                    flag(false),
                    flag(false),
                ]);
            }
        }
        "pg_indexes" => {
            for (t, k) in all() {
                for i in indexes_of(t, k) {
                    rows.push(vec![
                        text("public"),
                        text(&t.name),
                        text(&i.name),
                        NULL,
                        text(format!(
                            "CREATE {}INDEX {} ON public.{} USING btree ({})",
                            if i.unique { "UNIQUE " } else { "" },
                            i.name,
                            t.name,
                            i.columns.join(", ")
                        )),
                    ]);
                }
            }
        }
        "information_schema.schemata" => {
            for n in ["public", "pg_catalog", "information_schema"] {
                rows.push(vec![text("cairn"), text(n), text("cairn")]);
            }
        }
        "information_schema.tables" => {
            for t in tables {
                rows.push(vec![
                    text("cairn"),
                    text("public"),
                    text(&t.name),
                    text("BASE TABLE"),
                    text("YES"),
                    text("NO"),
                    NULL,
                ]);
            }
            for v in catalog.views() {
                rows.push(vec![
                    text("cairn"),
                    text("public"),
                    text(&v.name),
                    text("VIEW"),
                    text("NO"),
                    text("NO"),
                    NULL,
                ]);
            }
        }
        "information_schema.views" => {
            for v in catalog.views() {
                rows.push(vec![
                    text("cairn"),
                    text("public"),
                    text(&v.name),
                    text(view_definition(v)),
                    text("NONE"),
                    text("NO"),
                    text("NO"),
                ]);
            }
        }
        "pg_views" => {
            for v in catalog.views() {
                rows.push(vec![
                    text("public"),
                    text(&v.name),
                    text("cairn"),
                    text(view_definition(v)),
                ]);
            }
        }
        "pg_sequence" => {
            for (q, _) in all_sequences(catalog, tables) {
                rows.push(vec![
                    int(oid_of("sequence", &q.name)),
                    int(q.data_type.oid().into()),
                    int(q.start),
                    int(q.increment),
                    int(q.max),
                    int(q.min),
                    int(q.cache),
                    flag(q.cycle),
                ]);
            }
        }
        "pg_sequences" => {
            for (q, _) in all_sequences(catalog, tables) {
                rows.push(vec![
                    text("public"),
                    text(&q.name),
                    text("cairn"),
                    text(q.data_type.name()),
                    int(q.start),
                    int(q.min),
                    int(q.max),
                    int(q.increment),
                    flag(q.cycle),
                    int(q.cache),
                    NULL,
                ]);
            }
        }
        "information_schema.sequences" => {
            for (q, _) in all_sequences(catalog, tables) {
                rows.push(vec![
                    text("cairn"),
                    text("public"),
                    text(&q.name),
                    text(q.data_type.name()),
                    text(q.start.to_string()),
                    text(q.min.to_string()),
                    text(q.max.to_string()),
                    text(q.increment.to_string()),
                    text(if q.cycle { "YES" } else { "NO" }),
                ]);
            }
        }
        "pg_depend" => {
            // A serial or identity column's sequence belongs to it.
            for (q, owner) in all_sequences(catalog, tables) {
                let Some((table, column, identity)) = owner else {
                    continue;
                };
                let Some(t) = tables.iter().find(|t| t.name.eq_ignore_ascii_case(&table)) else {
                    continue;
                };
                let attnum = t
                    .columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(&column))
                    .map_or(0, |p| p as i64 + 1);
                rows.push(vec![
                    int(PG_CLASS),
                    int(oid_of("sequence", &q.name)),
                    int(0),
                    int(PG_CLASS),
                    int(oid_of("table", &t.name)),
                    int(attnum),
                    text(if identity { "i" } else { "a" }),
                ]);
            }
        }
        "pg_proc" => {
            for f in FUNCTIONS {
                let nargs = if f.arguments.is_empty() {
                    0
                } else {
                    f.arguments.split(',').count()
                };
                rows.push(vec![
                    int(function_oid(f)),
                    text(f.name),
                    int(if f.public {
                        NAMESPACE_PUBLIC
                    } else {
                        NAMESPACE_CATALOG
                    }),
                    int(OWNER),
                    int(12),
                    text(f.kind),
                    int(0),
                    int(nargs as i64),
                    text("[]"),
                    flag(false),
                    flag(f.result.starts_with("SETOF")),
                    text("i"),
                    text(f.name),
                ]);
            }
        }
        "pg_description" => {
            for (key, oid, column) in comment_targets(catalog, tables) {
                if let Some(text_) = catalog.comment(&key) {
                    rows.push(vec![int(oid), int(PG_CLASS), int(column), text(text_)]);
                }
            }
        }
        "information_schema.columns" => {
            for (t, k) in all() {
                for (i, c) in t.columns.iter().enumerate() {
                    let (notnull, default) = k.columns.get(i).cloned().unwrap_or((false, None));
                    let (length, precision, scale) = match (c.ty, c.typmod) {
                        (_, Some(Typmod::Length(n))) => (int(n as i64), NULL, NULL),
                        (PgType::Numeric, Some(Typmod::Numeric { precision, scale })) => {
                            (NULL, int(precision as i64), int(scale as i64))
                        }
                        (PgType::Int2, _) => (NULL, int(16), int(0)),
                        (PgType::Int4, _) => (NULL, int(32), int(0)),
                        (PgType::Int8, _) => (NULL, int(64), int(0)),
                        (PgType::Float4, _) => (NULL, int(24), NULL),
                        (PgType::Float8, _) => (NULL, int(53), NULL),
                        _ => (NULL, NULL, NULL),
                    };
                    rows.push(vec![
                        text("cairn"),
                        text("public"),
                        text(&t.name),
                        text(&c.name),
                        int(i as i64 + 1),
                        default.map(text).unwrap_or(NULL),
                        text(if notnull { "NO" } else { "YES" }),
                        text(if c.ty.is_array() {
                            "ARRAY"
                        } else {
                            c.ty.name()
                        }),
                        length,
                        precision,
                        scale,
                        NULL,
                        text("cairn"),
                        text("pg_catalog"),
                        text(c.ty.typname()),
                        text("NO"),
                        NULL,
                        text("NEVER"),
                        NULL,
                        text("YES"),
                    ]);
                }
            }
        }
        "information_schema.table_constraints" => {
            for (t, k) in all() {
                for i in indexes_of(t, k).into_iter().filter(|i| i.constraint) {
                    rows.push(table_constraint_row(
                        &i.name,
                        &t.name,
                        if i.primary { "PRIMARY KEY" } else { "UNIQUE" },
                    ));
                }
                for ForeignKey { columns: cols, .. } in &k.foreign {
                    let name = format!("{}_{}_fkey", t.name, cols.join("_"));
                    rows.push(table_constraint_row(&name, &t.name, "FOREIGN KEY"));
                }
            }
        }
        "information_schema.key_column_usage" => {
            for (t, k) in all() {
                for i in indexes_of(t, k).into_iter().filter(|i| i.constraint) {
                    for (n, c) in i.columns.iter().enumerate() {
                        rows.push(key_usage_row(&i.name, &t.name, c, n, NULL));
                    }
                }
                for ForeignKey { columns: cols, .. } in &k.foreign {
                    let name = format!("{}_{}_fkey", t.name, cols.join("_"));
                    for (n, c) in cols.iter().enumerate() {
                        rows.push(key_usage_row(&name, &t.name, c, n, int(n as i64 + 1)));
                    }
                }
            }
        }
        "information_schema.referential_constraints" => {
            for (t, k) in all() {
                for ForeignKey {
                    columns: cols,
                    parent,
                    on_update,
                    on_delete,
                    ..
                } in &k.foreign
                {
                    let name = format!("{}_{}_fkey", t.name, cols.join("_"));
                    rows.push(vec![
                        text("cairn"),
                        text("public"),
                        text(name),
                        text("cairn"),
                        text("public"),
                        text(format!("{parent}_pkey")),
                        text("NONE"),
                        text(fk_action(on_update).1),
                        text(fk_action(on_delete).1),
                    ]);
                }
            }
        }
        _ => {}
    }
    rows
}

fn keys_of_table(tables: &[&Table], keys: &[Keys], name: &str) -> Vec<String> {
    tables
        .iter()
        .zip(keys)
        .find(|(t, _)| t.name.eq_ignore_ascii_case(name))
        .map(|(_, k)| k.primary.clone())
        .unwrap_or_default()
}

/// `has_triggers`: PostgreSQL keeps foreign keys with triggers on both tables, and psql
/// lists a table's keys only if it has some.
fn attribute_row(
    rel: i64,
    i: usize,
    c: &Column,
    notnull: bool,
    has_default: bool,
    identity: &str,
) -> Vec<Value> {
    vec![
        int(rel),
        text(&c.name),
        int(c.ty.oid() as i64),
        int(-1),
        int(type_len(c.ty)),
        int(i as i64 + 1),
        int(0),
        int(-1),
        int(typmod_of(c)),
        flag(type_len(c.ty) > 0 && type_len(c.ty) <= 8),
        text("i"),
        text("p"),
        text(""),
        flag(notnull),
        flag(has_default),
        flag(false),
        text(identity),
        text(""),
        flag(false),
        flag(true),
        int(0),
        if matches!(c.ty, PgType::Text | PgType::Varchar | PgType::Bpchar) {
            int(COLLATION_DEFAULT)
        } else {
            int(0)
        },
        NULL,
        NULL,
        NULL,
    ]
}

fn class_row(
    oid: i64,
    name: &str,
    kind: &str,
    am: i64,
    natts: usize,
    has_index: bool,
    has_triggers: bool,
) -> Vec<Value> {
    vec![
        int(oid),
        text(name),
        int(NAMESPACE_PUBLIC),
        int(0),
        int(0),
        int(OWNER),
        int(am),
        int(oid),
        int(0),
        int(0),
        Value::Real(-1.0),
        int(0),
        int(0),
        flag(has_index),
        flag(false),
        text("p"),
        text(kind),
        int(natts as i64),
        int(0),
        flag(false),
        flag(has_triggers),
        flag(false),
        flag(false),
        flag(false),
        flag(true),
        text("d"),
        flag(false),
        int(0),
        int(0),
        int(0),
        NULL,
        NULL,
        NULL,
    ]
}

fn type_row(oid: i64, name: &str, len: i64, category: &str, collatable: bool) -> Vec<Value> {
    vec![
        int(oid),
        text(name),
        int(NAMESPACE_CATALOG),
        int(OWNER),
        int(len),
        flag(len > 0 && len <= 8),
        text("b"),
        text(category),
        flag(false),
        flag(true),
        text(","),
        int(0),
        int(0),
        int(0),
        text(format!("{name}in")),
        text(format!("{name}out")),
        text(format!("{name}recv")),
        text(format!("{name}send")),
        text("i"),
        text("p"),
        flag(false),
        int(0),
        int(-1),
        int(0),
        int(if collatable { COLLATION_DEFAULT } else { 0 }),
        NULL,
    ]
}

#[allow(clippy::too_many_arguments)]
fn constraint_row(
    oid: i64,
    name: &str,
    kind: &str,
    rel: i64,
    index: i64,
    parent: i64,
    actions: (&str, &str),
    key: String,
    fkey: Value,
    def: String,
) -> Vec<Value> {
    let fk = kind == "f";
    vec![
        int(oid),
        text(name),
        int(NAMESPACE_PUBLIC),
        text(kind),
        flag(false),
        flag(false),
        flag(true),
        int(rel),
        int(0),
        int(index),
        int(0),
        int(parent),
        text(if fk { actions.0 } else { " " }),
        text(if fk { actions.1 } else { " " }),
        text(if fk { "s" } else { " " }),
        flag(true),
        int(0),
        flag(true),
        text(key),
        fkey,
        NULL,
        text(def),
    ]
}

fn table_constraint_row(name: &str, table: &str, kind: &str) -> Vec<Value> {
    vec![
        text("cairn"),
        text("public"),
        text(name),
        text("cairn"),
        text("public"),
        text(table),
        text(kind),
        text("NO"),
        text("NO"),
        text("YES"),
    ]
}

fn key_usage_row(name: &str, table: &str, column: &str, n: usize, in_unique: Value) -> Vec<Value> {
    vec![
        text("cairn"),
        text("public"),
        text(name),
        text("cairn"),
        text("public"),
        text(table),
        text(column),
        int(n as i64 + 1),
        in_unique,
    ]
}

/// Settings drivers read (`SHOW`, `current_setting`, `pg_settings`).
pub const SETTINGS: &[(&str, &str)] = &[
    ("server_version", crate::storage::functions::SERVER_VERSION),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("search_path", "\"$user\", public"),
    ("default_transaction_isolation", "serializable"),
    ("transaction_isolation", "serializable"),
    ("default_transaction_read_only", "off"),
    ("transaction_read_only", "off"),
    ("max_identifier_length", "63"),
    ("max_connections", "1024"),
    ("lc_collate", "C.UTF-8"),
    ("lc_ctype", "C.UTF-8"),
    ("is_superuser", "on"),
    ("application_name", ""),
];

/// Rewrite a statement for the coordinator's SQLite where it uses PostgreSQL's catalog
/// vocabulary (see the module comment). Statements that do not are left unchanged.
pub fn rewrite(stmt: &mut Statement) {
    let _ = stmt.visit(&mut Rewriter);
}

struct Rewriter;

fn part_name(p: &ObjectNamePart) -> Option<String> {
    match p {
        ObjectNamePart::Identifier(i) => Some(i.value.to_lowercase()),
        _ => None,
    }
}

/// `pg_catalog.x` → `x`; `information_schema.x` → `"information_schema.x"`.
fn unqualify(name: &mut ObjectName) {
    if name.0.len() < 2 {
        return;
    }
    let schema = part_name(&name.0[name.0.len() - 2]);
    let last = part_name(&name.0[name.0.len() - 1]);
    match (schema.as_deref(), last) {
        (Some("pg_catalog"), Some(_)) => {
            let keep = name.0.pop().expect("two parts");
            name.0 = vec![keep];
        }
        (Some("information_schema"), Some(last)) => {
            let full = format!("information_schema.{last}");
            name.0 = vec![ObjectNamePart::Identifier(Ident::with_quote('"', full))];
        }
        _ => {}
    }
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    super::translate::call(name, args)
}

fn string(s: &str) -> Expr {
    Expr::Value(AstValue::SingleQuotedString(s.to_string()).into())
}

/// The name a cast to `data_type` targets, if it is one of the `reg*` types.
fn reg_type(data_type: &DataType) -> Option<String> {
    let name = match data_type {
        DataType::Custom(name, _) => name.0.last().and_then(part_name)?,
        DataType::Regclass => "regclass".to_string(),
        _ => return None,
    };
    matches!(
        name.as_str(),
        "regclass" | "regtype" | "regnamespace" | "regproc" | "regprocedure" | "regrole" | "oid"
    )
    .then_some(name)
}

/// A cast to a `reg*` type: the object's OID (where compared) or its name (where shown),
/// by functions that `populate` gives the catalog's objects.
fn reg_cast(kind: &str, value: Expr, shown: bool) -> Expr {
    let kind = match kind {
        "oid" => return value,
        "regprocedure" => "regproc",
        k => k,
    };
    call(
        if shown {
            "cairn_reg_name"
        } else {
            "cairn_reg_oid"
        },
        vec![string(kind), value],
    )
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        unqualify(relation);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // `x::regclass` in a SELECT list shows the name; elsewhere it is compared as an OID.
        if let SetExpr::Select(s) = query.body.as_mut() {
            for item in &mut s.projection {
                let expr = match item {
                    SelectItem::UnnamedExpr(e) => e,
                    SelectItem::ExprWithAlias { expr, .. } => expr,
                    _ => continue,
                };
                shown_reg_cast(expr);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let replaced = match expr {
            // E'...': the parser has already read its escapes; SQLite knows only '...'.
            Expr::Value(v) => match &v.value {
                AstValue::EscapedStringLiteral(text) => Some(string(text)),
                _ => None,
            },
            Expr::Collate {
                expr: inner,
                collation,
            } => {
                let default = collation
                    .0
                    .last()
                    .and_then(part_name)
                    .is_some_and(|n| n == "default" || n == "c");
                default.then(|| (**inner).clone())
            }
            Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::PGCustomBinaryOperator(parts) => {
                        match parts.last().map(String::as_str) {
                            Some("~") => Some((false, false)),
                            Some("~*") => Some((false, true)),
                            Some("!~") => Some((true, false)),
                            Some("!~*") => Some((true, true)),
                            _ => None,
                        }
                    }
                    BinaryOperator::PGRegexMatch => Some((false, false)),
                    BinaryOperator::PGRegexIMatch => Some((false, true)),
                    BinaryOperator::PGRegexNotMatch => Some((true, false)),
                    BinaryOperator::PGRegexNotIMatch => Some((true, true)),
                    _ => None,
                };
                op.map(|(negated, insensitive)| {
                    let m = call(
                        if insensitive {
                            "cairn_iregex"
                        } else {
                            "cairn_regex"
                        },
                        vec![(**left).clone(), (**right).clone()],
                    );
                    if negated {
                        Expr::UnaryOp {
                            op: ast::UnaryOperator::Not,
                            expr: Box::new(Expr::Nested(Box::new(m))),
                        }
                    } else {
                        m
                    }
                })
            }
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } => {
                unqualify_type(data_type);
                reg_type(data_type).map(|kind| reg_cast(&kind, (**inner).clone(), false))
            }
            // `x = ANY (ARRAY[a, b])` is `x IN (a, b)` (the translator does the rest).
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => match right.as_ref() {
                Expr::Array(a) => Some(Expr::InList {
                    expr: left.clone(),
                    list: a.elem.clone(),
                    negated: false,
                }),
                _ => None,
            },
            // `pg_catalog.pg_class.relname` → `pg_class.relname`.
            Expr::CompoundIdentifier(parts) if parts.len() >= 3 => {
                match parts[0].value.to_lowercase().as_str() {
                    "pg_catalog" => Some(Expr::CompoundIdentifier(parts[1..].to_vec())),
                    "information_schema" => {
                        let mut rest = parts[1..].to_vec();
                        rest[0] = Ident::with_quote(
                            '"',
                            format!("information_schema.{}", rest[0].value.to_lowercase()),
                        );
                        Some(Expr::CompoundIdentifier(rest))
                    }
                    _ => None,
                }
            }
            Expr::Function(f) => {
                unqualify(&mut f.name);
                let name = f.name.0.last().and_then(part_name).unwrap_or_default();
                if f.name.0.len() == 2 && part_name(&f.name.0[0]).as_deref() == Some("pg_catalog") {
                    let keep = f.name.0.pop().expect("two parts");
                    f.name.0 = vec![keep];
                }
                match (&name[..], &mut f.args) {
                    ("pg_get_expr", FunctionArguments::List(list)) => first_arg(list),
                    // Booleans are 0/1: all true is the minimum, any true the maximum.
                    ("bool_and" | "every", _) => {
                        f.name = ObjectName::from(vec![Ident::new("min")]);
                        None
                    }
                    ("bool_or", _) => {
                        f.name = ObjectName::from(vec![Ident::new("max")]);
                        None
                    }
                    ("json_build_object" | "jsonb_build_object", _) => {
                        f.name = ObjectName::from(vec![Ident::new("json_object")]);
                        None
                    }
                    (
                        "to_regtype" | "to_regclass" | "to_regnamespace" | "to_regrole"
                        | "to_regproc",
                        FunctionArguments::List(list),
                    ) => first_arg(list).map(|v| reg_cast(&name.replace("to_", ""), v, false)),
                    ("pg_partition_ancestors", FunctionArguments::List(list)) => first_arg(list),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(r) = replaced {
            *expr = r;
        }
        ControlFlow::Continue(())
    }
}

/// `pg_catalog.text` → `text` (as the parser reads an unqualified type name).
fn unqualify_type(data_type: &mut DataType) {
    let DataType::Custom(name, modifiers) = data_type else {
        return;
    };
    if name.0.len() != 2 || part_name(&name.0[0]).as_deref() != Some("pg_catalog") {
        return;
    }
    let Some(last) = part_name(&name.0[1]) else {
        return;
    };
    let text = if modifiers.is_empty() {
        last
    } else {
        format!("{last}({})", modifiers.join(", "))
    };
    let parsed = crate::sql::translate::parse(&format!("SELECT NULL::{text}"))
        .ok()
        .and_then(|mut v| v.pop());
    if let Some(Statement::Query(q)) = parsed {
        if let SetExpr::Select(s) = *q.body {
            if let Some(SelectItem::UnnamedExpr(Expr::Cast { data_type: d, .. })) =
                s.projection.into_iter().next()
            {
                *data_type = d;
            }
        }
    }
}

fn first_arg(list: &ast::FunctionArgumentList) -> Option<Expr> {
    match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
        _ => None,
    }
}

/// In a SELECT list: a cast to a `reg*` type shows the object's name.
fn shown_reg_cast(expr: &mut Expr) {
    match expr {
        Expr::Cast {
            expr: inner,
            data_type,
            ..
        } => {
            if let Some(kind) = reg_type(data_type) {
                let mut value = (**inner).clone();
                shown_reg_cast(&mut value);
                *expr = reg_cast(&kind, value, true);
            } else if let Expr::Cast { data_type: d2, .. } = inner.as_ref() {
                // `x::regtype::text`: the name, as text.
                if reg_type(d2).is_some() {
                    shown_reg_cast(inner);
                }
            }
        }
        Expr::Nested(e) => shown_reg_cast(e),
        Expr::Case {
            conditions,
            else_result,
            ..
        } => {
            for c in conditions {
                shown_reg_cast(&mut c.result);
            }
            if let Some(e) = else_result {
                shown_reg_cast(e);
            }
        }
        _ => {}
    }
}

/// `ARRAY(SELECT x FROM ...)` → the array of its rows' values, in their order (`[]` for
/// none): `(SELECT json_group_array(_cairn_v) FROM (SELECT x AS _cairn_v FROM ...))`.
pub(crate) fn array_subquery(q: &mut Query) -> Option<Expr> {
    let mut q = q.clone();
    let SetExpr::Select(s) = q.body.as_mut() else {
        return None;
    };
    if s.projection.len() != 1 {
        return None;
    }
    let item = match &s.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
        _ => return None,
    };
    s.projection = vec![SelectItem::ExprWithAlias {
        expr: item,
        alias: Ident::new("_cairn_v"),
    }];
    let outer = format!("SELECT json_group_array(_cairn_v) FROM ({q}) AS _cairn_a");
    let Some(Statement::Query(outer)) = crate::sql::translate::parse(&outer).ok()?.pop() else {
        return None;
    };
    Some(Expr::Subquery(outer))
}

/// True if the query's rows all come through an always-empty system catalog (an inner
/// join with it, in every branch of a UNION): it answers no rows, and is not run.
pub fn provably_empty(query: &Query) -> bool {
    fn body_empty(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(s) => s.from.iter().any(|twj| {
                let inner = |f: &TableFactor| match f {
                    TableFactor::Table { name, .. } => {
                        always_empty(&super::translate::object_name(name))
                    }
                    _ => false,
                };
                inner(&twj.relation)
                    || twj.joins.iter().any(|j| {
                        matches!(
                            j.join_operator,
                            ast::JoinOperator::Join(_)
                                | ast::JoinOperator::Inner(_)
                                | ast::JoinOperator::CrossJoin(_)
                        ) && inner(&j.relation)
                    })
            }),
            SetExpr::SetOperation {
                op, left, right, ..
            } => match op {
                ast::SetOperator::Union => body_empty(left) && body_empty(right),
                ast::SetOperator::Intersect => body_empty(left) || body_empty(right),
                _ => body_empty(left),
            },
            SetExpr::Query(q) => body_empty(&q.body),
            _ => false,
        }
    }
    body_empty(&query.body)
}

/// For a query that provably answers no rows (see [`provably_empty`]): a query with its
/// column names and no rows, which the coordinator runs instead (the original may use
/// PostgreSQL features SQLite lacks, over catalogs that are empty anyway).
pub fn empty_stand_in(stmt: &Statement) -> Option<Statement> {
    let Statement::Query(q) = stmt else {
        return None;
    };
    if tables_read(stmt).is_empty() || !provably_empty(q) {
        return None;
    }
    let columns: Vec<String> = column_names(q)
        .iter()
        .map(|c| format!("NULL AS {}", quote(c)))
        .collect();
    let sql = format!("SELECT {} LIMIT 0", columns.join(", "));
    crate::sql::translate::parse(&sql).ok()?.pop()
}

/// The result column names of `query` without running it (for a provably empty answer).
fn column_names(query: &Query) -> Vec<String> {
    fn first_select(body: &SetExpr) -> Option<&ast::Select> {
        match body {
            SetExpr::Select(s) => Some(s),
            SetExpr::SetOperation { left, .. } => first_select(left),
            SetExpr::Query(q) => first_select(&q.body),
            _ => None,
        }
    }
    let Some(s) = first_select(&query.body) else {
        return Vec::new();
    };
    s.projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => i.value.clone(),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => {
                p.last().map(|i| i.value.clone()).unwrap_or_default()
            }
            _ => "?column?".to_string(),
        })
        .collect()
}

/// The functions catalog queries call, on the coordinator's scratch connections.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::{Context, FunctionFlags};
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let regex = |insensitive: bool| {
        move |ctx: &Context<'_>| -> rusqlite::Result<Option<bool>> {
            let (Some(text), Some(pattern)) =
                (ctx.get::<Option<String>>(0)?, ctx.get::<Option<String>>(1)?)
            else {
                return Ok(None);
            };
            let re = regex_lite::RegexBuilder::new(&pattern)
                .case_insensitive(insensitive)
                .build()
                .map_err(|e| {
                    rusqlite::Error::UserFunctionError(
                        crate::error::coded_message(
                            crate::error::sqlstate::INVALID_REGULAR_EXPRESSION,
                            &format!("invalid regular expression: {e}"),
                        )
                        .into(),
                    )
                })?;
            Ok(Some(re.is_match(&text)))
        }
    };
    conn.create_scalar_function("cairn_regex", 2, flags, regex(false))?;
    conn.create_scalar_function("cairn_iregex", 2, flags, regex(true))?;
    conn.create_scalar_function("format_type", 2, flags, |ctx| {
        let (Some(oid), typmod) = (ctx.get::<Option<i64>>(0)?, ctx.get::<Option<i64>>(1)?) else {
            return Ok(None);
        };
        Ok(format_type(oid, typmod.unwrap_or(-1)).or(Some("???".to_string())))
    })?;
    conn.create_scalar_function("pg_get_userbyid", 1, flags, |_| Ok("cairn"))?;
    for name in [
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_relation_is_publishable",
    ] {
        conn.create_scalar_function(name, 1, flags, |_| Ok(true))?;
    }
    conn.create_scalar_function("pg_is_other_temp_schema", 1, flags, |_| Ok(false))?;
    conn.create_scalar_function("pg_my_temp_schema", 0, flags, |_| Ok(0))?;
    conn.create_scalar_function("pg_encoding_to_char", 1, flags, |_| Ok("UTF8"))?;
    conn.create_scalar_function("pg_get_function_result", 1, flags, |ctx| {
        let oid: Option<i64> = ctx.get(0)?;
        Ok(oid.and_then(|oid| {
            FUNCTIONS
                .iter()
                .find(|f| function_oid(f) == oid)
                .map(|f| f.result.to_string())
        }))
    })?;
    conn.create_scalar_function("pg_get_function_arguments", 1, flags, |ctx| {
        let oid: Option<i64> = ctx.get(0)?;
        Ok(oid.and_then(|oid| {
            FUNCTIONS
                .iter()
                .find(|f| function_oid(f) == oid)
                .map(|f| f.arguments.to_string())
        }))
    })?;
    conn.create_scalar_function("pg_get_function_identity_arguments", 1, flags, |ctx| {
        let oid: Option<i64> = ctx.get(0)?;
        Ok(oid.and_then(|oid| {
            FUNCTIONS
                .iter()
                .find(|f| function_oid(f) == oid)
                .map(|f| f.arguments.to_string())
        }))
    })?;
    conn.create_scalar_function("shobj_description", 2, flags, |_| Ok(None::<String>))?;
    conn.create_scalar_function("quote_ident", 1, flags, |ctx| {
        let Some(name) = ctx.get::<Option<String>>(0)? else {
            return Ok(None);
        };
        let plain = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        Ok(Some(if plain {
            name
        } else {
            format!("\"{}\"", name.replace('"', "\"\""))
        }))
    })?;
    // Sizes are per replica and not gathered here: reported as 0.
    for name in [
        "pg_table_size",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_indexes_size",
    ] {
        conn.create_scalar_function(name, 1, flags, |_| Ok(0i64))?;
    }
    conn.create_scalar_function("pg_size_pretty", 1, flags, |ctx| {
        let Some(bytes) = ctx.get::<Option<i64>>(0)? else {
            return Ok(None);
        };
        let units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
        let (mut value, mut unit) = (bytes as f64, 0);
        while value.abs() >= 10_240.0 && unit + 1 < units.len() {
            value /= 1024.0;
            unit += 1;
        }
        Ok(Some(format!("{} {}", value.round() as i64, units[unit])))
    })?;
    for (name, n) in [
        ("has_table_privilege", 2),
        ("has_table_privilege", 3),
        ("has_schema_privilege", 2),
        ("has_schema_privilege", 3),
        ("has_database_privilege", 2),
        ("has_database_privilege", 3),
        ("has_column_privilege", 3),
        ("has_column_privilege", 4),
        ("has_sequence_privilege", 2),
        ("has_function_privilege", 2),
    ] {
        conn.create_scalar_function(name, n, flags, |_| Ok(true))?;
    }
    let setting = |ctx: &Context<'_>| -> rusqlite::Result<Option<String>> {
        let name: String = ctx.get(0)?;
        let missing_ok = ctx.len() > 1 && ctx.get::<Option<bool>>(1)?.unwrap_or(false);
        match SETTINGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some((_, v)) => Ok(Some(v.to_string())),
            None if missing_ok => Ok(None),
            None => Err(rusqlite::Error::UserFunctionError(
                crate::error::coded_message(
                    crate::error::sqlstate::UNDEFINED_OBJECT,
                    &format!("unrecognized configuration parameter \"{name}\""),
                )
                .into(),
            )),
        }
    };
    // Filled in by `populate` with the objects of the catalog it loads.
    objects(conn, std::sync::Arc::default())?;
    conn.create_scalar_function("current_setting", 1, flags, setting)?;
    conn.create_scalar_function("current_setting", 2, flags, setting)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut stmt = crate::sql::translate::parse(sql).unwrap().pop().unwrap();
        rewrite(&mut stmt);
        stmt.to_string()
    }

    #[test]
    fn catalog_vocabulary_becomes_sqlite() {
        assert_eq!(
            rewritten("SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default"),
            "SELECT c.oid FROM pg_class c WHERE cairn_regex(c.relname, '^(t)$')"
        );
        assert_eq!(
            rewritten("SELECT table_name FROM information_schema.tables WHERE table_schema !~ '^pg_'"),
            "SELECT table_name FROM \"information_schema.tables\" WHERE NOT (cairn_regex(table_schema, '^pg_'))"
        );
        assert_eq!(rewritten("SELECT pg_catalog.version()"), "SELECT version()");
        assert_eq!(
            rewritten("SELECT conrelid::pg_catalog.regclass FROM pg_constraint WHERE confrelid = 't'::regclass"),
            "SELECT cairn_reg_name('regclass', conrelid) FROM pg_constraint WHERE confrelid = cairn_reg_oid('regclass', 't')"
        );
    }

    #[test]
    fn oids_are_stable_and_apart_from_builtins() {
        assert_eq!(oid_of("table", "users"), oid_of("table", "USERS"));
        assert_ne!(oid_of("table", "users"), oid_of("index", "users"));
        assert!(oid_of("table", "t") >= 16_384);
    }

    #[test]
    fn format_type_prints_modifiers() {
        assert_eq!(
            format_type(1043, 24).as_deref(),
            Some("character varying(20)")
        );
        assert_eq!(
            format_type(1700, (10 << 16 | 2) + 4).as_deref(),
            Some("numeric(10,2)")
        );
        assert_eq!(format_type(23, -1).as_deref(), Some("integer"));
    }
}
