//! Cairn's one error type. Variants are grouped by what the caller does next: report the
//! client's mistake (`Sql`), try another node (`NotLeader`), retry later (`Unavailable`,
//! `Retry`), or treat as a bug/corruption (`Internal`, `Corrupt`). Every variant maps to a
//! PostgreSQL SQLSTATE so each API can report it in its own wire format.

use crate::ids::NodeId;

/// SQLSTATE codes used by Cairn (PostgreSQL's appendix A).
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    /// A wrong password, or none where one is needed.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// A client not allowed to connect as it did (e.g. without TLS where TLS is required).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const INTEGRITY_CONSTRAINT_VIOLATION: &str = "23000";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const IN_FAILED_TRANSACTION: &str = "25P02";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const INVALID_SAVEPOINT_SPECIFICATION: &str = "3B001";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const UNDEFINED_PARAMETER: &str = "42P02";
    pub const INVALID_PARAMETER_TYPE: &str = "08P01";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const SEQUENCE_GENERATOR_LIMIT_EXCEEDED: &str = "2200H";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const RESERVED_NAME: &str = "42939";
    pub const INVALID_OBJECT_DEFINITION: &str = "42P17";
    pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const INVALID_ARGUMENT_FOR_POWER: &str = "2201F";
    pub const INVALID_REGULAR_EXPRESSION: &str = "2201B";

    pub(crate) const ALL: &[&str] = &[
        SYNTAX_ERROR,
        INVALID_PASSWORD,
        INVALID_AUTHORIZATION_SPECIFICATION,
        UNDEFINED_TABLE,
        UNDEFINED_COLUMN,
        AMBIGUOUS_COLUMN,
        UNDEFINED_FUNCTION,
        DUPLICATE_TABLE,
        DUPLICATE_OBJECT,
        DATATYPE_MISMATCH,
        UNDEFINED_OBJECT,
        FEATURE_NOT_SUPPORTED,
        UNIQUE_VIOLATION,
        NOT_NULL_VIOLATION,
        FOREIGN_KEY_VIOLATION,
        CHECK_VIOLATION,
        INTEGRITY_CONSTRAINT_VIOLATION,
        INVALID_TEXT_REPRESENTATION,
        DATA_EXCEPTION,
        DIVISION_BY_ZERO,
        NUMERIC_VALUE_OUT_OF_RANGE,
        STRING_DATA_RIGHT_TRUNCATION,
        INVALID_PARAMETER_VALUE,
        PROTOCOL_VIOLATION,
        IN_FAILED_TRANSACTION,
        ACTIVE_SQL_TRANSACTION,
        NO_ACTIVE_SQL_TRANSACTION,
        IDLE_IN_TRANSACTION_TIMEOUT,
        SERIALIZATION_FAILURE,
        INVALID_SAVEPOINT_SPECIFICATION,
        PROGRAM_LIMIT_EXCEEDED,
        STATEMENT_TOO_COMPLEX,
        INSUFFICIENT_RESOURCES,
        QUERY_CANCELED,
        CANNOT_CONNECT_NOW,
        INTERNAL_ERROR,
        DATA_CORRUPTED,
        UNDEFINED_PARAMETER,
        CANT_CHANGE_RUNTIME_PARAM,
        OBJECT_NOT_IN_PREREQUISITE_STATE,
        DEPENDENT_OBJECTS_STILL_EXIST,
        SEQUENCE_GENERATOR_LIMIT_EXCEEDED,
        INSUFFICIENT_PRIVILEGE,
        DUPLICATE_COLUMN,
        WRONG_OBJECT_TYPE,
        RESERVED_NAME,
        INVALID_OBJECT_DEFINITION,
        TRANSACTION_RESOLUTION_UNKNOWN,
        DATETIME_FIELD_OVERFLOW,
        INVALID_ARGUMENT_FOR_POWER,
        OBJECT_IN_USE,
    ];

    /// The static code equal to `code` (from another node), or XX000 for one Cairn never uses.
    pub fn intern(code: &str) -> &'static str {
        ALL.iter()
            .find(|c| **c == code)
            .copied()
            .unwrap_or(INTERNAL_ERROR)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client's statement or input is at fault; `code` is its SQLSTATE.
    #[error("{message}")]
    Sql { code: &'static str, message: String },
    /// This node does not lead the shard; `leader` is the best hint known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The operation may succeed if retried (conflict, leadership change, timeout). Only
    /// where it is certain that nothing was applied.
    #[error("{0}")]
    Retry(String),
    /// A write whose outcome is unknown: it was proposed (or sent to the node that proposes
    /// it) and no answer came. It may have committed; retrying may apply it twice.
    #[error("the outcome of the statement is unknown (it may have been applied): {0}")]
    Ambiguous(String),
    /// The node cannot serve the request now (shutting down, no quorum).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed a check. The replica stops rather than diverge.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A bug or an unexpected failure of the local machine (disk, threads).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A write that was handed on and got no answer: its outcome is unknown.
pub fn ambiguous(what: impl std::fmt::Display) -> Error {
    Error::Ambiguous(what.to_string())
}

impl Error {
    pub fn sql(code: &'static str, message: impl Into<String>) -> Self {
        Error::Sql {
            code,
            message: message.into(),
        }
    }

    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        Error::sql(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} is not supported"),
        )
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }

    /// The SQLSTATE reported to clients for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Sql { code, .. } => code,
            Error::NotLeader { .. } | Error::Unavailable(_) => sqlstate::CANNOT_CONNECT_NOW,
            Error::Retry(_) => sqlstate::SERIALIZATION_FAILURE,
            Error::Ambiguous(_) => sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
            Error::Corrupt(_) => sqlstate::DATA_CORRUPTED,
            Error::Internal(_) => sqlstate::INTERNAL_ERROR,
        }
    }

    /// Whether the HTTP API should answer 4xx (the client's fault) rather than 5xx.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Error::Sql { .. })
    }
}

