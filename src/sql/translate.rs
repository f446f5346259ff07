//! PostgreSQL text in, SQLite text out. Parses with `sqlparser` (PostgreSQL dialect),
//! classifies each statement, infers parameter types from the catalog, rewrites what SQLite
//! spells differently (`$1`, `::` casts, typed literals, ILIKE, IS DISTINCT FROM, serial
//! columns, non-literal defaults), and records DDL in the catalog. What cannot be translated
//! is an error with SQLSTATE 0A000 naming the construct.

use crate::catalog::{Catalog, Column, KeyValue, Table};
use crate::error::{sqlstate, Error, Result};
use crate::limits;
use crate::types::{self, PgType};
use rusqlite::types::Value;
use sqlparser::ast::{
    self, visit_expressions, visit_expressions_mut, visit_relations, AssignmentTarget, CastKind,
    ColumnOption, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    IndexColumn, ObjectName, ObjectNamePart, ObjectType, SelectItem, SetExpr, Statement,
    TableConstraint, Value as AstValue,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// What a statement does, which decides where it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Reads only: a replica's read connection, or the open transaction.
    Read,
    /// Changes rows: the shard's writer.
    Write,
    /// Changes the schema: the catalog and every shard of the table (`sql::ddl`).
    Ddl(Box<DdlAction>),
    /// `EXPLAIN <statement>`: the plan, as rows of text.
    Explain(Box<Translated>),
    Begin,
    Commit,
    Rollback,
    Set {
        name: String,
        value: String,
    },
    Show {
        name: String,
    },
    /// Accepted and ignored (DISCARD, DEALLOCATE, SET TRANSACTION ...): answers with `tag`.
    Noop,
    /// `SAVEPOINT name`, `ROLLBACK TO [SAVEPOINT] name`, `RELEASE [SAVEPOINT] name`.
    Savepoint(SavepointOp, String),
    /// Several statements run as one (`TRUNCATE a, b`): all or nothing.
    Several(Vec<Translated>),
    /// `COPY table [(columns)] FROM STDIN`: rows follow in the copy sub-protocol.
    CopyIn(Box<CopyIn>),
    /// `COPY table [(columns)] | (query) TO STDOUT`: the query's rows as copy data.
    CopyOut(Box<CopyOut>),
    /// `CREATE|ALTER|DROP ROLE|USER`, `GRANT|REVOKE role`: the catalog's users.
    Users(UserAction),
}

/// A change to the catalog's users (`crate::auth`).
#[derive(Debug, Clone, PartialEq)]
pub enum UserAction {
    Create {
        name: String,
        password: Option<String>,
        roles: Vec<String>,
        if_not_exists: bool,
    },
    Password {
        name: String,
        password: String,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
    Grant {
        roles: Vec<String>,
        users: Vec<String>,
        revoke: bool,
    },
}

/// A role or user statement as a [`UserAction`], if `stmt` is one.
fn user_action(stmt: &Statement) -> Result<Option<(UserAction, &'static str)>> {
    use sqlparser::ast::{Action, GranteeName, Password, Privileges, RoleOption};
    let password = |p: &Password| -> Result<Option<String>> {
        match p {
            Password::NullPassword => Ok(None),
            Password::Password(Expr::Value(v)) => match &v.value {
                sqlparser::ast::Value::SingleQuotedString(s) => Ok(Some(s.clone())),
                _ => Err(Error::sql(sqlstate::SYNTAX_ERROR, "a password is a string")),
            },
            Password::Password(_) => {
                Err(Error::sql(sqlstate::SYNTAX_ERROR, "a password is a string"))
            }
        }
    };
    let roles_of = |privileges: &Privileges| -> Option<Vec<String>> {
        match privileges {
            Privileges::Actions(actions) => actions
                .iter()
                .map(|a| match a {
                    Action::Role { role } => Some(object_name(role).to_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let names_of = |grantees: &[sqlparser::ast::Grantee]| -> Vec<String> {
        grantees
            .iter()
            .filter_map(|g| match &g.name {
                Some(GranteeName::ObjectName(n)) => Some(object_name(n)),
                _ => None,
            })
            .collect()
    };
    Ok(Some(match stmt {
        Statement::CreateRole(create) => {
            let name = match create.names.as_slice() {
                [one] => object_name(one),
                _ => return Err(Error::unsupported("CREATE ROLE of several roles at once")),
            };
            let password = match &create.password {
                Some(p) => password(p)?,
                None => None,
            };
            let roles = create
                .in_role
                .iter()
                .chain(&create.in_group)
                .map(|r| r.value.to_lowercase())
                .collect();
            (
                UserAction::Create {
                    name,
                    password,
                    roles,
                    if_not_exists: create.if_not_exists,
                },
                "CREATE ROLE",
            )
        }
        Statement::AlterRole {
            name,
            operation: sqlparser::ast::AlterRoleOperation::WithOptions { options },
        } => {
            let mut new = None;
            for option in options {
                match option {
                    RoleOption::Password(p) => new = password(p)?,
                    RoleOption::Login(true) => {}
                    other => return Err(Error::unsupported(format!("ALTER ROLE ... {other}"))),
                }
            }
            let Some(password) = new else {
                return Err(Error::unsupported("ALTER ROLE without a new PASSWORD"));
            };
            (
                UserAction::Password {
                    name: name.value.to_lowercase(),
                    password,
                },
                "ALTER ROLE",
            )
        }
        Statement::Drop {
            object_type: ObjectType::Role | ObjectType::User,
            if_exists,
            names,
            ..
        } => (
            UserAction::Drop {
                names: names.iter().map(object_name).collect(),
                if_exists: *if_exists,
            },
            "DROP ROLE",
        ),
        Statement::Grant(grant) if grant.objects.is_none() => {
            let Some(roles) = roles_of(&grant.privileges) else {
                return Ok(None);
            };
            (
                UserAction::Grant {
                    roles,
                    users: names_of(&grant.grantees),
                    revoke: false,
                },
                "GRANT ROLE",
            )
        }
        Statement::Revoke(revoke) if revoke.objects.is_none() => {
            let Some(roles) = roles_of(&revoke.privileges) else {
                return Ok(None);
            };
            (
                UserAction::Grant {
                    roles,
                    users: names_of(&revoke.grantees),
                    revoke: true,
                },
                "REVOKE ROLE",
            )
        }
        _ => return Ok(None),
    }))
}

/// PostgreSQL grants a role with `GRANT readonly TO ann`; sqlparser reads role grants as
/// `GRANT ROLE readonly TO ann`: put the ROLE in where a built-in role's name follows GRANT
/// or REVOKE. (`CREATE USER` is `CREATE ROLE ... LOGIN` to PostgreSQL and is read as that.)
fn role_grants(tokens: &mut Vec<sqlparser::tokenizer::TokenWithSpan>) {
    use sqlparser::keywords::Keyword as K;
    use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};
    let mut i = 0;
    while i < tokens.len() {
        let is = |t: &TokenWithSpan, k: K| matches!(&t.token, Token::Word(w) if w.keyword == k);
        if is(&tokens[i], K::GRANT) || is(&tokens[i], K::REVOKE) {
            let next =
                (i + 1..tokens.len()).find(|j| !matches!(tokens[*j].token, Token::Whitespace(_)));
            let names_role = next.is_some_and(|j| {
                matches!(&tokens[j].token, Token::Word(w)
                    if crate::auth::ROLES.contains(&w.value.to_lowercase().as_str()) && w.quote_style.is_none())
            });
            if names_role {
                tokens.insert(
                    i + 1,
                    TokenWithSpan::wrap(Token::Whitespace(Whitespace::Space)),
                );
                tokens.insert(i + 1, TokenWithSpan::wrap(Token::make_keyword("ROLE")));
                tokens.insert(
                    i + 1,
                    TokenWithSpan::wrap(Token::Whitespace(Whitespace::Space)),
                );
            }
        }
        i += 1;
    }
}

/// `CREATE USER` is PostgreSQL's `CREATE ROLE ... LOGIN`; sqlparser reads the former as
/// Snowflake's: make it the latter.
fn create_user_as_role(tokens: &mut [sqlparser::tokenizer::TokenWithSpan]) {
    use sqlparser::keywords::Keyword as K;
    use sqlparser::tokenizer::Token;
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|j| !matches!(tokens[*j].token, Token::Whitespace(_)))
        .collect();
    for pair in significant.windows(2) {
        let kw = |j: usize| match &tokens[j].token {
            Token::Word(w) => Some(w.keyword),
            _ => None,
        };
        if kw(pair[0]) == Some(K::CREATE) && kw(pair[1]) == Some(K::USER) {
            tokens[pair[1]].token = Token::make_keyword("ROLE");
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyOut {
    /// The rows to send: `SELECT columns FROM table`, or the query given.
    pub query: Translated,
    pub options: super::copy::Options,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyIn {
    pub table: String,
    /// Target columns; empty for all, in table order.
    pub columns: Vec<String>,
    pub options: super::copy::Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointOp {
    Set,
    RollbackTo,
    Release,
}

/// A schema change, as the catalog and the shards need it.
#[derive(Debug, Clone, PartialEq)]
pub enum DdlAction {
    CreateTable(Box<CreateTable>),
    DropTables {
        names: Vec<String>,
        if_exists: bool,
        /// Views over the tables are dropped with them (else their presence is an error).
        cascade: bool,
    },
    CreateIndex {
        table: String,
        name: String,
        /// SQLite `CREATE INDEX`.
        sql: String,
        if_not_exists: bool,
        /// The indexed columns of a unique index (or constraint).
        unique: Option<Vec<String>>,
    },
    DropIndexes {
        names: Vec<String>,
        if_exists: bool,
    },
    AlterTable {
        table: String,
        /// SQLite `ALTER TABLE` statements.
        sql: String,
        added: Vec<Column>,
    },
    /// ALTER TABLE changes SQLite cannot make in place (`ALTER COLUMN ...`, `DROP COLUMN`,
    /// `ADD CONSTRAINT ... FOREIGN KEY / CHECK`): each shard rebuilds the table.
    Rebuild {
        table: String,
        changes: Vec<AlterChange>,
    },
    /// `CREATE [OR REPLACE] VIEW name [(columns)] AS query`. `columns` (names and types) are
    /// filled in by the session, which describes the query.
    CreateView {
        name: String,
        or_replace: bool,
        query: String,
        /// The names the statement gives the columns (empty: the query's own).
        names: Vec<String>,
        columns: Vec<Column>,
        query_columns: Vec<String>,
    },
    /// `CREATE SEQUENCE`.
    CreateSequence {
        sequence: crate::catalog::Sequence,
        if_not_exists: bool,
    },
    /// `DROP VIEW` / `DROP SEQUENCE`: (kind "view" or "sequence", names).
    DropObjects {
        kind: &'static str,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    /// `ALTER TABLE t SET (replication_factor = n)`: replicas of every shard the table is on.
    SetReplicationFactor {
        table: String,
        factor: u32,
    },
    /// `ALTER TABLE t SET (cache_ttl = '60s')`; None turns the table's cache off.
    SetCacheTtl {
        table: String,
        ttl: Option<std::time::Duration>,
    },
    /// `COMMENT ON kind name IS 'text' | NULL`.
    Comment {
        kind: &'static str,
        name: String,
        text: Option<String>,
    },
    /// Citus's `create_distributed_table('t', 'col', colocate_with => 'u', shard_count => n)`
    /// and `create_reference_table('t')` (column None): lay an empty table out anew.
    Distribute {
        table: String,
        column: Option<String>,
        colocate_with: Option<String>,
        shard_count: Option<u32>,
    },
}

/// One change of an ALTER TABLE that rebuilds the table (see `ddl::plan_rebuild`).
/// Expressions are already SQLite's.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterChange {
    AddColumn {
        def: Box<ast::ColumnDef>,
        column: Column,
    },
    DropColumn {
        name: String,
        if_exists: bool,
    },
    NotNull {
        column: String,
        not_null: bool,
    },
    Default {
        column: String,
        default: Option<Box<Expr>>,
    },
    /// A new type (its column definition's type and checks), the value converted by
    /// `using` (over the old column) or by an assignment cast.
    Type {
        column: Column,
        data_type: Box<DataType>,
        using: Option<Box<Expr>>,
    },
    ForeignKey {
        key: ForeignKey,
        constraint: Box<TableConstraint>,
    },
    Check(Box<TableConstraint>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub table: String,
    pub referred: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionBy {
    List(String),
    Hash(String),
}

/// `CREATE TABLE t PARTITION OF parent FOR VALUES IN (...) | DEFAULT
/// [WITH (zones = '...', replication_factor = n)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionOf {
    pub parent: String,
    /// None for the DEFAULT partition.
    pub values: Option<Vec<KeyValue>>,
    pub zones: Vec<String>,
    /// Replicas of the partition's shard (in its zones); None: the cluster's default.
    pub replication_factor: Option<u32>,
}

/// A translated `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub name: String,
    pub if_not_exists: bool,
    pub columns: Vec<Column>,
    /// The statement as SQLite runs it (partition and WITH clauses removed).
    pub ast: Box<ast::CreateTable>,
    pub primary_key: Vec<String>,
    /// Column sets of every PRIMARY KEY and UNIQUE constraint.
    pub uniques: Vec<Vec<String>>,
    pub references: Vec<ForeignKey>,
    /// The serial column, if any (always the single-column primary key).
    pub serial: Option<String>,
    /// An identity column (numbered as the serial column).
    pub identity: Option<crate::catalog::Identity>,
    pub partition_by: Option<PartitionBy>,
    pub partition_of: Option<PartitionOf>,
    /// `WITH (shard_count = n)`.
    pub shard_count: Option<u32>,
    /// `WITH (colocate_with = 'table')`.
    pub colocate_with: Option<String>,
    /// `WITH (cache_ttl = '60s')`: results of queries over it may be cached this long.
    pub cache_ttl: Option<std::time::Duration>,
    /// `WITH (replication_factor = n)`: replicas of each of its shards.
    pub replication_factor: Option<u32>,
}

impl CreateTable {
    /// The SQLite statement, without the foreign keys naming `dropped` tables.
    pub fn sqlite_sql(&self, dropped: &[String]) -> String {
        let mut ast = (*self.ast).clone();
        let named = |n: &ObjectName| {
            dropped
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&object_name(n)))
        };
        for col in ast.columns.iter_mut() {
            col.options.retain(
                |o| !matches!(&o.option, ColumnOption::ForeignKey(fk) if named(&fk.foreign_table)),
            );
        }
        ast.constraints
            .retain(|c| !matches!(c, TableConstraint::ForeignKey(fk) if named(&fk.foreign_table)));
        Statement::CreateTable(ast).to_string()
    }
}

/// One translated statement, ready to bind and run.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub kind: Kind,
    /// SQLite SQL (empty for session statements).
    pub sql: String,
    /// The statement as SQLite will run it (after rewriting), for the planner. Present for
    /// Read and Write.
    pub stmt: Option<Box<Statement>>,
    /// One type per `$n` placeholder, by position.
    pub param_types: Vec<PgType>,
    /// Result column types inferred from the statement text, by position, where SQLite cannot
    /// say (expressions). `None` where unknown or where SQLite's column origin is better.
    pub expr_types: Vec<Option<PgType>>,
    /// The numeric display scale of each result column, where the statement fixes one
    /// (a numeric(10,2) column prints 12.50, not 12.5).
    pub expr_scales: Vec<Option<u32>>,
    /// The command tag's verb: `INSERT`, `SELECT`, `CREATE TABLE`, ...
    pub tag: String,
}

pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    if sql.len() > limits::SQL_TEXT_BYTES_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "statement text of {} bytes exceeds the limit of {} bytes",
                sql.len(),
                limits::SQL_TEXT_BYTES_MAX
            ),
        ));
    }
    let sql = normalize(sql);
    let tokens = sqlparser::tokenizer::Tokenizer::new(&PostgreSqlDialect {}, &sql)
        .tokenize_with_location()
        .map_err(|e| Error::sql(sqlstate::SYNTAX_ERROR, e.to_string()))?;
    check_operator_runs(&tokens)?;
    let mut tokens = tokens;
    sequence_options_in_order(&mut tokens);
    role_grants(&mut tokens);
    create_user_as_role(&mut tokens);
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(200)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| {
            let message = e.to_string();
            let message = message
                .strip_prefix("sql parser error: ")
                .unwrap_or(&message)
                .to_string();
            if message.contains("recursion limit") {
                Error::sql(sqlstate::STATEMENT_TOO_COMPLEX, message)
            } else {
                Error::sql(sqlstate::SYNTAX_ERROR, message)
            }
        })
}

/// One SQL expression over a row (a subscription's condition): all of `text`, without
/// subqueries. Answered as the parsed expression, to be printed into a statement.
pub fn parse_condition(text: &str) -> Result<Expr> {
    let invalid = |m: String| Error::sql(sqlstate::SYNTAX_ERROR, m);
    if text.len() > limits::SQL_TEXT_BYTES_MAX {
        return Err(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            "the condition is too long",
        ));
    }
    let text = normalize(text);
    let mut parser = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(200)
        .try_with_sql(&text)
        .map_err(|e| invalid(e.to_string()))?;
    let expr = parser.parse_expr().map_err(|e| invalid(e.to_string()))?;
    let rest = parser.peek_token();
    if rest.token != sqlparser::tokenizer::Token::EOF {
        return Err(invalid(format!(
            "the condition must be one expression; found {} after it",
            rest.token
        )));
    }
    let mut subquery = false;
    let _ = visit_expressions(&expr, |e| {
        if matches!(
            e,
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. }
        ) {
            subquery = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if subquery {
        return Err(Error::sql(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a subscription's condition is on the row alone: no subqueries",
        ));
    }
    Ok(expr)
}

/// A string literal compared with a column is a value of the column's type, as in
/// PostgreSQL (an untyped literal takes the type of what it is compared with): `b = 't'`
/// for a boolean, an upper-case uuid, `ts > '2026-06-01T00:00:00Z'` in ISO form all compare
/// as values, not as text against the stored form — and `int_col = 'abc'` is 22P02. In
/// comparisons, IN lists and BETWEEN, anywhere in the statement. A column name found in
/// several of the statement's tables with different types is left alone.
fn coerce_compared_literals(stmt: &mut Statement, tables: &[&Table]) -> Result<()> {
    use sqlparser::ast::{BinaryOperator as B, VisitMut, VisitorMut};
    struct Coercer<'a> {
        tables: &'a [&'a Table],
    }
    impl Coercer<'_> {
        fn column_type(&self, e: &Expr) -> Option<PgType> {
            let name = match e {
                Expr::Identifier(i) => ident_name(i),
                Expr::CompoundIdentifier(parts) => ident_name(parts.last()?),
                Expr::Nested(inner) => return self.column_type(inner),
                // An array or interval expression types a literal compared with it too.
                _ => {
                    return expr_type(e, self.tables)
                        .filter(|t| t.is_array() || *t == PgType::Interval)
                }
            };
            let mut found = self
                .tables
                .iter()
                .filter_map(|t| t.column(&name))
                .map(|c| c.ty);
            let ty = found.next()?;
            if found.any(|other| other != ty) {
                return None;
            }
            // Text columns compare a literal as text already.
            (!matches!(
                ty,
                PgType::Text | PgType::Varchar | PgType::Bpchar | PgType::Unknown
            ))
            .then_some(ty)
        }

        fn coerce(e: &mut Expr, ty: PgType) -> Result<()> {
            let Expr::Value(v) = &*e else {
                return Ok(());
            };
            let (AstValue::SingleQuotedString(text) | AstValue::EscapedStringLiteral(text)) =
                &v.value
            else {
                return Ok(());
            };
            *e = literal_expr(&types::coerce(Value::Text(text.clone()), ty)?);
            Ok(())
        }
    }
    impl VisitorMut for Coercer<'_> {
        type Break = Error;
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<Error> {
            let result = match e {
                Expr::BinaryOp {
                    left,
                    op: B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq,
                    right,
                } => match (self.column_type(left), self.column_type(right)) {
                    (Some(ty), None) => Self::coerce(right, ty),
                    (None, Some(ty)) => Self::coerce(left, ty),
                    _ => Ok(()),
                },
                Expr::InList { expr, list, .. } => match self.column_type(expr) {
                    Some(ty) => list.iter_mut().try_for_each(|item| Self::coerce(item, ty)),
                    None => Ok(()),
                },
                Expr::Between {
                    expr, low, high, ..
                } => match self.column_type(expr) {
                    Some(ty) => Self::coerce(low, ty).and_then(|()| Self::coerce(high, ty)),
                    None => Ok(()),
                },
                _ => Ok(()),
            };
            match result {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            }
        }
    }
    match stmt.visit(&mut Coercer { tables }) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// PostgreSQL sorts NULL above every value (NULLS LAST ascending, NULLS FIRST descending);
/// SQLite below. Every ORDER BY that does not say gets PostgreSQL's order spelled out — in
/// queries, window definitions and ordered aggregates — so shards and the coordinator's
/// merge sort alike.
fn postgres_null_order(stmt: &mut Statement) {
    use sqlparser::ast::{OrderByExpr, OrderByKind, OrderBySort, VisitMut, VisitorMut};
    fn fix(items: &mut [OrderByExpr]) {
        for item in items {
            if item.options.nulls_first.is_none() {
                let desc = matches!(item.options.sort, Some(OrderBySort::Desc));
                item.options.nulls_first = Some(desc);
            }
        }
    }
    struct Fixer;
    impl VisitorMut for Fixer {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut sqlparser::ast::Query) -> ControlFlow<()> {
            if let Some(OrderByKind::Expressions(items)) = q.order_by.as_mut().map(|o| &mut o.kind)
            {
                fix(items);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if let Some(sqlparser::ast::WindowType::WindowSpec(spec)) = f.over.as_mut() {
                    fix(&mut spec.order_by);
                }
                if let sqlparser::ast::FunctionArguments::List(list) = &mut f.args {
                    for clause in &mut list.clauses {
                        if let sqlparser::ast::FunctionArgumentClause::OrderBy(items) = clause {
                            fix(items);
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Fixer);
}

/// Views named in FROM become the subqueries they stand for (`FROM v AS a` → `FROM
/// (query) AS a`), views over views too, before anything else looks at the statement. A
/// view with its own column names renames its query's columns. Writing into a view is
/// refused.
fn expand_views(stmt: &mut Statement, catalog: &Catalog) -> Result<()> {
    use ast::{VisitMut, VisitorMut};
    if catalog.views().next().is_none() {
        return Ok(());
    }
    let target = match &*stmt {
        Statement::Insert(i) => match &i.table {
            ast::TableObject::TableName(n) => Some(object_name(n)),
            _ => None,
        },
        Statement::Update(u) => match &u.table.relation {
            ast::TableFactor::Table { name, .. } => Some(object_name(name)),
            _ => None,
        },
        Statement::Delete(d) => match &d.from {
            ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => {
                t.first().and_then(|t| match &t.relation {
                    ast::TableFactor::Table { name, .. } => Some(object_name(name)),
                    _ => None,
                })
            }
        },
        _ => None,
    };
    if let Some(v) = target.filter(|t| catalog.view(t).is_some()) {
        return Err(Error::unsupported(format!(
            "writing into view \"{v}\" (write into its tables)"
        )));
    }
    struct Expander<'a> {
        catalog: &'a Catalog,
        ctes: std::collections::BTreeSet<String>,
        failure: Option<Error>,
        expanded: usize,
    }
    impl VisitorMut for Expander<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
            let ast::TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } = factor
            else {
                return ControlFlow::Continue(());
            };
            let n = object_name(name);
            if self.ctes.contains(&n) {
                return ControlFlow::Continue(());
            }
            let Some(view) = self.catalog.view(&n) else {
                return ControlFlow::Continue(());
            };
            self.expanded += 1;
            if self.expanded > 64 {
                self.failure = Some(Error::sql(
                    sqlstate::STATEMENT_TOO_COMPLEX,
                    "views nested more than 64 deep (or defined in a cycle)",
                ));
                return ControlFlow::Break(());
            }
            let renamed = view
                .columns
                .iter()
                .zip(&view.query_columns)
                .any(|(c, q)| c.name != *q);
            let sql = if renamed {
                let items: Vec<String> = view
                    .columns
                    .iter()
                    .zip(&view.query_columns)
                    .map(|(c, q)| {
                        format!(
                            "\"_cairn_v\".{} AS {}",
                            quote_ident(q),
                            quote_ident(&c.name)
                        )
                    })
                    .collect();
                format!(
                    "SELECT {} FROM ({}) AS \"_cairn_v\"",
                    items.join(", "),
                    view.query
                )
            } else {
                view.query.clone()
            };
            let query = match parse(&sql).map(|mut v| v.pop()) {
                Ok(Some(Statement::Query(q))) => q,
                Ok(_) => {
                    self.failure = Some(Error::Corrupt(format!("view {n} is not a query")));
                    return ControlFlow::Break(());
                }
                Err(e) => {
                    self.failure = Some(e);
                    return ControlFlow::Break(());
                }
            };
            let alias = alias.clone().unwrap_or(ast::TableAlias {
                explicit: true,
                name: Ident::with_quote('"', &view.name),
                columns: vec![],
                at: None,
            });
            *factor = ast::TableFactor::Derived {
                lateral: false,
                subquery: query,
                alias: Some(alias),
                sample: None,
            };
            // The new subquery is visited next: views inside it expand in turn.
            ControlFlow::Continue(())
        }
    }
    let mut expander = Expander {
        catalog,
        ctes: super::plan::cte_names(stmt),
        failure: None,
        expanded: 0,
    };
    let _ = stmt.visit(&mut expander);
    expander.failure.map_or(Ok(()), Err)
}

/// `t.col[1]` parses as field access on `t` (`.col`, then `[1]`): fold the dots into a
/// qualified column name, so what remains is a subscript of a column.
fn fold_field_access(stmt: &mut Statement) {
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::CompoundFieldAccess { root, access_chain } = e {
            let dots = access_chain
                .iter()
                .take_while(|a| matches!(a, ast::AccessExpr::Dot(Expr::Identifier(_))))
                .count();
            if dots > 0 {
                let mut parts = match root.as_ref() {
                    Expr::Identifier(i) => vec![i.clone()],
                    Expr::CompoundIdentifier(p) => p.clone(),
                    _ => return ControlFlow::<()>::Continue(()),
                };
                for a in access_chain.drain(..dots) {
                    if let ast::AccessExpr::Dot(Expr::Identifier(i)) = a {
                        parts.push(i);
                    }
                }
                **root = Expr::CompoundIdentifier(parts);
                if access_chain.is_empty() {
                    *e = (**root).clone();
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Refuse a statement with more than `limits::EXPRESSION_OPERATORS_MAX` binary operators in
/// a row at one nesting level (`1+1+...+1`, `a = 1 OR a = 2 OR ...`). The parser builds
/// such a chain iteratively into a left-deep tree, so its recursion limit never sees it;
/// but cloning, visiting and dropping the tree recurse once per operator, and a few
/// hundred thousand of them overflow a thread's stack and kill the node. Parentheses start
/// a new count (their depth is the parser's recursion limit), and so does a comma.
fn check_operator_runs(tokens: &[sqlparser::tokenizer::TokenWithSpan]) -> Result<()> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::Token;
    let mut runs = vec![0usize];
    for t in tokens {
        let depth = runs.len();
        let top = runs.last_mut().expect("the outermost level stays");
        match &t.token {
            Token::LParen | Token::LBracket => runs.push(0),
            Token::RParen | Token::RBracket if depth > 1 => {
                runs.pop();
            }
            Token::Comma | Token::SemiColon => *top = 0,
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Caret
            | Token::Ampersand
            | Token::Pipe
            | Token::DoubleColon => *top += 1,
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => *top += 1,
            _ => {}
        }
        if runs
            .last()
            .is_some_and(|n| *n > limits::EXPRESSION_OPERATORS_MAX)
        {
            return Err(Error::sql(
                sqlstate::STATEMENT_TOO_COMPLEX,
                format!(
                    "expression too complex: more than {} operators in a row (use IN (...) or parentheses)",
                    limits::EXPRESSION_OPERATORS_MAX
                ),
            ));
        }
    }
    Ok(())
}

/// PostgreSQL syntax the parser does not take, rewritten to what it does (for tools such as
/// pgbench): `VACUUM` with any options (a no-op here, so the options do not matter), and
/// COPY's boolean options spelled `on`/`off`.
fn normalize(sql: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = sql.trim_start();
    let first: String = trimmed
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    let body = trimmed.trim_end().trim_end_matches(';');
    match first.as_str() {
        "vacuum" if !body.contains(';') => "VACUUM".into(),
        "copy" => {
            // `freeze on` -> `freeze true`, and the same for header / off.
            let lower = sql.to_ascii_lowercase();
            let mut edits = Vec::new();
            for word in ["freeze", "header"] {
                let mut at = 0;
                while let Some(i) = lower[at..].find(word).map(|i| at + i) {
                    at = i + word.len();
                    let after = &lower[at..];
                    let value = after.trim_start();
                    let start = at + (after.len() - value.len());
                    let end = start
                        + value
                            .find(|c: char| !c.is_ascii_alphanumeric())
                            .unwrap_or(value.len());
                    let replacement = match &lower[start..end] {
                        "on" if start > at => "true",
                        "off" if start > at => "false",
                        _ => continue,
                    };
                    edits.push((start, end, replacement));
                }
            }
            if edits.is_empty() {
                return sql.into();
            }
            edits.sort();
            let mut out = String::with_capacity(sql.len());
            let mut copied = 0;
            for (start, end, replacement) in edits {
                out.push_str(&sql[copied..start]);
                out.push_str(replacement);
                copied = end;
            }
            out.push_str(&sql[copied..]);
            out.into()
        }
        _ => sql.into(),
    }
}

/// `CREATE SEQUENCE s INCREMENT 5 START 10 MAXVALUE 100`: PostgreSQL takes the options in
/// any order, the parser in one (AS, INCREMENT, MINVALUE, MAXVALUE, START, CACHE, CYCLE,
/// OWNED BY): put each such statement's option tokens in it.
fn sequence_options_in_order(tokens: &mut [sqlparser::tokenizer::TokenWithSpan]) {
    use sqlparser::keywords::Keyword as K;
    use sqlparser::tokenizer::Token;
    let keyword = |t: &sqlparser::tokenizer::TokenWithSpan| match &t.token {
        Token::Word(w) => Some(w.keyword),
        _ => None,
    };
    let significant =
        |t: &sqlparser::tokenizer::TokenWithSpan| !matches!(t.token, Token::Whitespace(_));
    let mut i = 0;
    while i < tokens.len() {
        // CREATE [TEMP|TEMPORARY] SEQUENCE [IF NOT EXISTS] name
        let words: Vec<usize> = (i..tokens.len())
            .filter(|j| significant(&tokens[*j]))
            .take(8)
            .collect();
        let at = |n: usize| words.get(n).and_then(|j| keyword(&tokens[*j]));
        if at(0) != Some(K::CREATE) {
            i += 1;
            continue;
        }
        let mut n = 1;
        if matches!(at(n), Some(K::TEMP | K::TEMPORARY)) {
            n += 1;
        }
        if at(n) != Some(K::SEQUENCE) {
            i += 1;
            continue;
        }
        n += 1;
        if at(n) == Some(K::IF) {
            n += 3;
        }
        let Some(&name) = words.get(n) else {
            return;
        };
        let start = name + 1;
        let end = (start..tokens.len())
            .find(|j| matches!(tokens[*j].token, Token::SemiColon))
            .unwrap_or(tokens.len());
        const ORDER: [K; 8] = [
            K::AS,
            K::INCREMENT,
            K::MINVALUE,
            K::MAXVALUE,
            K::START,
            K::CACHE,
            K::CYCLE,
            K::OWNED,
        ];
        let mut clauses: Vec<(usize, Vec<sqlparser::tokenizer::TokenWithSpan>)> = Vec::new();
        let mut j = start;
        let mut ok = true;
        while j < end {
            let t = &tokens[j];
            let k = keyword(t).filter(|_| significant(t));
            let rank = match k {
                Some(K::NO) => (j + 1..end)
                    .find(|x| significant(&tokens[*x]))
                    .and_then(|x| keyword(&tokens[x]))
                    .and_then(|k| ORDER.iter().position(|o| *o == k)),
                Some(k) => ORDER.iter().position(|o| *o == k),
                None => None,
            };
            // `NO MINVALUE` is one clause: the word after NO does not start another.
            let after_no = clauses
                .last()
                .and_then(|(_, c)| c.iter().rev().find(|t| significant(t)))
                .is_some_and(|t| keyword(t) == Some(K::NO));
            match rank {
                Some(r) if !after_no => clauses.push((r, vec![t.clone()])),
                _ => match clauses.last_mut() {
                    Some((_, c)) => c.push(t.clone()),
                    None if !significant(t) => {}
                    None => {
                        // A word before any option: not ours to reorder.
                        ok = false;
                        break;
                    }
                },
            }
            j += 1;
        }
        if ok && !clauses.is_empty() {
            // The parser skips whitespace tokens, so only the words' order matters.
            clauses.sort_by_key(|(r, _)| *r);
            let mut sorted: Vec<_> = tokens[start..end]
                .iter()
                .take_while(|t| !significant(t))
                .cloned()
                .collect();
            sorted.extend(clauses.into_iter().flat_map(|(_, c)| c));
            if sorted.len() == end - start {
                tokens[start..end].clone_from_slice(&sorted);
            }
        }
        i = end;
    }
}

pub fn ident_name(ident: &Ident) -> String {
    // PostgreSQL folds unquoted identifiers to lower case.
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The unqualified object name (`public.users` → `users`).
pub fn object_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => ident_name(i),
        _ => name.to_string(),
    }
}

fn is_internal(name: &str) -> bool {
    let n = name.to_lowercase();
    n.starts_with("_cairn") || n.starts_with("sqlite_")
}

/// The PostgreSQL type a declared type names, or a 0A000 error.
pub fn declared_type(data_type: &DataType) -> Result<PgType> {
    let text = data_type.to_string();
    PgType::parse_declared(&text).ok_or_else(|| Error::unsupported(format!("type {text}")))
}

fn serial_kind(data_type: &DataType) -> Option<PgType> {
    match data_type.to_string().to_lowercase().as_str() {
        "serial" | "serial4" => Some(PgType::Int4),
        "bigserial" | "serial8" => Some(PgType::Int8),
        "smallserial" | "serial2" => Some(PgType::Int2),
        _ => None,
    }
}

fn sqlite_type(name: &str) -> DataType {
    DataType::Custom(ObjectName::from(vec![Ident::new(name)]), vec![])
}

/// The 0-based index of a `$n` (or, after rewriting, `?n`) placeholder.
pub fn placeholder_index(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            AstValue::Placeholder(p) => p
                .strip_prefix('$')
                .or_else(|| p.strip_prefix('?'))?
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| n - 1),
            _ => None,
        },
        Expr::Nested(e) => placeholder_index(e),
        _ => None,
    }
}