/// SQLite errors met while executing a client's statement become SQL errors with the
/// SQLSTATE PostgreSQL would use for the same condition.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        let message = e.to_string();
        let code = match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.extended_code {
                ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => {
                    sqlstate::UNIQUE_VIOLATION
                }
                ffi::SQLITE_CONSTRAINT_NOTNULL => sqlstate::NOT_NULL_VIOLATION,
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlstate::FOREIGN_KEY_VIOLATION,
                ffi::SQLITE_CONSTRAINT_CHECK => {
                    coded(&message).map_or(sqlstate::CHECK_VIOLATION, |(code, _)| code)
                }
                ffi::SQLITE_CONSTRAINT_DATATYPE => sqlstate::DATATYPE_MISMATCH,
                c if c & 0xff == ffi::SQLITE_CONSTRAINT => sqlstate::INTEGRITY_CONSTRAINT_VIOLATION,
                c if c & 0xff == ffi::SQLITE_TOOBIG => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                c if c & 0xff == ffi::SQLITE_INTERRUPT => sqlstate::QUERY_CANCELED,
                c if c & 0xff == ffi::SQLITE_ERROR => classify_sqlite_message(&message),
                c if c & 0xff == ffi::SQLITE_RANGE => sqlstate::UNDEFINED_PARAMETER,
                c if c & 0xff == ffi::SQLITE_MISMATCH => sqlstate::DATATYPE_MISMATCH,
                c if c & 0xff == ffi::SQLITE_FULL || c & 0xff == ffi::SQLITE_IOERR => {
                    return Error::Internal(message)
                }
                c if c & 0xff == ffi::SQLITE_CORRUPT => return Error::Corrupt(message),
                // Not the statement's fault: the file was busy, memory ran out, or a code
                // Cairn does not know. Never a SQL error, which a DDL job would take as
                // the shard refusing the change (and undo it everywhere).
                c if c & 0xff == ffi::SQLITE_BUSY || c & 0xff == ffi::SQLITE_LOCKED => {
                    return Error::Unavailable(format!("the replica is busy: {message}"))
                }
                _ => return Error::Internal(message),
            },
            rusqlite::Error::InvalidParameterCount(..)
            | rusqlite::Error::InvalidParameterName(_) => sqlstate::UNDEFINED_PARAMETER,
            rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::InvalidColumnType(..) => {
                sqlstate::DATATYPE_MISMATCH
            }
            rusqlite::Error::MultipleStatement => sqlstate::SYNTAX_ERROR,
            rusqlite::Error::UserFunctionError(e) => {
                let msg = e.to_string();
                return Error::Sql {
                    code: classify_sqlite_message(&msg),
                    message: strip_sqlite_noise(&msg),
                };
            }
            rusqlite::Error::SqlInputError { msg, .. } => {
                return untranslated(Error::Sql {
                    code: classify_sqlite_message(msg),
                    message: strip_sqlite_noise(msg),
                });
            }
            _ => sqlstate::INTERNAL_ERROR,
        };
        untranslated(Error::Sql {
            code,
            message: strip_sqlite_noise(&message),
        })
    }
}

/// A SQLite syntax error: every statement passed the PostgreSQL parser first, so it is
/// PostgreSQL syntax Cairn does not translate yet (0A000), not the client's mistake.
fn untranslated(e: Error) -> Error {
    match e {
        Error::Sql { code, message } if code == sqlstate::SYNTAX_ERROR => Error::Sql {
            code: sqlstate::FEATURE_NOT_SUPPORTED,
            message: format!(
                "this statement uses PostgreSQL syntax Cairn cannot run yet (SQLite: {message})"
            ),
        },
        other => other,
    }
}

/// SQLite reports most statement errors as plain SQLITE_ERROR; its message says which.
fn classify_sqlite_message(message: &str) -> &'static str {
    if let Some((code, _)) = coded(message) {
        code
    } else if message.contains("no such table") {
        sqlstate::UNDEFINED_TABLE
    } else if message.contains("ambiguous column name") {
        sqlstate::AMBIGUOUS_COLUMN
    } else if message.contains("no such column")
        || message.contains("has no column named")
        || message.contains("cannot join using column")
    {
        sqlstate::UNDEFINED_COLUMN
    } else if message.contains("no such function") || message.contains("wrong number of arguments")
    {
        sqlstate::UNDEFINED_FUNCTION
    } else if message.contains("already exists") {
        sqlstate::DUPLICATE_TABLE
    } else if message.contains("syntax error") || message.contains("incomplete input") {
        sqlstate::SYNTAX_ERROR
    } else if message.contains("no such index") {
        sqlstate::UNDEFINED_OBJECT
    } else if message.contains("is not empty") {
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
    } else if message.contains("division by zero") {
        sqlstate::DIVISION_BY_ZERO
    } else if message.contains("integer overflow") || message.contains("out of range") {
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE
    } else if message.contains("CHECK constraint failed") {
        // ALTER TABLE ADD COLUMN checks existing rows and reports a plain error.
        sqlstate::CHECK_VIOLATION
    } else if message.contains("NOT NULL constraint failed") {
        sqlstate::NOT_NULL_VIOLATION
    } else {
        sqlstate::INTERNAL_ERROR
    }
}

fn strip_sqlite_noise(message: &str) -> String {
    match coded(message) {
        Some((_, text)) => text.to_string(),
        None => message.trim_end_matches('.').to_string(),
    }
}

/// A message that carries its SQLSTATE: "[22003] integer out of range", raised by Cairn's
/// SQL functions, or the name of a column's type check ("CHECK constraint failed: [22001]
/// value too long for type character varying(8)").
pub fn coded_message(code: &str, message: &str) -> String {
    format!("[{code}] {message}")
}

fn coded(message: &str) -> Option<(&'static str, &str)> {
    let start = message.find('[')?;
    let rest = &message[start + 1..];
    let code = rest.get(..5)?;
    let text = rest.get(5..)?.strip_prefix("] ")?;
    let known = sqlstate::ALL.iter().find(|c| **c == code)?;
    Some((known, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("x".into())).into()
    }

    #[test]
    fn machine_failures_are_not_sql_refusals() {
        // A DDL job undoes itself on a `Sql` error: a busy file or exhausted memory must
        // not look like a shard refusing the change.
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_BUSY),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_LOCKED),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_NOMEM),
            Error::Internal(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_PROTOCOL),
            Error::Internal(_)
        ));
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE).code(),
            sqlstate::UNIQUE_VIOLATION
        );
    }
}