/// Tables a statement names that the catalog knows.
fn scope<'c>(stmt: &Statement, catalog: &'c Catalog) -> Vec<&'c Table> {
    let mut tables = Vec::new();
    let _ = visit_relations(stmt, |name| {
        if let Some(t) = catalog.table(&object_name(name)) {
            if !tables.iter().any(|x: &&Table| x.name == t.name) {
                tables.push(t);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    tables
}

fn column_type(expr: &Expr, tables: &[&Table]) -> Option<PgType> {
    column_ref(expr, tables).map(|c| c.ty)
}

/// The catalog column an expression names, if it is a (possibly qualified) column name.
fn column_ref<'t>(expr: &Expr, tables: &[&'t Table]) -> Option<&'t Column> {
    let (table, column) = match expr {
        Expr::Identifier(i) => (None, ident_name(i)),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => (
            Some(ident_name(&parts[parts.len() - 2])),
            ident_name(&parts[parts.len() - 1]),
        ),
        Expr::Nested(e) => return column_ref(e, tables),
        _ => return None,
    };
    let exact = table
        .as_ref()
        .and_then(|t| tables.iter().find(|x| x.name.eq_ignore_ascii_case(t)));
    match exact {
        Some(t) => t.column(&column),
        None => tables.iter().find_map(|t| t.column(&column)),
    }
}

/// The column of `table` an INSERT's column list names.
pub(crate) fn column_of<'t>(table: &'t Table, name: &ObjectName) -> Option<&'t Column> {
    table.column(&object_name(name))
}

/// The numeric display scale PostgreSQL would give an expression's result, where the
/// statement says: a numeric(p, s) column's s, a literal's digits, a cast's modifier, and
/// the scales + - * and the aggregates derive from them.
pub(crate) fn expr_scale(expr: &Expr, tables: &[&Table]) -> Option<u32> {
    use ast::BinaryOperator as B;
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            let c = column_ref(expr, tables)?;
            match c.ty {
                PgType::Int2 | PgType::Int4 | PgType::Int8 => Some(0),
                PgType::Numeric => c.typmod.and_then(|m| m.scale()),
                _ => None,
            }
        }
        Expr::Nested(e) => expr_scale(e, tables),
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _) if !n.contains(['e', 'E']) => {
                Some(n.split_once('.').map_or(0, |(_, f)| f.len() as u32))
            }
            _ => None,
        },
        Expr::Cast { data_type, .. } => {
            let ty = PgType::parse_declared(&data_type.to_string())?;
            match ty {
                PgType::Int2 | PgType::Int4 | PgType::Int8 => Some(0),
                _ => types::Typmod::of_declared(&data_type.to_string(), ty)
                    .ok()
                    .flatten()
                    .and_then(|m| m.scale()),
            }
        }
        Expr::UnaryOp { expr, .. } => expr_scale(expr, tables),
        Expr::BinaryOp { left, op, right } => {
            let (l, r) = (expr_scale(left, tables)?, expr_scale(right, tables)?);
            match op {
                B::Plus | B::Minus => Some(l.max(r)),
                B::Multiply => Some(l + r),
                _ => None,
            }
        }
        Expr::Extract { field, expr, .. } => {
            let date = expr_type(expr, tables) == Some(PgType::Date);
            match field.to_string().to_ascii_lowercase().as_str() {
                "second" | "seconds" => Some(6),
                "epoch" if !date => Some(6),
                "milliseconds" => Some(3),
                _ => Some(0),
            }
        }
        Expr::Function(f) => {
            let args = function_args(f);
            match function_name(f).as_str() {
                "sum" | "min" | "max" | "abs" | "coalesce" | "greatest" | "least" | "nullif" => {
                    expr_scale(args.first()?, tables)
                }
                "round" | "trunc" => match args.get(1) {
                    None => Some(0),
                    Some(n) => match literal_value(n) {
                        Some(Value::Integer(n)) if n >= 0 => Some(n as u32),
                        _ => None,
                    },
                },
                "ceil" | "ceiling" | "floor" => Some(0),
                _ => None,
            }
        }
        _ => None,
    }
}

pub(crate) fn function_name(f: &ast::Function) -> String {
    object_name(&f.name)
}

pub(crate) fn function_args(f: &ast::Function) -> Vec<&Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                FunctionArg::Named {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                }
                | FunctionArg::ExprNamed {
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn is_moment(t: Option<PgType>) -> bool {
    matches!(
        t,
        Some(PgType::Date | PgType::Timestamp | PgType::Timestamptz)
    )
}

fn is_number(t: Option<PgType>) -> bool {
    matches!(
        t,
        Some(
            PgType::Int2
                | PgType::Int4
                | PgType::Int8
                | PgType::Numeric
                | PgType::Float4
                | PgType::Float8
        )
    )
}

/// The type of `a op b` where intervals, timestamps or arrays are involved.
fn interval_or_array_result(
    l: Option<PgType>,
    op: &ast::BinaryOperator,
    r: Option<PgType>,
) -> Option<PgType> {
    use ast::BinaryOperator as B;
    let interval = Some(PgType::Interval);
    match op {
        B::Plus | B::Minus if is_moment(l) && r == interval => match l {
            Some(PgType::Date) => Some(PgType::Timestamp),
            other => other,
        },
        B::Plus if l == interval && is_moment(r) => match r {
            Some(PgType::Date) => Some(PgType::Timestamp),
            other => other,
        },
        B::Minus if matches!(l, Some(PgType::Timestamp | PgType::Timestamptz)) && is_moment(r) => {
            interval
        }
        B::Plus | B::Minus if l == interval && r == interval => interval,
        B::Multiply if (l == interval && is_number(r)) || (is_number(l) && r == interval) => {
            interval
        }
        B::Divide if l == interval && is_number(r) => interval,
        B::StringConcat if l.is_some_and(PgType::is_array) => l,
        B::StringConcat if r.is_some_and(PgType::is_array) => r,
        _ => None,
    }
}

/// The PostgreSQL type of an expression, where the text says (before rewriting).
pub(crate) fn expr_type(expr: &Expr, tables: &[&Table]) -> Option<PgType> {
    use ast::BinaryOperator as B;
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => column_type(expr, tables),
        Expr::Nested(e) => expr_type(e, tables),
        Expr::Interval(_) => Some(PgType::Interval),
        Expr::Array(a) => a
            .elem
            .iter()
            .find_map(|e| expr_type(e, tables))
            .or(Some(PgType::Text))
            .and_then(PgType::array),
        Expr::CompoundFieldAccess { root, access_chain } => {
            let ty = expr_type(root, tables)?;
            match access_chain.as_slice() {
                [ast::AccessExpr::Subscript(ast::Subscript::Index { .. })] => ty.element(),
                [ast::AccessExpr::Subscript(ast::Subscript::Slice { .. })] => Some(ty),
                _ => None,
            }
        }
        Expr::AnyOp { .. } | Expr::AllOp { .. } => Some(PgType::Bool),
        Expr::Cast { data_type, .. } => PgType::parse_declared(&data_type.to_string()),
        Expr::TypedString(t) => PgType::parse_declared(&t.data_type.to_string()),
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _) if n.parse::<i32>().is_ok() => Some(PgType::Int4),
            AstValue::Number(n, _) if n.parse::<i64>().is_ok() => Some(PgType::Int8),
            AstValue::Number(_, _) => Some(PgType::Numeric),
            AstValue::Boolean(_) => Some(PgType::Bool),
            AstValue::SingleQuotedString(_) => Some(PgType::Text),
            _ => None,
        },
        Expr::BinaryOp { left, op, right } => {
            if matches!(
                op,
                B::Eq
                    | B::NotEq
                    | B::Lt
                    | B::LtEq
                    | B::Gt
                    | B::GtEq
                    | B::And
                    | B::Or
                    | B::AtArrow
                    | B::ArrowAt
                    | B::PGOverlap
            ) {
                return Some(PgType::Bool);
            }
            // Each side typed once: a chain of n operators costs n steps, not 2^n.
            let (l, r) = (expr_type(left, tables), expr_type(right, tables));
            if let Some(t) = interval_or_array_result(l, op, r) {
                return Some(t);
            }
            match op {
                B::StringConcat => Some(PgType::Text),
                B::PGExp => {
                    let integral_or_numeric = |t: Option<PgType>| {
                        matches!(
                            t,
                            Some(PgType::Numeric | PgType::Int2 | PgType::Int4 | PgType::Int8)
                        )
                    };
                    let numeric = integral_or_numeric(l)
                        && integral_or_numeric(r)
                        && (l == Some(PgType::Numeric) || r == Some(PgType::Numeric));
                    Some(if numeric {
                        PgType::Numeric
                    } else {
                        PgType::Float8
                    })
                }
                B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo => {
                    match (l, r, op) {
                        (Some(PgType::Date), Some(PgType::Date), B::Minus) => {
                            return Some(PgType::Int4)
                        }
                        (Some(PgType::Date), _, B::Plus | B::Minus)
                        | (_, Some(PgType::Date), B::Plus) => return Some(PgType::Date),
                        _ => {}
                    }
                    [l, r]
                        .into_iter()
                        .flatten()
                        .max_by_key(|t| numeric_rank(*t))
                }
                _ => None,
            }
        }
        Expr::UnaryOp {
            op: ast::UnaryOperator::Not,
            ..
        } => Some(PgType::Bool),
        Expr::UnaryOp { expr, .. } => expr_type(expr, tables),
        Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::InList { .. }
        | Expr::InSubquery { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::Exists { .. } => Some(PgType::Bool),
        Expr::Extract { .. } => Some(PgType::Numeric),
        Expr::Function(f) => {
            let args = function_args(f);
            let first = args.first().and_then(|a| expr_type(a, tables));
            match function_name(f).as_str() {
                "date_part" => Some(PgType::Float8),
                "date_trunc" => match args.get(1).and_then(|a| expr_type(a, tables)) {
                    Some(PgType::Timestamp) => Some(PgType::Timestamp),
                    Some(PgType::Interval) => Some(PgType::Interval),
                    _ => Some(PgType::Timestamptz),
                },
                "count" => Some(PgType::Int8),
                "sum" => match first {
                    Some(PgType::Int2 | PgType::Int4 | PgType::Int8) => Some(PgType::Int8),
                    Some(PgType::Float4 | PgType::Float8) => Some(PgType::Float8),
                    _ => Some(PgType::Numeric),
                },
                "avg" => match first {
                    Some(PgType::Float4 | PgType::Float8) => Some(PgType::Float8),
                    _ => Some(PgType::Numeric),
                },
                "min" | "max" | "coalesce" | "abs" | "nullif" | "greatest" | "least" => first,
                "round" | "trunc" | "ceil" | "ceiling" | "floor" => first.or(Some(PgType::Numeric)),
                "length" | "char_length" | "octet_length" | "strpos" => Some(PgType::Int4),
                "lower" | "upper" | "trim" | "ltrim" | "rtrim" | "substr" | "substring"
                | "replace" | "concat" | "string_agg" | "version" | "current_database"
                | "current_schema" | "current_user" | "session_user" | "md5" | "left" | "right"
                | "lpad" | "rpad" => Some(PgType::Text),
                "now" | "transaction_timestamp" | "statement_timestamp" | "clock_timestamp" => {
                    Some(PgType::Timestamptz)
                }
                "random" => Some(PgType::Float8),
                "nextval" | "currval" | "setval" | "lastval" => Some(PgType::Int8),
                "gen_random_uuid" => Some(PgType::Uuid),
                "array_agg" => first.or(Some(PgType::Text)).and_then(PgType::array),
                "array" => match &f.args {
                    FunctionArguments::Subquery(q) => projection_types(q, tables)
                        .into_iter()
                        .next()
                        .flatten()
                        .or(Some(PgType::Text))
                        .and_then(PgType::array),
                    _ => None,
                },
                "array_length" | "cardinality" | "array_position" | "array_upper"
                | "array_lower" | "array_ndims" => Some(PgType::Int4),
                "array_positions" => Some(PgType::Int4Array),
                "array_append" | "array_remove" | "array_replace" | "array_cat" => first,
                "array_prepend" => args.get(1).and_then(|a| expr_type(a, tables)),
                "string_to_array" => Some(PgType::TextArray),
                "array_to_string" | "to_char" => Some(PgType::Text),
                "unnest" => first.and_then(PgType::element),
                "generate_series" => first,
                "generate_subscripts" => Some(PgType::Int4),
                "age" | "make_interval" | "justify_hours" | "justify_days" | "justify_interval" => {
                    Some(PgType::Interval)
                }
                "make_date" | "to_date" | "current_date" => Some(PgType::Date),
                "make_timestamp" | "localtimestamp" => Some(PgType::Timestamp),
                "make_timestamptz" | "to_timestamp" | "current_timestamp" => {
                    Some(PgType::Timestamptz)
                }
                "pg_backend_pid" => Some(PgType::Int4),
                "row_number" | "rank" | "dense_rank" | "ntile" => Some(PgType::Int8),
                "lag" | "lead" | "first_value" | "last_value" => first,
                _ => None,
            }
        }
        Expr::Case {
            conditions,
            else_result,
            ..
        } => conditions
            .iter()
            .find_map(|c| expr_type(&c.result, tables))
            .or_else(|| else_result.as_ref().and_then(|e| expr_type(e, tables))),
        Expr::Subquery(q) => projection_types(q, tables).into_iter().next().flatten(),
        _ => None,
    }
}

fn numeric_rank(t: PgType) -> u8 {
    match t {
        PgType::Int2 => 1,
        PgType::Int4 => 2,
        PgType::Int8 => 3,
        PgType::Numeric => 4,
        PgType::Float4 => 5,
        PgType::Float8 => 6,
        _ => 0,
    }
}

/// The name PostgreSQL gives an unaliased result column.
pub fn pg_column_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(i) => ident_name(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        Expr::Function(f) => function_name(f),
        Expr::Cast {
            expr, data_type, ..
        } => match pg_column_name(expr).as_str() {
            "?column?" => PgType::parse_declared(&data_type.to_string())
                .map(|t| t.name().to_string())
                .unwrap_or_else(|| "?column?".into()),
            name => name.to_string(),
        },
        Expr::Nested(e) => pg_column_name(e),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) if s.projection.len() == 1 => match &s.projection[0] {
                SelectItem::UnnamedExpr(e) => pg_column_name(e),
                SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// Give unaliased result expressions PostgreSQL's names (SQLite would use the expression's text).
fn name_columns(items: &mut [SelectItem]) {
    for item in items.iter_mut() {
        if let SelectItem::UnnamedExpr(e) = item {
            if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                continue;
            }
            let alias = Ident::with_quote('"', pg_column_name(e));
            *item = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias,
            };
        }
    }
}

fn name_query_columns(query: &mut ast::Query) {
    let mut body = query.body.as_mut();
    loop {
        match body {
            SetExpr::SetOperation { left, .. } => body = left.as_mut(),
            SetExpr::Query(q) => body = q.body.as_mut(),
            SetExpr::Select(select) => return name_columns(&mut select.projection),
            _ => return,
        }
    }
}

fn item_types(items: &[SelectItem], tables: &[&Table]) -> Vec<Option<PgType>> {
    item_map(items, &|e| expr_type(e, tables))
}

fn projection_types(query: &ast::Query, tables: &[&Table]) -> Vec<Option<PgType>> {
    projection_map(query, &|e| expr_type(e, tables))
}

/// `f` of each result column of a select list (nothing for a wildcard).
fn item_map<T>(items: &[SelectItem], f: &dyn Fn(&Expr) -> Option<T>) -> Vec<Option<T>> {
    if items.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    }) {
        return Vec::new();
    }
    items
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => f(e),
            _ => None,
        })
        .collect()
}

/// `f` of each result column of a query (its first branch, for set operations).
fn projection_map<T>(query: &ast::Query, f: &dyn Fn(&Expr) -> Option<T>) -> Vec<Option<T>> {
    let mut body = query.body.as_ref();
    while let SetExpr::SetOperation { left, .. } = body {
        body = left;
    }
    match body {
        SetExpr::Select(select) => item_map(&select.projection, f),
        SetExpr::Query(q) => projection_map(q, f),
        SetExpr::Values(v) => v
            .rows
            .first()
            .map(|r| r.iter().map(f).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Parameter types from where each `$n` stands: compared with or assigned to a column,
/// inserted into one, cast, or used as LIMIT/OFFSET.
fn infer_params(stmt: &Statement, tables: &[&Table], given: &[Option<PgType>]) -> Vec<PgType> {
    let mut count = 0usize;
    let _ = visit_expressions(stmt, |e| {
        if let Some(i) = placeholder_index(e) {
            count = count.max(i + 1);
        }
        ControlFlow::<()>::Continue(())
    });
    count = count.max(given.len());
    let mut found: Vec<Option<PgType>> = vec![None; count];
    let mut note = |e: &Expr, ty: Option<PgType>| {
        if let (Some(i), Some(ty)) = (placeholder_index(e), ty) {
            if found[i].is_none() {
                found[i] = Some(ty);
            }
        }
    };
    let _ = visit_expressions(stmt, |e| {
        match e {
            Expr::BinaryOp { left, right, .. } => {
                note(
                    right,
                    column_type(left, tables).or_else(|| expr_type(left, tables)),
                );
                note(
                    left,
                    column_type(right, tables).or_else(|| expr_type(right, tables)),
                );
            }
            Expr::InList { expr, list, .. } => {
                let ty = expr_type(expr, tables);
                for item in list {
                    note(item, ty);
                }
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                note(right, expr_type(left, tables).and_then(PgType::array));
                note(left, expr_type(right, tables).and_then(PgType::element));
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                let ty = expr_type(expr, tables);
                note(low, ty);
                note(high, ty);
            }
            Expr::Cast {
                expr, data_type, ..
            } => note(expr, PgType::parse_declared(&data_type.to_string())),
            Expr::Like { pattern, .. } | Expr::ILike { pattern, .. } => {
                note(pattern, Some(PgType::Text))
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    match stmt {
        Statement::Insert(insert) => {
            let table = match &insert.table {
                ast::TableObject::TableName(n) => tables
                    .iter()
                    .find(|t| t.name.eq_ignore_ascii_case(&object_name(n))),
                _ => None,
            };
            if let (Some(table), Some(source)) = (table, &insert.source) {
                let columns: Vec<Option<PgType>> = if insert.columns.is_empty() {
                    table.columns.iter().map(|c| Some(c.ty)).collect()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(|c| table.column(&object_name(c)).map(|c| c.ty))
                        .collect()
                };
                if let SetExpr::Values(values) = source.body.as_ref() {
                    for row in &values.rows {
                        for (e, ty) in row.iter().zip(&columns) {
                            note(e, *ty);
                        }
                    }
                }
            }
            if let Some(ast::OnInsert::OnConflict(c)) = &insert.on {
                if let ast::OnConflictAction::DoUpdate(u) = &c.action {
                    for a in &u.assignments {
                        note_assignment(&mut note, a, tables);
                    }
                }
            }
        }
        Statement::Update(update) => {
            for a in &update.assignments {
                note_assignment(&mut note, a, tables);
            }
        }
        Statement::Query(q) => {
            if let Some(ast::LimitClause::LimitOffset { limit, offset, .. }) = &q.limit_clause {
                if let Some(l) = limit {
                    note(l, Some(PgType::Int8));
                }
                if let Some(o) = offset {
                    note(&o.value, Some(PgType::Int8));
                }
            }
        }
        _ => {}
    }
    (0..count)
        .map(|i| {
            given
                .get(i)
                .copied()
                .flatten()
                .filter(|t| *t != PgType::Unknown)
                .or(found[i])
                .unwrap_or(PgType::Text)
        })
        .collect()
}

fn note_assignment(
    note: &mut impl FnMut(&Expr, Option<PgType>),
    a: &ast::Assignment,
    tables: &[&Table],
) {
    if let AssignmentTarget::ColumnName(name) = &a.target {
        let column = object_name(name);
        note(
            &a.value,
            tables.iter().find_map(|t| t.column(&column)).map(|c| c.ty),
        );
    }
}

pub fn literal_expr(value: &Value) -> Expr {
    let v = match value {
        Value::Null => AstValue::Null,
        Value::Integer(i) => AstValue::Number(i.to_string(), false),
        Value::Real(f) if f.is_finite() => AstValue::Number(format!("{f:?}"), false),
        Value::Real(f) => AstValue::SingleQuotedString(f.to_string()),
        Value::Text(s) => AstValue::SingleQuotedString(s.clone()),
        Value::Blob(b) => {
            AstValue::HexStringLiteral(b.iter().map(|x| format!("{x:02X}")).collect())
        }
    };
    Expr::value(v)
}

/// A numeric literal as a double when the double is the decimal written (12.50 is 12.5),
/// else as the decimal's text, so no digit is lost on the way to a numeric column.
fn exact_number_literal(n: &str) -> Option<Value> {
    let f = n.parse::<f64>().ok()?;
    if n.contains(['e', 'E']) || !f.is_finite() {
        return Some(Value::Real(f));
    }
    let (int, frac) = n.split_once('.').unwrap_or((n, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let written = match (int.is_empty(), frac.is_empty()) {
        (_, true) => (if int.is_empty() { "0" } else { int }).to_string(),
        (true, false) => format!("0.{frac}"),
        (false, false) => format!("{int}.{frac}"),
    };
    if f.to_string() == written {
        Some(Value::Real(f))
    } else {
        Some(Value::Text(n.to_string()))
    }
}

/// A literal's value as SQLite would store it, if `expr` is a plain literal.
pub fn literal_value(expr: &Expr) -> Option<Value> {
    match expr {
        Expr::Value(v) => match &v.value {
            AstValue::Number(n, _) => n
                .parse::<i64>()
                .map(Value::Integer)
                .ok()
                .or_else(|| exact_number_literal(n)),
            AstValue::SingleQuotedString(s) | AstValue::EscapedStringLiteral(s) => {
                Some(Value::Text(s.clone()))
            }
            AstValue::Boolean(b) => Some(Value::Integer(*b as i64)),
            AstValue::Null => Some(Value::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match literal_value(expr)? {
            Value::Integer(i) => Some(Value::Integer(-i)),
            Value::Real(f) => Some(Value::Real(-f)),
            _ => None,
        },
        Expr::Nested(e) => literal_value(e),
        _ => None,
    }
}

/// Rewrite PostgreSQL spellings SQLite does not understand, in place.
fn rewrite(stmt: &mut Statement) -> Result<()> {
    let mut failure: Option<Error> = None;
    let _ = visit_expressions_mut(stmt, |e| {
        if let Err(err) = rewrite_expr(e) {
            failure = Some(err);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    failure.map_or(Ok(()), Err)
}

fn rewrite_expr(e: &mut Expr) -> Result<()> {
    match e {
        Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_) => {
            return Err(Error::unsupported("GROUP BY ROLLUP, CUBE or GROUPING SETS"))
        }
        // `- -x` must not print as `--x`, which SQL reads as a comment.
        Expr::UnaryOp { expr, .. }
            if matches!(expr.as_ref(), Expr::UnaryOp { .. })
                || expr.to_string().starts_with('-') =>
        {
            let inner = take(expr);
            **expr = Expr::Nested(Box::new(inner));
        }
        Expr::Value(v) => {
            if let AstValue::Placeholder(p) = &v.value {
                let n = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        Error::sql(sqlstate::SYNTAX_ERROR, format!("invalid parameter {p}"))
                    })?;
                v.value = AstValue::Placeholder(format!("?{n}"));
            }
        }
        Expr::Cast {
            kind,
            expr,
            data_type,
            ..
        } => {
            let ty = declared_type(data_type)?;
            if let Some(value) = literal_value(expr) {
                *e = literal_expr(&types::coerce(value, ty)?);
            } else if ty == PgType::Date {
                let inner = std::mem::replace(expr.as_mut(), Expr::value(AstValue::Null));
                *e = call("date", vec![inner]);
            } else {
                *kind = CastKind::Cast;
                *data_type = sqlite_type(ty.sqlite_type());
            }
        }
        Expr::Interval(i) => {
            let mut text = match literal_value(&i.value) {
                Some(Value::Text(t)) => t,
                Some(Value::Integer(n)) => n.to_string(),
                Some(Value::Real(f)) => f.to_string(),
                _ => {
                    return Err(Error::unsupported(
                        "INTERVAL with a value that is not a literal",
                    ))
                }
            };
            // `INTERVAL '2' HOUR`: a bare number counts the leading field.
            if let Some(field) = &i.leading_field {
                if text.trim().parse::<f64>().is_ok() {
                    text = format!("{text} {field}");
                }
            }
            *e = literal_expr(&types::coerce(Value::Text(text), PgType::Interval)?);
        }
        Expr::TypedString(t) => {
            let ty = declared_type(&t.data_type)?;
            let text = match &t.value.value {
                AstValue::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            };
            *e = literal_expr(&types::coerce(Value::Text(text), ty)?);
        }
        Expr::ILike {
            negated,
            any,
            expr,
            pattern,
            escape_char,
        } => {
            // SQLite's LIKE is case-insensitive for ASCII (we turn that off for LIKE).
            *e = Expr::Like {
                negated: *negated,
                any: *any,
                expr: Box::new(call(
                    "lower",
                    vec![std::mem::replace(
                        expr.as_mut(),
                        Expr::value(AstValue::Null),
                    )],
                )),
                pattern: Box::new(call(
                    "lower",
                    vec![std::mem::replace(
                        pattern.as_mut(),
                        Expr::value(AstValue::Null),
                    )],
                )),
                escape_char: escape_char.clone(),
            };
        }
        Expr::BinaryOp {
            left,
            op: op @ (ast::BinaryOperator::Divide | ast::BinaryOperator::Modulo),
            right,
        } => {
            let name = if *op == ast::BinaryOperator::Divide {
                "cairn_div"
            } else {
                "cairn_mod"
            };
            let (l, r) = (take(left), take(right));
            *e = call(name, vec![l, r]);
        }
        Expr::IsDistinctFrom(a, b) => {
            let (a, b) = (take(a), take(b));
            *e = Expr::BinaryOp {
                left: Box::new(a),
                op: ast::BinaryOperator::Custom("IS NOT".into()),
                right: Box::new(b),
            };
        }
        Expr::IsNotDistinctFrom(a, b) => {
            let (a, b) = (take(a), take(b));
            *e = Expr::BinaryOp {
                left: Box::new(a),
                op: ast::BinaryOperator::Custom("IS".into()),
                right: Box::new(b),
            };
        }
        Expr::Function(f) => match function_name(f).as_str() {
            "array" => {
                if let FunctionArguments::Subquery(q) = &mut f.args {
                    if let Some(a) = super::system::array_subquery(q) {
                        *e = a;
                    }
                }
            }
            "string_agg" => f.name = ObjectName::from(vec![Ident::new("group_concat")]),
            "char_length" | "character_length" => {
                f.name = ObjectName::from(vec![Ident::new("length")])
            }
            "current_user" | "session_user" | "user" => {
                *e = literal_expr(&Value::Text("cairn".into()))
            }
            // SQLite's own CURRENT_* print without PostgreSQL's time zone.
            "current_timestamp" if matches!(f.args, FunctionArguments::None) => {
                *e = call("now", vec![])
            }
            "localtimestamp" if matches!(f.args, FunctionArguments::None) => {
                *e = call(
                    "cairn_cast",
                    vec![
                        call("now", vec![]),
                        literal_expr(&Value::Text("timestamp".into())),
                        literal_expr(&Value::Text("timestamp with time zone".into())),
                    ],
                )
            }
            "current_date" if matches!(f.args, FunctionArguments::None) => {
                *e = call(
                    "substr",
                    vec![
                        call("now", vec![]),
                        literal_expr(&Value::Integer(1)),
                        literal_expr(&Value::Integer(10)),
                    ],
                )
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

fn take(b: &mut Box<Expr>) -> Expr {
    std::mem::replace(b.as_mut(), Expr::value(AstValue::Null))
}

pub(crate) fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(ast::Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn reject_internal(stmt: &Statement) -> Result<()> {
    let mut bad = None;
    let mut catalog = None;
    let _ = visit_relations(stmt, |name| {
        let n = object_name(name);
        let schema = match name.0.len() {
            2.. => match &name.0[name.0.len() - 2] {
                ObjectNamePart::Identifier(i) => Some(ident_name(i)),
                _ => None,
            },
            _ => None,
        };
        if super::system::is_system_table(&n) {
            return ControlFlow::Continue(());
        }
        if matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"))
            || n.starts_with("pg_")
        {
            catalog = Some(name.to_string());
            return ControlFlow::Break(());
        }
        if is_internal(&n) {
            bad = Some(n);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Some(c) = catalog {
        return Err(Error::unsupported(format!("the system catalog {c}")));
    }
    match bad {
        Some(n) => Err(Error::sql(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("permission denied for table {n}"),
        )),
        None => Ok(()),
    }
}

/// The first words of a statement, to name it in "not supported" errors.
fn statement_name(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    words.join(" ").to_uppercase()
}

/// Translate one parsed statement. `given` holds parameter types the client declared.
/// Tables named by a query's WITH clause, with the columns its queries produce.
fn cte_tables(stmt: &Statement, known: &[&Table]) -> Vec<Table> {
    let Statement::Query(q) = stmt else {
        return Vec::new();
    };
    let Some(with) = &q.with else {
        return Vec::new();
    };
    let mut out: Vec<Table> = Vec::new();
    for cte in &with.cte_tables {
        let mut scope: Vec<&Table> = known.to_vec();
        scope.extend(out.iter());
        let types = projection_types(&cte.query, &scope);
        let SetExpr::Select(select) = cte.query.body.as_ref() else {
            continue;
        };
        let columns = select
            .projection
            .iter()
            .zip(types.into_iter().chain(std::iter::repeat(None)))
            .map(|(item, ty)| {
                let name = match item {
                    SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                    SelectItem::UnnamedExpr(e) => pg_column_name(e),
                    _ => "?column?".into(),
                };
                Column {
                    name,
                    ty: ty.unwrap_or(PgType::Text),
                    typmod: None,
                }
            })
            .collect();
        out.push(Table::scratch(ident_name(&cte.alias.name), columns));
    }
    out
}

/// Subqueries in FROM (`(SELECT ...) AS d`) as tables with the columns they produce, typed,
/// innermost first (an outer one may read an inner one's columns).
fn derived_tables(stmt: &Statement, known: &[&Table]) -> Vec<Table> {
    struct Finder<'a> {
        known: &'a [&'a Table],
        out: Vec<Table>,
    }
    impl ast::Visitor for Finder<'_> {
        type Break = ();
        fn post_visit_table_factor(&mut self, factor: &ast::TableFactor) -> ControlFlow<()> {
            let ast::TableFactor::Derived {
                subquery,
                alias: Some(alias),
                ..
            } = factor
            else {
                return ControlFlow::Continue(());
            };
            let mut scope: Vec<&Table> = self.known.to_vec();
            scope.extend(self.out.iter());
            let types = projection_types(subquery, &scope);
            let mut body = subquery.body.as_ref();
            while let SetExpr::SetOperation { left, .. } = body {
                body = left;
            }
            let SetExpr::Select(select) = body else {
                return ControlFlow::Continue(());
            };
            if types.is_empty() {
                return ControlFlow::Continue(());
            }
            let named: Vec<String> = alias.columns.iter().map(|c| ident_name(&c.name)).collect();
            let columns = select
                .projection
                .iter()
                .zip(types)
                .enumerate()
                .map(|(i, (item, ty))| {
                    let name = named.get(i).cloned().unwrap_or_else(|| match item {
                        SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                        SelectItem::UnnamedExpr(e) => pg_column_name(e),
                        _ => "?column?".into(),
                    });
                    let typmod = match item {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                            column_ref(e, &scope).and_then(|c| c.typmod)
                        }
                        _ => None,
                    };
                    Column {
                        name,
                        ty: ty.unwrap_or(PgType::Unknown),
                        typmod,
                    }
                })
                .filter(|c| c.ty != PgType::Unknown)
                .collect();
            self.out
                .push(Table::scratch(ident_name(&alias.name), columns));
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder {
        known,
        out: Vec::new(),
    };
    let _ = ast::Visit::visit(stmt, &mut finder);
    finder.out
}

pub fn translate(
    mut stmt: Statement,
    catalog: &Catalog,
    given: &[Option<PgType>],
) -> Result<Translated> {
    postgres_null_order(&mut stmt);
    fold_field_access(&mut stmt);
    if !matches!(stmt, Statement::CreateView(_) | Statement::Drop { .. }) {
        expand_views(&mut stmt, catalog)?;
    }
    if let Statement::Explain {
        statement,
        analyze: false,
        ..
    } = stmt
    {
        let inner = translate(*statement, catalog, given)?;
        if !matches!(inner.kind, Kind::Read | Kind::Write) {
            return Err(Error::unsupported(
                "EXPLAIN of anything but queries and DML",
            ));
        }
        return Ok(Translated {
            kind: Kind::Explain(Box::new(inner.clone())),
            sql: String::new(),
            stmt: None,
            param_types: inner.param_types,
            expr_types: vec![Some(PgType::Text)],
            expr_scales: Vec::new(),
            tag: "EXPLAIN".into(),
        });
    }
    reject_internal(&stmt)?;
    let mut tables = scope(&stmt, catalog);
    let ctes = cte_tables(&stmt, &tables);
    tables.extend(ctes.iter());
    let srfs = super::srf::found(&stmt, &tables)?;
    super::srf::expand(&mut stmt, &srfs);
    let srf_tables: Vec<Table> = srfs.iter().map(super::srf::Found::table).collect();
    tables.extend(srf_tables.iter());
    let derived = derived_tables(&stmt, &tables);
    tables.extend(derived.iter());
    coerce_compared_literals(&mut stmt, &tables)?;
    let param_types = infer_params(&stmt, &tables, given);
    let mut out = Translated {
        kind: Kind::Read,
        sql: String::new(),
        stmt: None,
        param_types,
        expr_types: Vec::new(),
        expr_scales: Vec::new(),
        tag: String::new(),
    };
    let session = |kind: Kind, tag: &str| Translated {
        kind,
        sql: String::new(),
        stmt: None,
        param_types: Vec::new(),
        expr_types: Vec::new(),
        expr_scales: Vec::new(),
        tag: tag.to_string(),
    };
    let ddl = |action: DdlAction, tag: &str| Translated {
        kind: Kind::Ddl(Box::new(action)),
        sql: String::new(),
        stmt: None,
        param_types: Vec::new(),
        expr_types: Vec::new(),
        expr_scales: Vec::new(),
        tag: tag.to_string(),
    };
    if let Some(action) = distribution_call(&stmt)? {
        let tag = "SELECT 1";
        return Ok(ddl(action, tag));
    }
    if let Some((action, tag)) = user_action(&stmt)? {
        return Ok(session(Kind::Users(action), tag));
    }
    match &mut stmt {
        Statement::Query(q) => {
            out.expr_types = projection_types(q, &tables);
            out.expr_scales = projection_map(q, &|e| expr_scale(e, &tables));
            q.locks.clear(); // FOR UPDATE/SHARE: a shard's transactions are serializable already.
                             // FETCH FIRST n ROWS ONLY is LIMIT n.
            if let Some(fetch) = q.fetch.take() {
                if fetch.percent || fetch.with_ties || q.limit_clause.is_some() {
                    return Err(Error::unsupported(
                        "FETCH FIRST with PERCENT, WITH TIES, or beside LIMIT",
                    ));
                }
                q.limit_clause = Some(ast::LimitClause::LimitOffset {
                    limit: Some(
                        fetch
                            .quantity
                            .unwrap_or_else(|| literal_expr(&Value::Integer(1))),
                    ),
                    offset: None,
                    limit_by: vec![],
                });
            }
            name_query_columns(q);
            out.tag = "SELECT".into();
        }
        Statement::Insert(insert) => {
            out.kind = Kind::Write;
            out.tag = "INSERT".into();
            out.expr_types = insert
                .returning
                .as_ref()
                .map(|r| item_types(r, &tables))
                .unwrap_or_default();
            out.expr_scales = insert
                .returning
                .as_ref()
                .map(|r| item_map(r, &|e| expr_scale(e, &tables)))
                .unwrap_or_default();
            if let Some(r) = insert.returning.as_mut() {
                name_columns(r);
            }
            match_insert_widths(insert, &tables)?;
            fill_sequence_defaults(insert, &tables)?;
            coerce_insert_literals(insert, &tables)?;
        }
        Statement::Update(update) => {
            out.kind = Kind::Write;
            out.tag = "UPDATE".into();
            out.expr_types = update
                .returning
                .as_ref()
                .map(|r| item_types(r, &tables))
                .unwrap_or_default();
            out.expr_scales = update
                .returning
                .as_ref()
                .map(|r| item_map(r, &|e| expr_scale(e, &tables)))
                .unwrap_or_default();
            if let Some(r) = update.returning.as_mut() {
                name_columns(r);
            }
            coerce_update_literals(update, &tables)?;
        }
        Statement::Delete(delete) => {
            out.kind = Kind::Write;
            out.tag = "DELETE".into();
            out.expr_types = delete
                .returning
                .as_ref()
                .map(|r| item_types(r, &tables))
                .unwrap_or_default();
            out.expr_scales = delete
                .returning
                .as_ref()
                .map(|r| item_map(r, &|e| expr_scale(e, &tables)))
                .unwrap_or_default();
            if let Some(r) = delete.returning.as_mut() {
                name_columns(r);
            }
        }
        Statement::Truncate(t) => {
            let mut parts = Vec::new();
            for target in &t.table_names {
                let sql = format!(
                    "DELETE FROM \"{}\"",
                    object_name(&target.name).replace('"', "\"\"")
                );
                let delete = parse(&sql)?
                    .pop()
                    .ok_or_else(|| Error::internal("TRUNCATE rewrite"))?;
                let mut part = translate(delete, catalog, &[])?;
                part.tag = "TRUNCATE TABLE".into();
                parts.push(part);
            }
            if parts.len() == 1 {
                return Ok(parts.pop().expect("one part"));
            }
            return Ok(session(Kind::Several(parts), "TRUNCATE TABLE"));
        }
        Statement::Vacuum(_) => return Ok(session(Kind::Noop, "VACUUM")),
        Statement::Analyze(_) => return Ok(session(Kind::Noop, "ANALYZE")),
        Statement::CreateTable(create) => {
            return Ok(ddl(
                DdlAction::CreateTable(Box::new(create_table(create)?)),
                "CREATE TABLE",
            ));
        }
        Statement::CreateIndex(index) => {
            index.using = None;
            index.concurrently = false;
            // Operator classes (`varchar_pattern_ops`) choose PostgreSQL index behaviour
            // SQLite's b-tree does not have: one index serves both.
            for c in index.columns.iter_mut() {
                c.operator_class = None;
            }
            // Storage parameters (`WITH (fillfactor = 70)`) tune PostgreSQL's pages.
            index.with.clear();
            if !index.include.is_empty() {
                return Err(Error::unsupported("CREATE INDEX ... INCLUDE"));
            }
            let table = object_name(&index.table_name);
            let name = match &index.name {
                Some(n) => object_name(n),
                None => {
                    // PostgreSQL's default: table_column(s)_idx.
                    let cols: Vec<String> = index
                        .columns
                        .iter()
                        .map(|c| c.column.expr.to_string().to_lowercase())
                        .collect();
                    let name = format!("{table}_{}_idx", cols.join("_"));
                    index.name = Some(ObjectName::from(vec![Ident::with_quote('"', &name)]));
                    name
                }
            };
            let if_not_exists = index.if_not_exists;
            let unique = index.unique.then(|| {
                index
                    .columns
                    .iter()
                    .map(|c| match &c.column.expr {
                        Expr::Identifier(i) => ident_name(i),
                        other => other.to_string(),
                    })
                    .collect()
            });
            let mut s = Statement::CreateIndex(index.clone());
            rewrite(&mut s)?;
            return Ok(ddl(
                DdlAction::CreateIndex {
                    table,
                    name,
                    sql: s.to_string(),
                    if_not_exists,
                    unique,
                },
                "CREATE INDEX",
            ));
        }
        Statement::AlterTable(alter) => {
            if let Some(action) = add_unique_constraint(alter)? {
                return Ok(ddl(action, "ALTER TABLE"));
            }
            if let [ast::AlterTableOperation::SetOptionsParens { options }] =
                alter.operations.as_slice()
            {
                let table = object_name(&alter.name);
                let mut ttl = None;
                for o in options {
                    match o {
                        ast::SqlOption::KeyValue { key, value }
                            if ident_name(key) == "cache_ttl" =>
                        {
                            ttl = parse_cache_ttl(&option_text(value))?;
                        }
                        ast::SqlOption::KeyValue { key, value }
                            if ident_name(key) == "replication_factor" && options.len() == 1 =>
                        {
                            let factor = parse_replication_factor(&option_text(value))?;
                            return Ok(ddl(
                                DdlAction::SetReplicationFactor { table, factor },
                                "ALTER TABLE",
                            ));
                        }
                        other => {
                            return Err(Error::unsupported(format!("ALTER TABLE SET ({other})")))
                        }
                    }
                }
                return Ok(ddl(DdlAction::SetCacheTtl { table, ttl }, "ALTER TABLE"));
            }
            let table = object_name(&alter.name);
            let action = match alter_table(alter, catalog.table(&table))? {
                Altered::Columns(sql, added) => DdlAction::AlterTable { table, sql, added },
                Altered::Rebuild(changes) => DdlAction::Rebuild { table, changes },
            };
            return Ok(ddl(action, "ALTER TABLE"));
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => {
            let names: Vec<String> = names.iter().map(object_name).collect();
            let (if_exists, cascade) = (*if_exists, *cascade);
            return match object_type {
                ObjectType::Table => Ok(ddl(
                    DdlAction::DropTables {
                        names,
                        if_exists,
                        cascade,
                    },
                    "DROP TABLE",
                )),
                ObjectType::View => Ok(ddl(
                    DdlAction::DropObjects {
                        kind: "view",
                        names,
                        if_exists,
                        cascade,
                    },
                    "DROP VIEW",
                )),
                ObjectType::Sequence => Ok(ddl(
                    DdlAction::DropObjects {
                        kind: "sequence",
                        names,
                        if_exists,
                        cascade,
                    },
                    "DROP SEQUENCE",
                )),
                ObjectType::Index => Ok(ddl(
                    DdlAction::DropIndexes { names, if_exists },
                    "DROP INDEX",
                )),
                other => Err(Error::unsupported(format!("DROP {other}"))),
            };
        }
        Statement::CreateView(view) => {
            if view.materialized {
                return Err(Error::unsupported("CREATE MATERIALIZED VIEW"));
            }
            let name = object_name(&view.name);
            if catalog.table(&name).is_some() && !view.or_replace {
                return Err(Error::sql(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{name}\" already exists"),
                ));
            }
            // The query must stand on its own now (it is translated again where used).
            let query = Statement::Query(view.query.clone());
            let checked = translate(query.clone(), catalog, &[])?;
            if checked.kind != Kind::Read {
                return Err(Error::unsupported(
                    "a view over a statement that is not a query",
                ));
            }
            let action = DdlAction::CreateView {
                name,
                or_replace: view.or_replace,
                query: view.query.to_string(),
                names: view.columns.iter().map(|c| ident_name(&c.name)).collect(),
                columns: Vec::new(),
                query_columns: Vec::new(),
            };
            return Ok(ddl(action, "CREATE VIEW"));
        }
        Statement::CreateSequence {
            temporary,
            if_not_exists,
            name,
            data_type,
            sequence_options,
            owned_by,
        } => {
            if *temporary {
                return Err(Error::unsupported("CREATE TEMPORARY SEQUENCE"));
            }
            let sequence = sequence_definition(
                object_name(name),
                data_type.as_ref(),
                sequence_options,
                owned_by.as_ref(),
            )?;
            return Ok(ddl(
                DdlAction::CreateSequence {
                    sequence,
                    if_not_exists: *if_not_exists,
                },
                "CREATE SEQUENCE",
            ));
        }
        Statement::Comment {
            object_type,
            object_name: target,
            comment,
            ..
        } => {
            let kind = match object_type {
                ast::CommentObject::Table => "table",
                ast::CommentObject::Column => "column",
                ast::CommentObject::View => "view",
                ast::CommentObject::Sequence => "sequence",
                ast::CommentObject::Index => "index",
                other => return Err(Error::unsupported(format!("COMMENT ON {other}"))),
            };
            let parts: Vec<String> = target
                .0
                .iter()
                .filter_map(|p| match p {
                    ObjectNamePart::Identifier(i) => Some(ident_name(i)),
                    _ => None,
                })
                .filter(|p| p != "public")
                .collect();
            let name = if kind == "column" {
                match parts.as_slice() {
                    [.., t, c] => format!("{t}.{c}"),
                    _ => {
                        return Err(Error::sql(
                            sqlstate::SYNTAX_ERROR,
                            "COMMENT ON COLUMN needs table.column",
                        ))
                    }
                }
            } else {
                parts.last().cloned().unwrap_or_default()
            };
            return Ok(ddl(
                DdlAction::Comment {
                    kind,
                    name,
                    text: comment.clone(),
                },
                "COMMENT",
            ));
        }
        Statement::StartTransaction { .. } => return Ok(session(Kind::Begin, "BEGIN")),
        Statement::Commit { .. } => return Ok(session(Kind::Commit, "COMMIT")),
        Statement::Rollback {
            savepoint: None, ..
        } => return Ok(session(Kind::Rollback, "ROLLBACK")),
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => {
            let kind = Kind::Savepoint(SavepointOp::RollbackTo, ident_name(name));
            return Ok(session(kind, "ROLLBACK"));
        }
        Statement::Savepoint { name } => {
            let kind = Kind::Savepoint(SavepointOp::Set, ident_name(name));
            return Ok(session(kind, "SAVEPOINT"));
        }
        Statement::ReleaseSavepoint { name } => {
            let kind = Kind::Savepoint(SavepointOp::Release, ident_name(name));
            return Ok(session(kind, "RELEASE"));
        }
        Statement::Set(set) => return Ok(translate_set(set)),
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(ident_name)
                .collect::<Vec<_>>()
                .join(" ");
            return Ok(session(Kind::Show { name }, "SHOW"));
        }
        Statement::Copy {
            source:
                ast::CopySource::Table {
                    table_name,
                    columns,
                },
            to: false,
            target: ast::CopyTarget::Stdin,
            options,
            legacy_options,
            values,
        } => {
            if !values.is_empty() {
                return Err(Error::unsupported("COPY with inline data"));
            }
            let copy = CopyIn {
                table: object_name(table_name),
                columns: columns.iter().map(ident_name).collect(),
                options: copy_options(options, legacy_options)?,
            };
            return Ok(session(Kind::CopyIn(Box::new(copy)), "COPY"));
        }
        Statement::Copy {
            source,
            to: true,
            target: ast::CopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } => {
            let options = copy_options(options, legacy_options)?;
            if options.format == super::copy::Format::Binary {
                return Err(Error::unsupported("COPY TO STDOUT in binary format"));
            }
            let query = match source {
                ast::CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let list = if columns.is_empty() {
                        "*".to_string()
                    } else {
                        columns
                            .iter()
                            .map(|c| quote_ident(&ident_name(c)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let sql = format!("SELECT {list} FROM {table_name}");
                    parse(&sql)?
                        .pop()
                        .ok_or_else(|| Error::internal("COPY TO query"))?
                }
                ast::CopySource::Query(q) => Statement::Query(q.clone()),
            };
            let query = translate(query, catalog, given)?;
            if query.kind != Kind::Read {
                return Err(Error::unsupported(
                    "COPY of a statement that is not a query",
                ));
            }
            let copy = CopyOut { query, options };
            return Ok(session(Kind::CopyOut(Box::new(copy)), "COPY"));
        }
        Statement::Copy { .. } => {
            return Err(Error::unsupported(
                "COPY from or to a file on the server (use FROM STDIN / TO STDOUT)",
            ))
        }
        Statement::Discard { .. } => return Ok(session(Kind::Noop, "DISCARD ALL")),
        Statement::Deallocate { .. } => return Ok(session(Kind::Noop, "DEALLOCATE")),
        other => return Err(Error::unsupported(statement_name(other))),
    }
    super::distinct::rewrite(&mut stmt, &tables)?;
    super::typed::rewrite(&mut stmt, &tables)?;
    rewrite(&mut stmt)?;
    super::srf::rewrite(&mut stmt, &srfs, &tables)?;
    out.sql = stmt.to_string();
    out.stmt = Some(Box::new(stmt));
    Ok(out)
}

fn copy_options(
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> Result<super::copy::Options> {
    use super::copy::{Format, Options};
    use ast::{CopyLegacyCsvOption as L, CopyLegacyOption as LO, CopyOption as O};
    let csv = options
        .iter()
        .any(|o| matches!(o, O::Format(f) if f.value.eq_ignore_ascii_case("csv")))
        || legacy.iter().any(|o| matches!(o, LO::Csv(_)));
    let mut out = if csv { Options::csv() } else { Options::text() };
    let byte = |c: &char, what: &str| -> Result<u8> {
        u8::try_from(*c as u32)
            .ok()
            .filter(|b| b.is_ascii())
            .ok_or_else(|| Error::unsupported(format!("COPY {what} {c:?} (one ASCII character)")))
    };
    for o in options {
        match o {
            O::Format(f) => match f.value.to_lowercase().as_str() {
                "text" | "csv" => {}
                "binary" => out.format = Format::Binary,
                other => return Err(Error::unsupported(format!("COPY format {other}"))),
            },
            O::Freeze(_) | O::Encoding(_) => {}
            O::Delimiter(c) => out.delimiter = byte(c, "delimiter")?,
            O::Null(n) => out.null = n.clone(),
            O::Header(h) => out.header = *h,
            O::Quote(c) => out.quote = byte(c, "quote")?,
            O::Escape(c) => out.escape = byte(c, "escape")?,
            other => return Err(Error::unsupported(format!("COPY option {other}"))),
        }
    }
    for o in legacy {
        match o {
            LO::Csv(list) => {
                for c in list {
                    match c {
                        L::Header => out.header = true,
                        L::Quote(q) => out.quote = byte(q, "quote")?,
                        L::Escape(e) => out.escape = byte(e, "escape")?,
                        other => return Err(Error::unsupported(format!("COPY option {other}"))),
                    }
                }
            }
            LO::Delimiter(c) => out.delimiter = byte(c, "delimiter")?,
            LO::Null(n) => out.null = n.clone(),
            LO::Binary => out.format = Format::Binary,
            other => return Err(Error::unsupported(format!("COPY option {other}"))),
        }
    }
    if out.format == Format::Text && out.delimiter == b'\\' {
        return Err(Error::unsupported("COPY delimiter backslash"));
    }
    Ok(out)
}

/// `SELECT create_distributed_table(...)` / `SELECT create_reference_table(...)`, the
/// Citus calls that lay a table out, as DDL.
fn distribution_call(stmt: &Statement) -> Result<Option<DdlAction>> {
    let Statement::Query(q) = stmt else {
        return Ok(None);
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Ok(None);
    };
    let [SelectItem::UnnamedExpr(Expr::Function(f))] = select.projection.as_slice() else {
        return Ok(None);
    };
    let name = function_name(f);
    if name != "create_distributed_table" && name != "create_reference_table" {
        return Ok(None);
    }
    if !select.from.is_empty() {
        return Err(Error::unsupported(format!("{name}() over a FROM clause")));
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err(Error::sql(
            sqlstate::SYNTAX_ERROR,
            format!("{name}() needs arguments"),
        ));
    };
    let text = |e: &FunctionArgExpr| -> Result<String> {
        match e {
            FunctionArgExpr::Expr(e) => match literal_value(e) {
                Some(Value::Text(s)) => Ok(s),
                Some(Value::Integer(i)) => Ok(i.to_string()),
                _ => Err(Error::sql(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("{name}() takes literal arguments, not {e}"),
                )),
            },
            other => Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("{name}() takes literal arguments, not {other}"),
            )),
        }
    };
    let mut positional = Vec::new();
    let mut colocate_with = None;
    let mut shard_count = None;
    for arg in &list.args {
        match arg {
            FunctionArg::Unnamed(e) => positional.push(text(e)?),
            FunctionArg::Named { name: n, arg, .. }
            | FunctionArg::ExprNamed {
                name: Expr::Identifier(n),
                arg,
                ..
            } => {
                let value = text(arg)?;
                match ident_name(n).as_str() {
                    "colocate_with" if value.eq_ignore_ascii_case("default") => {}
                    "colocate_with" if value.eq_ignore_ascii_case("none") => {}
                    "colocate_with" => colocate_with = Some(value.to_lowercase()),
                    "shard_count" => {
                        let n: u32 = value
                            .parse()
                            .ok()
                            .filter(|n| (1..=limits::SHARDS_PER_TABLE_MAX).contains(n))
                            .ok_or_else(|| {
                                Error::sql(
                                    sqlstate::INVALID_PARAMETER_VALUE,
                                    format!(
                                        "shard_count must be between 1 and {}",
                                        limits::SHARDS_PER_TABLE_MAX
                                    ),
                                )
                            })?;
                        shard_count = Some(n);
                    }
                    "distribution_type" if value.eq_ignore_ascii_case("hash") => {}
                    other => return Err(Error::unsupported(format!("{name}() argument {other}"))),
                }
            }
            other => return Err(Error::unsupported(format!("{name}() argument {other}"))),
        }
    }
    let reference = name == "create_reference_table";
    let (table, column) = match (reference, positional.as_slice()) {
        (true, [t]) => (t.to_lowercase(), None),
        (false, [t, c]) => (t.to_lowercase(), Some(c.to_lowercase())),
        _ => {
            return Err(Error::sql(
                sqlstate::UNDEFINED_FUNCTION,
                format!(
                    "{name}() takes {}",
                    if reference {
                        "a table name"
                    } else {
                        "a table name and a column name"
                    }
                ),
            ))
        }
    };
    Ok(Some(DdlAction::Distribute {
        table,
        column,
        colocate_with,
        shard_count,
    }))
}

fn translate_set(set: &ast::Set) -> Translated {
    let noop = |tag: &str| Translated {
        kind: Kind::Noop,
        sql: String::new(),
        stmt: None,
        param_types: Vec::new(),
        expr_types: Vec::new(),
        expr_scales: Vec::new(),
        tag: tag.to_string(),
    };
    match set {
        ast::Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = variable
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => ident_name(i),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".");
            let value = values
                .iter()
                .map(|v| match v {
                    Expr::Value(v) => match &v.value {
                        AstValue::SingleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(i) => i.value.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            Translated {
                kind: Kind::Set { name, value },
                ..noop("SET")
            }
        }
        _ => noop("SET"),
    }
}

/// Coerce literal values in `INSERT ... VALUES` to their columns' types, as PostgreSQL would
/// (so `'t'` into a boolean stores 1, and a timestamptz literal is stored normalised).
/// Rows of `INSERT ... VALUES` against their target columns, as PostgreSQL checks them:
/// without a column list, fewer values fill the first columns (the rest get their
/// defaults); more values than columns, or rows of different widths, are 42601.
/// Columns whose DEFAULT draws from a sequence (`DEFAULT nextval('s')`) get their
/// `nextval('s')` written into each row an INSERT ... VALUES leaves them out of (or gives
/// DEFAULT): the session evaluates it, since no shard can reach the sequence.
fn fill_sequence_defaults(insert: &mut ast::Insert, tables: &[&Table]) -> Result<()> {
    let Some(table) = insert_target(insert, tables) else {
        return Ok(());
    };
    if !table.ddl.first().is_some_and(|d| d.contains("nextval(")) {
        return Ok(());
    }
    let Some(Statement::CreateTable(create)) = parse(&table.ddl[0])?.pop() else {
        return Ok(());
    };
    let drawing: Vec<(String, String)> = create
        .columns
        .iter()
        .filter_map(|c| {
            c.options.iter().find_map(|o| match &o.option {
                ColumnOption::Default(e) => {
                    super::sequences::default_sequence(e).map(|s| (ident_name(&c.name), s))
                }
                _ => None,
            })
        })
        .collect();
    if drawing.is_empty() || insert.columns.is_empty() {
        return Ok(());
    }
    let Some(SetExpr::Values(values)) = insert.source.as_mut().map(|s| s.body.as_mut()) else {
        return Ok(());
    };
    let call = |seq: &str| {
        call(
            "nextval",
            vec![Expr::value(AstValue::SingleQuotedString(seq.to_string()))],
        )
    };
    for (column, seq) in drawing {
        let at = insert
            .columns
            .iter()
            .position(|c| object_name(c).eq_ignore_ascii_case(&column));
        match at {
            Some(i) => {
                for row in values.rows.iter_mut() {
                    if row.get(i).is_some_and(|e| matches!(e, Expr::Identifier(id) if id.value.eq_ignore_ascii_case("default"))) {
                        row[i] = call(&seq);
                    }
                }
            }
            None => {
                insert
                    .columns
                    .push(ObjectName::from(vec![Ident::with_quote('"', &column)]));
                for row in values.rows.iter_mut() {
                    row.push(call(&seq));
                }
            }
        }
    }
    Ok(())
}

fn match_insert_widths(insert: &mut ast::Insert, tables: &[&Table]) -> Result<()> {
    let Some(table) = insert_target(insert, tables) else {
        return Ok(());
    };
    let Some(SetExpr::Values(values)) = insert.source.as_ref().map(|s| s.body.as_ref()) else {
        return Ok(());
    };
    let Some(width) = values.rows.first().map(|r| r.len()) else {
        return Ok(());
    };
    if values.rows.iter().any(|r| r.len() != width) {
        return Err(Error::sql(
            sqlstate::SYNTAX_ERROR,
            "VALUES lists must all be the same length",
        ));
    }
    let targets = if insert.columns.is_empty() {
        table.columns.len()
    } else {
        insert.columns.len()
    };
    if width > targets {
        return Err(Error::sql(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more expressions than target columns",
        ));
    }
    if width < targets && !insert.columns.is_empty() {
        return Err(Error::sql(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more target columns than expressions",
        ));
    }
    if width < targets {
        insert.columns = table.columns[..width]
            .iter()
            .map(|c| ast::ObjectName::from(vec![ast::Ident::with_quote('"', c.name.clone())]))
            .collect();
    }
    Ok(())
}

/// `UPDATE t SET col = 'literal'`: the literal is made a value of the column's type (or
/// refused with PostgreSQL's SQLSTATE, 22P02 for `'abc'` into an integer), as INSERT's are —
/// SQLite would store the text as it is and every later read of the row would fail.
fn coerce_update_literals(update: &mut ast::Update, tables: &[&Table]) -> Result<()> {
    let ast::TableFactor::Table { name, .. } = &update.table.relation else {
        return Ok(());
    };
    let Some(table) = table_named(tables, name) else {
        return Ok(());
    };
    for a in update.assignments.iter_mut() {
        let ast::AssignmentTarget::ColumnName(col) = &a.target else {
            continue;
        };
        let column = object_name(col);
        let column = column.rsplit('.').next().unwrap_or(&column);
        let Some(column) = table.column(column) else {
            continue;
        };
        if let Some(v) = literal_value(&a.value) {
            if !matches!(v, Value::Null) {
                a.value = literal_expr(&assigned(v, column)?);
            }
        }
    }
    Ok(())
}

/// The statement's table called `name`.
pub(crate) fn table_named<'a>(tables: &[&'a Table], name: &ast::ObjectName) -> Option<&'a Table> {
    let name = object_name(name);
    tables
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(&name))
        .copied()
}

/// The table an INSERT writes.
pub(crate) fn insert_target<'a>(insert: &ast::Insert, tables: &[&'a Table]) -> Option<&'a Table> {
    match &insert.table {
        ast::TableObject::TableName(name) => table_named(tables, name),
        _ => None,
    }
}

fn coerce_insert_literals(insert: &mut ast::Insert, tables: &[&Table]) -> Result<()> {
    let Some(table) = insert_target(insert, tables) else {
        return Ok(());
    };
    let columns: Vec<Option<&Column>> = if insert.columns.is_empty() {
        table.columns.iter().map(Some).collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| table.column(&object_name(c)))
            .collect()
    };
    let Some(source) = insert.source.as_mut() else {
        return Ok(());
    };
    if let SetExpr::Values(values) = source.body.as_mut() {
        for row in values.rows.iter_mut() {
            for (e, column) in row.iter_mut().zip(&columns) {
                if let (Some(v), Some(column)) = (literal_value(e), column) {
                    if !matches!(v, Value::Null) {
                        *e = literal_expr(&assigned(v, column)?);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A literal written into `column`: of its type, within its modifier (PostgreSQL's
/// assignment: 22P02, 22003, 22001 where it cannot be).
fn assigned(v: Value, column: &Column) -> Result<Value> {
    types::apply_typmod(
        types::coerce(v, column.ty)?,
        column.ty,
        column.typmod,
        false,
    )
}

fn column_list(cols: &[IndexColumn]) -> Vec<String> {
    cols.iter()
        .map(|c| match &c.column.expr {
            Expr::Identifier(i) => ident_name(i),
            other => other.to_string().to_lowercase(),
        })
        .collect()
}

fn option_text(v: &Expr) -> String {
    match v {
        Expr::Value(v) => match &v.value {
            AstValue::SingleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// A column's DEFAULT made a value of its type, and the CHECK constraints that keep every
/// stored value a valid one of the type whatever writes it (an expression SQLite computed,
/// a changeset): SQLite would store text in an integer column, or a 9-character string in
/// a varchar(8). Each check is named by the error it raises, "[SQLSTATE] message", which
/// `error.rs` turns back into that SQLSTATE. Idempotent: a stored definition read again is
/// left as it is.
/// A column definition's options for `column`'s type: its DEFAULT as an assignment of that
/// type, and the checks that keep only values of the type (see `type_checks`).
pub fn typed_column_options(
    column: &Column,
    options: &mut Vec<ast::ColumnOptionDef>,
) -> Result<()> {
    column_definition(column, options)
}

fn column_definition(column: &Column, options: &mut Vec<ast::ColumnOptionDef>) -> Result<()> {
    let (name, ty) = (&column.name, column.ty);
    for opt in options.iter_mut() {
        if let ColumnOption::Default(e) = &mut opt.option {
            match literal_value(e) {
                Some(Value::Null) => {}
                Some(v) => *e = literal_expr(&assigned(v, column)?),
                None => {
                    let inner = match std::mem::replace(e, Expr::value(AstValue::Null)) {
                        Expr::Nested(inner) => *inner,
                        other => other,
                    };
                    let from = expr_type(&inner, &[]);
                    let wrapped =
                        matches!(&inner, Expr::Function(f) if function_name(f) == "cairn_assign");
                    let inner = match from {
                        Some(from) if !wrapped && from != ty => call(
                            "cairn_assign",
                            vec![
                                inner,
                                Expr::value(AstValue::SingleQuotedString(ty.name().into())),
                                Expr::value(AstValue::SingleQuotedString(from.name().into())),
                            ],
                        ),
                        _ => inner,
                    };
                    *e = Expr::Nested(Box::new(inner));
                }
            }
        }
    }
    let has_checks = options
        .iter()
        .any(|o| o.name.as_ref().is_some_and(|n| n.value.starts_with('[')));
    if has_checks {
        return Ok(());
    }
    for (code, message, check) in type_checks(column) {
        let expr = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&check)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| Error::internal(format!("type check for column \"{name}\": {e}")))?;
        options.push(ast::ColumnOptionDef {
            name: Some(Ident::with_quote(
                '"',
                crate::error::coded_message(code, &message),
            )),
            option: ColumnOption::Check(ast::CheckConstraint {
                name: None,
                expr: Box::new(expr),
                no_inherit: false,
                enforced: None,
            }),
        });
    }
    Ok(())
}

/// (SQLSTATE, message, SQLite condition) for each check a column of this type needs.
fn type_checks(column: &Column) -> Vec<(&'static str, String, String)> {
    let c = quote_ident(&column.name);
    let ty = column.ty;
    let mismatch = |what: &str| {
        (
            sqlstate::DATATYPE_MISMATCH,
            format!(
                "column \"{}\" is of type {} but the value is {what}",
                column.name,
                ty.name()
            ),
        )
    };
    let digits = "[0-9][0-9]";
    let date = format!("{digits}{digits}-[01][0-9]-[0-3][0-9]");
    let time = "[0-2][0-9]:[0-5][0-9]:[0-6][0-9]";
    let mut checks = Vec::new();
    let mut push = |(code, message): (&'static str, String), check: String| {
        checks.push((code, message, check))
    };
    match ty {
        PgType::Bool => push(mismatch("not a boolean"), format!("{c} IN (0, 1)")),
        PgType::Int2 | PgType::Int4 | PgType::Int8 => {
            push(mismatch("not an integer"), format!("typeof({c}) IN ('integer', 'null')"));
            let range = match ty {
                PgType::Int2 => Some(("smallint", i16::MIN as i64, i16::MAX as i64)),
                PgType::Int4 => Some(("integer", i32::MIN as i64, i32::MAX as i64)),
                _ => None,
            };
            if let Some((name, lo, hi)) = range {
                push(
                    (sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, format!("{name} out of range")),
                    format!("{c} BETWEEN {lo} AND {hi}"),
                );
            }
        }
        PgType::Float4 | PgType::Float8 => push(
            mismatch("not a number"),
            format!("typeof({c}) IN ('real', 'integer', 'null') OR {c} = 'NaN'"),
        ),
        PgType::Numeric => {
            push(
                mismatch("not a number"),
                format!(
                    "typeof({c}) IN ('integer', 'real', 'null') OR {c} IN ('NaN', 'Infinity', '-Infinity') \
                     OR (glob('*[0-9]*', {c}) AND NOT glob('*[^0-9.-]*', {c}))"
                ),
            );
            if let Some(types::Typmod::Numeric { precision, scale }) = column.typmod {
                if precision - scale <= 300 {
                    push(
                        (
                            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                            format!(
                                "numeric field overflow: a field with precision {precision}, scale {scale} \
                                 must round to an absolute value less than 10^{}",
                                precision - scale
                            ),
                        ),
                        format!("{c} IN ('NaN', 'Infinity', '-Infinity') OR abs({c}) < 1e{}", precision - scale),
                    );
                }
            }
        }
        PgType::Text | PgType::Varchar | PgType::Bpchar => {
            push(mismatch("not text"), format!("typeof({c}) IN ('text', 'null')"));
            if let Some(m @ types::Typmod::Length(n)) = column.typmod {
                push(
                    (sqlstate::STRING_DATA_RIGHT_TRUNCATION, format!("value too long for type {}", m.type_name(ty))),
                    format!("length({c}) <= {n}"),
                );
            }
        }
        PgType::Json | PgType::Jsonb => push(
            (sqlstate::INVALID_TEXT_REPRESENTATION, format!("invalid input syntax for type {}", ty.name())),
            format!("json_valid({c})"),
        ),
        PgType::Bytea => push(mismatch("not bytes"), format!("typeof({c}) IN ('blob', 'null')")),
        PgType::Date => push(
            mismatch("not a date"),
            format!("glob('{date}', {c}) OR {c} IN ('infinity', '-infinity')"),
        ),
        PgType::Timestamp => push(
            mismatch("not a timestamp"),
            format!(
                "(glob('{date} {time}', {c}) OR glob('{date} {time}.[0-9]*', {c})) AND length({c}) <= 26 \
                 OR {c} IN ('infinity', '-infinity')"
            ),
        ),
        PgType::Timestamptz => push(
            mismatch("not a timestamp with time zone"),
            format!(
                "(glob('{date} {time}+00', {c}) OR glob('{date} {time}.[0-9]*+00', {c})) AND length({c}) <= 29 \
                 OR {c} IN ('infinity', '-infinity')"
            ),
        ),
        PgType::Uuid => push(
            mismatch("not a uuid"),
            format!("length({c}) = 36 AND NOT glob('*[^0-9a-f-]*', {c})"),
        ),
        PgType::Interval | PgType::Name | PgType::Char => {
            push(mismatch("not text"), format!("typeof({c}) IN ('text', 'null')"))
        }
        PgType::Oid => push(
            (sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, "oid out of range".to_string()),
            format!("typeof({c}) IN ('integer', 'null') AND {c} BETWEEN 0 AND 4294967295"),
        ),
        _ if ty.element().is_some() => push(
            mismatch("not an array"),
            format!("json_valid({c}) AND json_type({c}) = 'array'"),
        ),
        _ => {}
    }
    checks
}

/// A CREATE TABLE's constraints and columns (for re-reading a stored table's DDL).
pub fn create_table_info(create: &mut ast::CreateTable) -> Result<CreateTable> {
    create_table(create)
}

fn create_table(create: &mut ast::CreateTable) -> Result<CreateTable> {
    if create.temporary {
        return Err(Error::unsupported("CREATE TEMPORARY TABLE"));
    }
    if create.query.is_some() {
        return Err(Error::unsupported("CREATE TABLE ... AS"));
    }
    let table = object_name(&create.name);
    if is_internal(&table) {
        return Err(Error::sql(
            sqlstate::RESERVED_NAME,
            format!("table name \"{table}\" is reserved"),
        ));
    }
    let mut primary_key: Vec<String> = Vec::new();
    let mut uniques: Vec<Vec<String>> = Vec::new();
    let mut references: Vec<ForeignKey> = Vec::new();
    for c in &create.constraints {
        match c {
            TableConstraint::PrimaryKey(pk) => {
                primary_key = column_list(&pk.columns);
                uniques.insert(0, primary_key.clone());
            }
            TableConstraint::Unique(u) => uniques.push(column_list(&u.columns)),
            TableConstraint::ForeignKey(fk) => references.push(ForeignKey {
                columns: fk.columns.iter().map(ident_name).collect(),
                table: object_name(&fk.foreign_table),
                referred: fk.referred_columns.iter().map(ident_name).collect(),
            }),
            _ => {}
        }
    }
    let mut columns = Vec::new();
    let mut serial = None;
    let mut identity = None;
    for col in create.columns.iter_mut() {
        let name = ident_name(&col.name);
        for opt in &col.options {
            match &opt.option {
                ColumnOption::PrimaryKey(_) => {
                    primary_key = vec![name.clone()];
                    uniques.insert(0, vec![name.clone()]);
                }
                ColumnOption::Unique(_) => uniques.push(vec![name.clone()]),
                ColumnOption::ForeignKey(fk) => references.push(ForeignKey {
                    columns: vec![name.clone()],
                    table: object_name(&fk.foreign_table),
                    referred: fk.referred_columns.iter().map(ident_name).collect(),
                }),
                _ => {}
            }
        }
        // `GENERATED { ALWAYS | BY DEFAULT } AS IDENTITY`: numbered like a serial column.
        let generated = col.options.iter().position(|o| {
            matches!(
                &o.option,
                ColumnOption::Generated {
                    generation_expr: None,
                    generated_as: ast::GeneratedAs::Always | ast::GeneratedAs::ByDefault,
                    ..
                }
            )
        });
        if let Some(at) = generated {
            let ColumnOption::Generated { generated_as, .. } = col.options.remove(at).option else {
                unreachable!("found above");
            };
            identity = Some(crate::catalog::Identity {
                column: name.clone(),
                always: generated_as == ast::GeneratedAs::Always,
            });
        }
        let serial_type = serial_kind(&col.data_type).or_else(|| {
            generated
                .and_then(|_| declared_type(&col.data_type).ok())
                .filter(|t| matches!(t, PgType::Int2 | PgType::Int4 | PgType::Int8))
        });
        if generated.is_some() && serial_type.is_none() {
            return Err(Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "identity column type must be smallint, integer, or bigint (column \"{name}\")"
                ),
            ));
        }
        let ty = match serial_type {
            Some(ty) => {
                if primary_key.len() != 1 || primary_key[0] != name {
                    let table_level = create.constraints.iter().any(|c| {
                        matches!(c, TableConstraint::PrimaryKey(pk) if column_list(&pk.columns) == [name.clone()])
                    });
                    if !table_level {
                        let what = if generated.is_some() {
                            "identity"
                        } else {
                            "serial"
                        };
                        return Err(Error::unsupported(format!("{what} column \"{name}\" that is not the table's single-column primary key")));
                    }
                }
                // SQLite allocates ids only for a column declared exactly INTEGER PRIMARY KEY.
                col.data_type = sqlite_type("INTEGER");
                serial = Some(name.clone());
                ty
            }
            None => declared_type(&col.data_type)?,
        };
        let column = Column {
            typmod: types::Typmod::of_declared(&col.data_type.to_string(), ty)?,
            name,
            ty,
        };
        column_definition(&column, &mut col.options)?;
        columns.push(column);
    }
    let partition_by = match create.partition_by.take().map(|b| *b) {
        None => None,
        Some(Expr::Function(f)) => {
            let args = function_args(&f);
            let column = match args.as_slice() {
                [Expr::Identifier(i)] => ident_name(i),
                _ => return Err(Error::unsupported("PARTITION BY other than one column")),
            };
            match function_name(&f).as_str() {
                "list" => Some(PartitionBy::List(column)),
                "hash" => Some(PartitionBy::Hash(column)),
                other => {
                    return Err(Error::unsupported(format!(
                        "PARTITION BY {}",
                        other.to_uppercase()
                    )))
                }
            }
        }
        Some(other) => return Err(Error::unsupported(format!("PARTITION BY {other}"))),
    };
    let mut shard_count = None;
    let mut colocate_with = None;
    let mut cache_ttl = None;
    let mut replication_factor = None;
    let mut zones = Vec::new();
    if let ast::CreateTableOptions::With(options) = &create.table_options {
        for o in options {
            let ast::SqlOption::KeyValue { key, value } = o else {
                return Err(Error::unsupported(format!("table option {o}")));
            };
            let text = option_text(value);
            match ident_name(key).as_str() {
                "shard_count" => {
                    let n: u32 = text
                        .parse()
                        .ok()
                        .filter(|n| (1..=limits::SHARDS_PER_TABLE_MAX).contains(n))
                        .ok_or_else(|| {
                            Error::sql(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                format!(
                                    "shard_count must be between 1 and {}",
                                    limits::SHARDS_PER_TABLE_MAX
                                ),
                            )
                        })?;
                    shard_count = Some(n);
                }
                "colocate_with" => colocate_with = Some(text.to_lowercase()),
                "cache_ttl" => cache_ttl = parse_cache_ttl(&text)?,
                "replication_factor" => replication_factor = Some(parse_replication_factor(&text)?),
                "zones" => {
                    zones = text
                        .split(',')
                        .map(|z| z.trim().to_string())
                        .filter(|z| !z.is_empty())
                        .collect()
                }
                // PostgreSQL's storage parameters tune its heap; SQLite has no equivalent.
                "fillfactor" | "parallel_workers" | "user_catalog_table" | "toast_tuple_target" => {
                }
                k if k.starts_with("autovacuum_")
                    || k.starts_with("vacuum_")
                    || k.starts_with("toast.")
                    || k.starts_with("log_autovacuum") => {}
                other => return Err(Error::unsupported(format!("table option {other}"))),
            }
        }
    }
    create.table_options = ast::CreateTableOptions::None;
    let partition_of = match create.partition_of.take() {
        None => {
            if !zones.is_empty() {
                return Err(Error::unsupported(
                    "zones on a table that is not a list partition",
                ));
            }
            None
        }
        Some(parent) => {
            let values = match create.for_values.take() {
                Some(ast::ForValues::In(list)) => {
                    let mut vs = Vec::new();
                    for e in &list {
                        let v = literal_value(e)
                            .and_then(|v| KeyValue::from_value(&v))
                            .ok_or_else(|| {
                                Error::unsupported(format!(
                                    "partition value {e} (use integer or text literals)"
                                ))
                            })?;
                        vs.push(v);
                    }
                    Some(vs)
                }
                Some(ast::ForValues::Default) => None,
                Some(other) => {
                    return Err(Error::unsupported(format!(
                        "partition bound FOR VALUES {other}"
                    )))
                }
                None => {
                    return Err(Error::sql(
                        sqlstate::SYNTAX_ERROR,
                        "PARTITION OF needs FOR VALUES IN (...) or DEFAULT",
                    ))
                }
            };
            Some(PartitionOf {
                parent: object_name(&parent),
                values,
                zones,
                replication_factor: replication_factor.take(),
            })
        }
    };
    let mut stmt = Statement::CreateTable(create.clone());
    rewrite(&mut stmt)?;
    let Statement::CreateTable(ast) = stmt else {
        unreachable!("rewrite keeps the statement kind")
    };
    Ok(CreateTable {
        name: table,
        if_not_exists: ast.if_not_exists,
        columns,
        ast: Box::new(ast),
        primary_key,
        uniques,
        references,
        serial,
        identity,
        partition_by,
        partition_of,
        shard_count,
        colocate_with,
        cache_ttl,
        replication_factor,
    })
}

/// A `replication_factor` option: replicas per shard, 1 to `REPLICATION_FACTOR_MAX`.
pub fn parse_replication_factor(text: &str) -> Result<u32> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=limits::REPLICATION_FACTOR_MAX).contains(n))
        .ok_or_else(|| {
            Error::sql(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "replication_factor must be between 1 and {} (set it alone in ALTER TABLE ... SET)",
                    limits::REPLICATION_FACTOR_MAX
                ),
            )
        })
}

/// A `cache_ttl` option: a duration (`'60s'`, `'5m'`), or `0`/`off` for no caching.
pub fn parse_cache_ttl(text: &str) -> Result<Option<std::time::Duration>> {
    let t = text.trim().to_lowercase();
    if t == "0" || t == "off" || t == "none" {
        return Ok(None);
    }
    match crate::units::duration(&t) {
        Some(d) if d.is_zero() => Ok(None),
        Some(d) if d <= limits::RESULT_CACHE_TTL_MAX => Ok(Some(d)),
        _ => Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "invalid value for cache_ttl: \"{text}\" (a duration such as 60s or 5m, at most {}s; 0 or off for none)",
                limits::RESULT_CACHE_TTL_MAX.as_secs()
            ),
        )),
    }
}

/// `ALTER TABLE t ADD [CONSTRAINT c] PRIMARY KEY (...)` or `... UNIQUE (...)`: a unique
/// index (named like PostgreSQL's: `t_pkey`, `t_a_b_key`, or the constraint's name).
fn add_unique_constraint(alter: &ast::AlterTable) -> Result<Option<DdlAction>> {
    let [ast::AlterTableOperation::AddConstraint { constraint, .. }] = alter.operations.as_slice()
    else {
        return Ok(None);
    };
    let table = object_name(&alter.name);
    let (name, columns) = match constraint {
        TableConstraint::PrimaryKey(pk) => (
            pk.name
                .as_ref()
                .map(ident_name)
                .unwrap_or_else(|| format!("{table}_pkey")),
            column_list(&pk.columns),
        ),
        TableConstraint::Unique(u) => {
            let columns = column_list(&u.columns);
            let name = u
                .name
                .as_ref()
                .map(ident_name)
                .unwrap_or_else(|| format!("{table}_{}_key", columns.join("_")));
            (name, columns)
        }
        _ => return Ok(None),
    };
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "CREATE UNIQUE INDEX {} ON {} ({})",
        quote_ident(&name),
        quote_ident(&table),
        quoted.join(", ")
    );
    Ok(Some(DdlAction::CreateIndex {
        table,
        name,
        sql,
        if_not_exists: false,
        unique: Some(columns),
    }))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A literal integer of a sequence option.
fn option_int(e: &Expr, what: &str) -> Result<i64> {
    match literal_value(e) {
        Some(Value::Integer(n)) => Ok(n),
        _ => Err(Error::sql(
            sqlstate::SYNTAX_ERROR,
            format!("{what} must be an integer"),
        )),
    }
}

/// A sequence's definition with PostgreSQL's defaults (ascending from 1, up to the type's
/// maximum; descending from -1, down to its minimum).
pub fn sequence_definition(
    name: String,
    data_type: Option<&DataType>,
    options: &[ast::SequenceOptions],
    owned_by: Option<&ObjectName>,
) -> Result<crate::catalog::Sequence> {
    use ast::SequenceOptions as O;
    let ty = match data_type {
        None => PgType::Int8,
        Some(d) => match declared_type(d)? {
            t @ (PgType::Int2 | PgType::Int4 | PgType::Int8) => t,
            _ => {
                return Err(Error::sql(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "sequence type must be smallint, integer, or bigint",
                ))
            }
        },
    };
    let (type_min, type_max) = match ty {
        PgType::Int2 => (i16::MIN as i64, i16::MAX as i64),
        PgType::Int4 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    };
    let mut increment = 1;
    let (mut min, mut max, mut start, mut cache, mut cycle) = (None, None, None, 1, false);
    for o in options {
        match o {
            O::IncrementBy(e, _) => increment = option_int(e, "INCREMENT")?,
            O::MinValue(e) => min = e.as_ref().map(|e| option_int(e, "MINVALUE")).transpose()?,
            O::MaxValue(e) => max = e.as_ref().map(|e| option_int(e, "MAXVALUE")).transpose()?,
            O::StartWith(e, _) => start = Some(option_int(e, "START")?),
            O::Cache(e) => cache = option_int(e, "CACHE")?,
            // The parser's flag says NO CYCLE.
            O::Cycle(no) => cycle = !*no,
        }
    }
    if increment == 0 {
        return Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            "INCREMENT must not be zero",
        ));
    }
    let min = min.unwrap_or(if increment > 0 { 1 } else { type_min });
    let max = max.unwrap_or(if increment > 0 { type_max } else { -1 });
    let start = start.unwrap_or(if increment > 0 { min } else { max });
    if min >= max || start < min || start > max || cache < 1 {
        return Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid sequence bounds: START {start}, MINVALUE {min}, MAXVALUE {max}, CACHE {cache}"),
        ));
    }
    let owned_by = match owned_by {
        None => None,
        Some(n) => match n.0.as_slice() {
            [.., ObjectNamePart::Identifier(t), ObjectNamePart::Identifier(c)] => {
                Some((ident_name(t), ident_name(c)))
            }
            _ => None,
        },
    };
    Ok(crate::catalog::Sequence {
        name,
        data_type: ty,
        start,
        increment,
        min,
        max,
        cache,
        cycle,
        owned_by,
    })
}

/// What an ALTER TABLE becomes: added columns (SQLite adds them in place), or changes the
/// shards make by rebuilding the table.
enum Altered {
    Columns(String, Vec<Column>),
    Rebuild(Vec<AlterChange>),
}

/// A column's DEFAULT as SQLite evaluates it for a value of the column's type.
fn default_expr(column: &Column, e: Expr) -> Result<Expr> {
    let mut options = vec![ast::ColumnOptionDef {
        name: None,
        option: ColumnOption::Default(e),
    }];
    column_definition(column, &mut options)?;
    match options.into_iter().next().map(|o| o.option) {
        Some(ColumnOption::Default(e)) => Ok(e),
        _ => Err(Error::internal("default rewrite")),
    }
}

fn alter_table(alter: &mut ast::AlterTable, table: Option<&Table>) -> Result<Altered> {
    let template = ast::AlterTable {
        operations: Vec::new(),
        ..alter.clone()
    };
    let mut sql = String::new();
    let mut added = Vec::new();
    let mut changes = Vec::new();
    let column_of = |name: &str| -> Result<Column> {
        let t = table.ok_or_else(|| {
            Error::sql(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{}\" does not exist", object_name(&alter.name)),
            )
        })?;
        t.column(name).cloned().ok_or_else(|| {
            Error::sql(
                sqlstate::UNDEFINED_COLUMN,
                format!(
                    "column \"{name}\" of relation \"{}\" does not exist",
                    t.name
                ),
            )
        })
    };
    let in_place = alter
        .operations
        .iter()
        .all(|op| matches!(op, ast::AlterTableOperation::AddColumn { .. }));
    for op in alter.operations.iter_mut() {
        match op {
            ast::AlterTableOperation::AddColumn { column_def, .. } => {
                let name = ident_name(&column_def.name);
                let ty = declared_type(&column_def.data_type)?;
                let column = Column {
                    typmod: types::Typmod::of_declared(&column_def.data_type.to_string(), ty)?,
                    name,
                    ty,
                };
                column_definition(&column, &mut column_def.options)?;
                let mut s = Statement::AlterTable(ast::AlterTable {
                    operations: vec![ast::AlterTableOperation::AddColumn {
                        column_keyword: true,
                        if_not_exists: false,
                        column_def: column_def.clone(),
                        column_position: None,
                    }],
                    ..template.clone()
                });
                rewrite(&mut s)?;
                if in_place {
                    sql.push_str(&format!("{s};"));
                    added.push(column);
                } else {
                    let Statement::AlterTable(a) = s else {
                        unreachable!("rewrite keeps the statement kind")
                    };
                    let Some(ast::AlterTableOperation::AddColumn { column_def, .. }) =
                        a.operations.into_iter().next()
                    else {
                        unreachable!("built above")
                    };
                    changes.push(AlterChange::AddColumn {
                        def: Box::new(column_def),
                        column,
                    });
                }
            }
            ast::AlterTableOperation::DropColumn {
                column_names,
                if_exists,
                ..
            } => {
                for name in column_names.iter() {
                    changes.push(AlterChange::DropColumn {
                        name: ident_name(name),
                        if_exists: *if_exists,
                    });
                }
            }
            ast::AlterTableOperation::AlterColumn { column_name, op } => {
                let name = ident_name(column_name);
                let column = column_of(&name)?;
                changes.push(match op {
                    ast::AlterColumnOperation::SetNotNull => AlterChange::NotNull {
                        column: name,
                        not_null: true,
                    },
                    ast::AlterColumnOperation::DropNotNull => AlterChange::NotNull {
                        column: name,
                        not_null: false,
                    },
                    ast::AlterColumnOperation::DropDefault => AlterChange::Default {
                        column: name,
                        default: None,
                    },
                    ast::AlterColumnOperation::SetDefault { value } => {
                        let mut e = value.clone();
                        let mut s = Statement::Query(Box::new(ast::Query {
                            body: Box::new(SetExpr::Select(Box::new(ast::Select {
                                projection: vec![SelectItem::UnnamedExpr(e.clone())],
                                ..empty_select()
                            }))),
                            ..empty_query()
                        }));
                        rewrite(&mut s)?;
                        if let Statement::Query(q) = s {
                            if let SetExpr::Select(sel) = *q.body {
                                if let Some(SelectItem::UnnamedExpr(x)) =
                                    sel.projection.into_iter().next()
                                {
                                    e = x;
                                }
                            }
                        }
                        AlterChange::Default {
                            column: name,
                            default: Some(Box::new(default_expr(&column, e)?)),
                        }
                    }
                    ast::AlterColumnOperation::SetDataType {
                        data_type, using, ..
                    } => {
                        let ty = declared_type(data_type)?;
                        let new = Column {
                            name: name.clone(),
                            ty,
                            typmod: types::Typmod::of_declared(&data_type.to_string(), ty)?,
                        };
                        let using = match using {
                            None => None,
                            Some(u) => {
                                let t = table.map(|t| vec![t]).unwrap_or_default();
                                let mut s = parse(&format!("SELECT {u}"))?
                                    .pop()
                                    .ok_or_else(|| Error::internal("USING"))?;
                                super::typed::rewrite(&mut s, &t)?;
                                rewrite(&mut s)?;
                                match s {
                                    Statement::Query(q) => match *q.body {
                                        SetExpr::Select(sel) => {
                                            match sel.projection.into_iter().next() {
                                                Some(SelectItem::UnnamedExpr(x)) => {
                                                    Some(Box::new(x))
                                                }
                                                _ => None,
                                            }
                                        }
                                        _ => None,
                                    },
                                    _ => None,
                                }
                            }
                        };
                        AlterChange::Type {
                            column: new,
                            data_type: Box::new(data_type.clone()),
                            using,
                        }
                    }
                    other => return Err(Error::unsupported(format!("ALTER COLUMN ... {other}"))),
                });
            }
            ast::AlterTableOperation::AddConstraint { constraint, .. } => match constraint {
                TableConstraint::ForeignKey(fk) => {
                    let key = ForeignKey {
                        columns: fk.columns.iter().map(ident_name).collect(),
                        table: object_name(&fk.foreign_table),
                        referred: fk.referred_columns.iter().map(ident_name).collect(),
                    };
                    // Checked when each statement runs: a shard's writer never commits the
                    // SQLite transaction where a deferred check would run.
                    let mut fk = fk.clone();
                    fk.characteristics = None;
                    changes.push(AlterChange::ForeignKey {
                        key,
                        constraint: Box::new(TableConstraint::ForeignKey(fk)),
                    });
                }
                TableConstraint::Check(_) => {
                    let mut s = Statement::AlterTable(ast::AlterTable {
                        operations: vec![ast::AlterTableOperation::AddConstraint {
                            constraint: constraint.clone(),
                            not_valid: false,
                        }],
                        ..template.clone()
                    });
                    let t = table.map(|t| vec![t]).unwrap_or_default();
                    super::typed::rewrite(&mut s, &t)?;
                    rewrite(&mut s)?;
                    if let Statement::AlterTable(a) = s {
                        if let Some(ast::AlterTableOperation::AddConstraint {
                            constraint, ..
                        }) = a.operations.into_iter().next()
                        {
                            changes.push(AlterChange::Check(Box::new(constraint)));
                        }
                    }
                }
                other => {
                    return Err(Error::unsupported(format!(
                        "ALTER TABLE ADD {}",
                        other
                            .to_string()
                            .split_whitespace()
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(" ")
                    )))
                }
            },
            other => {
                return Err(Error::unsupported(format!(
                    "ALTER TABLE {}",
                    other
                        .to_string()
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
        }
    }
    if in_place {
        Ok(Altered::Columns(sql, added))
    } else {
        Ok(Altered::Rebuild(changes))
    }
}

fn empty_select() -> ast::Select {
    let Some(Statement::Query(q)) = parse("SELECT 1").ok().and_then(|mut v| v.pop()) else {
        unreachable!("SELECT 1 parses")
    };
    match *q.body {
        SetExpr::Select(s) => *s,
        _ => unreachable!("SELECT 1 is a select"),
    }
}

fn empty_query() -> ast::Query {
    let Some(Statement::Query(q)) = parse("SELECT 1").ok().and_then(|mut v| v.pop()) else {
        unreachable!("SELECT 1 parses")
    };
    *q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rewrites_what_tools_send_and_leaves_the_rest() {
        assert_eq!(normalize("vacuum analyze pgbench_branches"), "VACUUM");
        assert_eq!(normalize("VACUUM (VERBOSE) t;"), "VACUUM");
        assert_eq!(
            normalize("vacuum t; drop table x"),
            "vacuum t; drop table x"
        );
        assert_eq!(
            normalize("copy pgbench_accounts from stdin with (freeze on)"),
            "copy pgbench_accounts from stdin with (freeze true)"
        );
        assert_eq!(
            normalize("COPY t FROM STDIN (HEADER off, FORMAT csv, FREEZE ON)"),
            "COPY t FROM STDIN (HEADER false, FORMAT csv, FREEZE true)"
        );
        assert_eq!(
            normalize("COPY t (header_on, freezer) FROM STDIN"),
            "COPY t (header_on, freezer) FROM STDIN"
        );
        assert_eq!(normalize("SELECT 'freeze on'"), "SELECT 'freeze on'");
    }

    #[test]
    fn pgbench_statements_parse() {
        for sql in [
            "create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)",
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            "copy pgbench_accounts from stdin with (freeze on)",
            "vacuum analyze pgbench_accounts",
            "alter table pgbench_branches add primary key (bid)",
            "END",
        ] {
            assert_eq!(parse(sql).map(|s| s.len()).ok(), Some(1), "{sql}");
        }
        let mut s = parse("alter table t add constraint k unique (a, b)").unwrap();
        let Statement::AlterTable(alter) = s.pop().unwrap() else {
            panic!("not ALTER TABLE")
        };
        let Some(DdlAction::CreateIndex {
            name, sql, unique, ..
        }) = add_unique_constraint(&alter).unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(name, "k");
        assert_eq!(sql, "CREATE UNIQUE INDEX \"k\" ON \"t\" (\"a\", \"b\")");
        assert_eq!(unique, Some(vec!["a".to_string(), "b".to_string()]));
    }
}

#[cfg(test)]
mod depth_tests {
    #[test]
    fn long_chains_are_refused_early() {
        let run = |sql: String| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || super::parse(&sql).map(|_| ()).map_err(|e| e.code()))
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(
            run(format!("SELECT 1{}", "+1".repeat(2_000_000))),
            Err("54001")
        );
        assert_eq!(
            run(format!(
                "SELECT 1 WHERE 1 = 1{}",
                " OR 1 = 1".repeat(300_000)
            )),
            Err("54001")
        );
        assert_eq!(
            run(format!("SELECT 'a'{}", " || 'a'".repeat(500_000))),
            Err("54001")
        );
        let n = crate::limits::EXPRESSION_OPERATORS_MAX;
        assert_eq!(run(format!("SELECT 1{}", "+1".repeat(n))), Ok(()));
        assert_eq!(run(format!("SELECT 1{}", "+1".repeat(n + 1))), Err("54001"));
    }

    #[test]
    fn translating_the_longest_chain_fits_a_worker_stack() {
        // A tokio worker's stack.
        let sql = format!(
            "SELECT 1{}",
            "+1".repeat(crate::limits::EXPRESSION_OPERATORS_MAX)
        );
        let ok = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let stmt = super::parse(&sql).unwrap().pop().unwrap();
                let catalog = crate::catalog::Catalog::default();
                super::translate(stmt, &catalog, &[]).is_ok()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(ok);
    }
}
