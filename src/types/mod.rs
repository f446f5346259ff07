//! PostgreSQL types as Cairn stores them in SQLite and as it sends them on the wire.
//!
//! A value has three forms here:
//! - **stored**: the `rusqlite::types::Value` kept in SQLite, chosen so that SQLite compares and
//!   sorts it like PostgreSQL would where it can;
//! - **text wire**: what PostgreSQL prints, and the (wider) set of spellings it accepts as input;
//! - **binary wire**: PostgreSQL's `send`/`recv` encoding.
//!
//! | type                                  | stored form                                         |
//! |---------------------------------------|-----------------------------------------------------|
//! | boolean                               | Integer 0 / 1                                       |
//! | smallint, integer, bigint             | Integer                                             |
//! | real, double precision                | Real; Text 'NaN' (SQLite stores a NaN REAL as NULL) |
//! | numeric                               | Integer, Real, or Text: the decimal as PG prints it |
//! | text, varchar, char, json(b), unknown | Text                                                |
//! | bytea                                 | Blob                                                |
//! | date                                  | Text 'YYYY-MM-DD'                                   |
//! | timestamp                             | Text 'YYYY-MM-DD HH:MM:SS[.ffffff]'                 |
//! | timestamp with time zone              | Text 'YYYY-MM-DD HH:MM:SS[.ffffff]+00', in UTC      |
//! | uuid                                  | Text, lowercase, hyphenated                         |
//!
//! Dates and timestamps may also be 'infinity' / '-infinity', which sort after / before every
//! stored date as text. Years run from 1 to 9999, so fixed-width text sorts chronologically.
//!
//! Every conversion passes through a `Datum`, the value in the in-memory shape of its type:
//! input (client text, client binary, or a loosely typed stored value) is parsed into a datum,
//! and a datum is written out as a stored value or in either wire format. `encode` accepts any
//! stored value that PostgreSQL could cast to the column type (SQLite's dynamic typing lets
//! e.g. Text '42' land in an integer column) and fails cleanly on the rest.

use crate::error::{sqlstate, Error, Result};
use rusqlite::types::Value;
use std::fmt::Write as _;

pub mod array;
pub mod interval;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Varchar,
    Bpchar,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Json,
    Jsonb,
    Uuid,
    Unknown,
    /// Months, days and microseconds, each signed.
    Interval,
    /// A system object's id (32 bits, unsigned).
    Oid,
    /// A system identifier (`name`, 63 bytes in PostgreSQL).
    Name,
    /// The one-byte `"char"` of the system catalogs (`relkind`, `contype`).
    Char,
    /// Space-separated vectors of the catalogs (`pg_index.indkey`, `proargtypes`).
    Int2Vector,
    OidVector,
    // One-dimensional arrays of the types above (`integer[]`, `text[]`, ...): see `array`.
    BoolArray,
    Int2Array,
    Int4Array,
    Int8Array,
    Float4Array,
    Float8Array,
    NumericArray,
    TextArray,
    VarcharArray,
    BpcharArray,
    ByteaArray,
    DateArray,
    TimestampArray,
    TimestamptzArray,
    JsonArray,
    JsonbArray,
    UuidArray,
    IntervalArray,
    OidArray,
    NameArray,
    CharArray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

pub const ALL_TYPES: [PgType; 45] = {
    use PgType::*;
    [
        Bool,
        Int2,
        Int4,
        Int8,
        Float4,
        Float8,
        Numeric,
        Text,
        Varchar,
        Bpchar,
        Bytea,
        Date,
        Timestamp,
        Timestamptz,
        Json,
        Jsonb,
        Uuid,
        Unknown,
        Interval,
        Oid,
        Name,
        Char,
        Int2Vector,
        OidVector,
        BoolArray,
        Int2Array,
        Int4Array,
        Int8Array,
        Float4Array,
        Float8Array,
        NumericArray,
        TextArray,
        VarcharArray,
        BpcharArray,
        ByteaArray,
        DateArray,
        TimestampArray,
        TimestamptzArray,
        JsonArray,
        JsonbArray,
        UuidArray,
        IntervalArray,
        OidArray,
        NameArray,
        CharArray,
    ]
};

impl PgType {
    /// A declared column type as written in CREATE TABLE / a cast, case-insensitive, with
    /// optional modifiers ("numeric(10,2)", "timestamp(3) with time zone"). Modifiers are
    /// checked for shape but not kept: lengths and precisions are not enforced.
    pub fn parse_declared(name: &str) -> Option<PgType> {
        use PgType::*;
        if let Some(element) = array::declared_element(name) {
            return PgType::parse_declared(element)?.array();
        }
        let lower = name.trim().to_ascii_lowercase();
        let (base, modifier) = match lower.find('(') {
            None => (lower.clone(), None),
            Some(open) => {
                let close = open + lower[open..].find(')')?;
                let modifier = lower[open + 1..close].trim();
                let shape_ok = !modifier.is_empty()
                    && modifier
                        .chars()
                        .all(|c| c.is_ascii_digit() || ", -".contains(c));
                if !shape_ok {
                    return None;
                }
                (
                    format!("{} {}", &lower[..open], &lower[close + 1..]),
                    Some(modifier),
                )
            }
        };
        if base.contains(['(', ')']) {
            return None;
        }
        let ty = match base
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
        {
            "boolean" | "bool" => Bool,
            "smallint" | "int2" | "smallserial" | "serial2" => Int2,
            "integer" | "int" | "int4" | "serial" | "serial4" => Int4,
            "bigint" | "int8" | "bigserial" | "serial8" => Int8,
            "real" | "float4" => Float4,
            "double precision" | "float8" => Float8,
            // float(p): up to 24 binary digits is real, up to 53 is double precision.
            "float" => {
                return match modifier.map(str::parse::<u32>) {
                    None => Some(Float8),
                    Some(Ok(1..=24)) => Some(Float4),
                    Some(Ok(25..=53)) => Some(Float8),
                    Some(_) => None,
                }
            }
            "numeric" | "decimal" => Numeric,
            "text" => Text,
            "varchar" | "character varying" | "char varying" => Varchar,
            "char" | "character" | "bpchar" => Bpchar,
            "bytea" => Bytea,
            "date" => Date,
            "timestamp" | "timestamp without time zone" => Timestamp,
            "timestamptz" | "timestamp with time zone" => Timestamptz,
            "json" => Json,
            "jsonb" => Jsonb,
            "uuid" => Uuid,
            "oid" => Oid,
            "name" => Name,
            "\"char\"" => Char,
            "int2vector" => Int2Vector,
            "oidvector" => OidVector,
            "interval" => Interval,
            // `interval day to second`, `interval hour`: fields restrict nothing here.
            fields if fields.starts_with("interval ") && interval::fields_ok(&fields[9..]) => {
                Interval
            }
            _ => return None,
        };
        let takes_modifier = matches!(
            ty,
            Numeric | Varchar | Bpchar | Timestamp | Timestamptz | Interval
        );
        (modifier.is_none() || takes_modifier).then_some(ty)
    }

    pub fn oid(self) -> u32 {
        use PgType::*;
        match self {
            Bool => 16,
            Bytea => 17,
            Int8 => 20,
            Int2 => 21,
            Int4 => 23,
            Text => 25,
            Json => 114,
            Float4 => 700,
            Float8 => 701,
            Unknown => 705,
            Bpchar => 1042,
            Varchar => 1043,
            Date => 1082,
            Timestamp => 1114,
            Timestamptz => 1184,
            Numeric => 1700,
            Uuid => 2950,
            Jsonb => 3802,
            Interval => 1186,
            Oid => 26,
            Name => 19,
            Char => 18,
            Int2Vector => 22,
            OidVector => 30,
            BoolArray => 1000,
            ByteaArray => 1001,
            CharArray => 1002,
            NameArray => 1003,
            Int2Array => 1005,
            Int4Array => 1007,
            TextArray => 1009,
            BpcharArray => 1014,
            VarcharArray => 1015,
            Int8Array => 1016,
            Float4Array => 1021,
            Float8Array => 1022,
            OidArray => 1028,
            TimestampArray => 1115,
            DateArray => 1182,
            TimestamptzArray => 1185,
            IntervalArray => 1187,
            NumericArray => 1231,
            UuidArray => 2951,
            JsonArray => 199,
            JsonbArray => 3807,
        }
    }

    /// The name `pg_type.typname` gives it: `int4`, `_int4` for its array, `varchar`.
    pub fn typname(self) -> String {
        use PgType::*;
        if let (true, Some(element)) = (self.is_array(), self.element()) {
            return format!("_{}", element.typname());
        }
        match self {
            Bool => "bool",
            Int2 => "int2",
            Int4 => "int4",
            Int8 => "int8",
            Float4 => "float4",
            Float8 => "float8",
            Numeric => "numeric",
            Text => "text",
            Varchar => "varchar",
            Bpchar => "bpchar",
            Bytea => "bytea",
            Date => "date",
            Timestamp => "timestamp",
            Timestamptz => "timestamptz",
            Json => "json",
            Jsonb => "jsonb",
            Uuid => "uuid",
            Unknown => "unknown",
            Interval => "interval",
            Oid => "oid",
            Name => "name",
            Char => "char",
            Int2Vector => "int2vector",
            OidVector => "oidvector",
            _ => "unknown",
        }
        .to_string()
    }

    /// The type of an array's (or a vector's) elements; None for a type that is neither.
    pub fn element(self) -> Option<PgType> {
        use PgType::*;
        match self {
            Int2Vector => Some(Int2),
            OidVector => Some(Oid),
            _ => array::ARRAYS
                .iter()
                .find(|(array, _)| *array == self)
                .map(|(_, element)| *element),
        }
    }

    /// The array type whose elements are of this type, if PostgreSQL has one Cairn keeps.
    pub fn array(self) -> Option<PgType> {
        array::ARRAYS
            .iter()
            .find(|(_, element)| *element == self)
            .map(|(array, _)| *array)
    }

    /// A one-dimensional array type (not a vector).
    pub fn is_array(self) -> bool {
        self.element().is_some() && !matches!(self, PgType::Int2Vector | PgType::OidVector)
    }

    pub fn from_oid(oid: u32) -> Option<PgType> {
        ALL_TYPES.into_iter().find(|t| t.oid() == oid)
    }

    /// PostgreSQL's canonical name, as `format_type` prints it.
    pub fn name(self) -> &'static str {
        use PgType::*;
        match self {
            Bool => "boolean",
            Int2 => "smallint",
            Int4 => "integer",
            Int8 => "bigint",
            Float4 => "real",
            Float8 => "double precision",
            Numeric => "numeric",
            Text => "text",
            Varchar => "character varying",
            Bpchar => "character",
            Bytea => "bytea",
            Date => "date",
            Timestamp => "timestamp without time zone",
            Timestamptz => "timestamp with time zone",
            Json => "json",
            Jsonb => "jsonb",
            Uuid => "uuid",
            Unknown => "unknown",
            Interval => "interval",
            Oid => "oid",
            Name => "name",
            Char => "\"char\"",
            Int2Vector => "int2vector",
            OidVector => "oidvector",
            BoolArray => "boolean[]",
            Int2Array => "smallint[]",
            Int4Array => "integer[]",
            Int8Array => "bigint[]",
            Float4Array => "real[]",
            Float8Array => "double precision[]",
            NumericArray => "numeric[]",
            TextArray => "text[]",
            VarcharArray => "character varying[]",
            BpcharArray => "character[]",
            ByteaArray => "bytea[]",
            DateArray => "date[]",
            TimestampArray => "timestamp without time zone[]",
            TimestamptzArray => "timestamp with time zone[]",
            JsonArray => "json[]",
            JsonbArray => "jsonb[]",
            UuidArray => "uuid[]",
            IntervalArray => "interval[]",
            OidArray => "oid[]",
            NameArray => "name[]",
            CharArray => "\"char\"[]",
        }
    }

    /// The type to name in a SQLite CAST or column declaration (it sets the column's affinity).
    pub fn sqlite_type(self) -> &'static str {
        use PgType::*;
        match self {
            Bool | Int2 | Int4 | Int8 | Oid => "INTEGER",
            Float4 | Float8 => "REAL",
            Numeric => "NUMERIC",
            Bytea => "BLOB",
            _ => "TEXT",
        }
    }

    /// Type to report for a value whose column has no declared type (an expression).
    pub fn infer(value: &Value) -> PgType {
        match value {
            Value::Integer(_) => PgType::Int8,
            Value::Real(_) => PgType::Float8,
            Value::Blob(_) => PgType::Bytea,
            Value::Text(_) | Value::Null => PgType::Text,
        }
    }

    /// Types whose datum is a string, stored and sent as it is.
    pub fn is_textual(self) -> bool {
        use PgType::*;
        matches!(
            self,
            Text | Varchar | Bpchar | Json | Jsonb | Unknown | Name | Char
        )
    }
}

/// Encode a stored SQLite value as PostgreSQL wire bytes of type `ty` in `format`.
/// NULL → Ok(None).
pub fn encode(value: &Value, ty: PgType, format: Format) -> Result<Option<Vec<u8>>> {
    let datum = match value {
        Value::Null => return Ok(None),
        Value::Text(s) if ty == PgType::Bytea => Datum::Bytes(s.as_bytes().to_vec()),
        Value::Text(s) if ty.is_textual() => Datum::Text(s.clone()),
        _ => from_value(value, ty).map_err(|e| match e {
            Error::Sql { code, message } => Error::sql(
                code,
                format!("stored value cannot be sent as {}: {message}", ty.name()),
            ),
            other => other,
        })?,
    };
    Ok(Some(match format {
        Format::Text => text_out(&datum, ty).into_bytes(),
        Format::Binary => binary_out(&datum, ty),
    }))
}

/// Decode a parameter sent by a client (wire bytes of type `ty` in `format`) into the value
/// stored in SQLite.
pub fn decode(bytes: &[u8], ty: PgType, format: Format) -> Result<Value> {
    let datum = match format {
        Format::Text => text_in(utf8(bytes)?, ty)?,
        Format::Binary => binary_in(bytes, ty)?,
    };
    Ok(stored(datum, ty))
}

/// Convert a value to the canonical stored form for a column of type `ty` (e.g. the text
/// 'true' for a boolean, or 42 for a text column). Text follows the rules of `decode` from text.
pub fn coerce(value: Value, ty: PgType) -> Result<Value> {
    match (&value, ty) {
        (Value::Null, _) => Ok(Value::Null),
        // Numbers are already a stored form of numeric; keep them exactly as they are.
        (Value::Integer(_), PgType::Numeric) => Ok(value),
        (Value::Real(f), PgType::Numeric) if !f.is_nan() => Ok(value),
        _ => Ok(stored(from_value(&value, ty)?, ty)),
    }
}

/// A value in the in-memory shape of its PostgreSQL type; always within the type's range.
#[derive(Debug, Clone, PartialEq)]
enum Datum {
    Bool(bool),
    Int(i64),
    /// For real, a value exactly representable as f32.
    Float(f64),
    Numeric(Decimal),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 2000-01-01; `i32::MIN` / `i32::MAX` are -infinity / infinity, as in PostgreSQL.
    Date(i32),
    /// Microseconds since 2000-01-01 00:00:00 (UTC for timestamptz); `i64::MIN` / `i64::MAX`
    /// are -infinity / infinity.
    Timestamp(i64),
    Uuid([u8; 16]),
    /// The elements of a one-dimensional array or vector; None for a NULL element.
    Array(Vec<Option<Datum>>),
    Interval(interval::Interval),
}

/// The stored form of a datum.
fn stored(datum: Datum, ty: PgType) -> Value {
    match datum {
        Datum::Bool(b) => Value::Integer(i64::from(b)),
        Datum::Int(i) => Value::Integer(i),
        Datum::Float(f) if !f.is_nan() => Value::Real(f),
        Datum::Text(s) => Value::Text(s),
        Datum::Bytes(b) => Value::Blob(b),
        Datum::Array(items) => Value::Text(array::stored_json(items, ty)),
        other => Value::Text(text_out(&other, ty)),
    }
}

/// A stored or client-supplied value as a datum of `ty`, following PostgreSQL's casts.
fn from_value(value: &Value, ty: PgType) -> Result<Datum> {
    use PgType::*;
    match value {
        Value::Null => Err(Error::internal("NULL has no datum")),
        Value::Text(s) => text_in(s, ty),
        Value::Blob(b) if ty == Bytea => Ok(Datum::Bytes(b.clone())),
        Value::Blob(b) => text_in(utf8(b)?, ty),
        Value::Integer(i) => match ty {
            Bool => Ok(Datum::Bool(*i != 0)),
            Int2 | Int4 | Int8 => int_in_range(*i, ty).map(Datum::Int),
            Oid => oid_in_range(*i).map(Datum::Int),
            Float4 | Float8 => narrow_float(*i as f64, ty).map(Datum::Float),
            _ => text_in(&i.to_string(), ty),
        },
        Value::Real(f) => match ty {
            Int2 | Int4 | Int8 => {
                let r = f.round_ties_even();
                // 2^63 is exactly representable; every f64 below it converts exactly.
                if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r) {
                    return Err(out_of_range(format!("{} out of range", ty.name())));
                }
                int_in_range(r as i64, ty).map(Datum::Int)
            }
            Float4 | Float8 => narrow_float(*f, ty).map(Datum::Float),
            Numeric if f.is_finite() => parse_numeric(&f.to_string()).map(Datum::Numeric),
            _ => text_in(&float_text(*f, false), ty),
        },
    }
}

fn bad_syntax(ty: PgType, input: &str) -> Error {
    let name = match ty {
        PgType::Timestamp => "timestamp",
        other => other.name(),
    };
    Error::sql(
        sqlstate::INVALID_TEXT_REPRESENTATION,
        format!("invalid input syntax for type {name}: \"{input}\""),
    )
}

fn out_of_range(message: String) -> Error {
    Error::sql(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, message)
}

fn bad_binary(ty: PgType, detail: &str) -> Error {
    Error::sql(
        sqlstate::PROTOCOL_VIOLATION,
        format!(
            "incorrect binary data format for type {}: {detail}",
            ty.name()
        ),
    )
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
        Error::sql(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid byte sequence for encoding \"UTF8\": 0x{byte:02x}"),
        )
    })
}

/// PostgreSQL's notion of whitespace around a literal.
fn trim_pg(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
}

// ---------------------------------------------------------------------------------------------
// Text and binary wire formats

/// Parse PostgreSQL text input of type `ty`.
fn text_in(s: &str, ty: PgType) -> Result<Datum> {
    use PgType::*;
    match ty {
        Bool => parse_bool(s)
            .map(Datum::Bool)
            .ok_or_else(|| bad_syntax(ty, s)),
        Int2 | Int4 | Int8 => parse_int(s, ty).map(Datum::Int),
        Oid => parse_int(s, Int8)
            .and_then(oid_in_range)
            .map_err(|_| bad_syntax(ty, s))
            .map(Datum::Int),
        Float4 | Float8 => parse_float(s, ty).map(Datum::Float),
        Numeric => parse_numeric(s).map(Datum::Numeric),
        Interval => interval::parse(s).map(Datum::Interval),
        Char => Ok(Datum::Text(
            s.chars().next().map(String::from).unwrap_or_default(),
        )),
        _ if ty.element().is_some() => array::text_in(s, ty),
        Text | Varchar | Bpchar | Json | Jsonb | Unknown | Name => {
            if s.contains('\0') {
                return Err(Error::sql(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    "invalid byte sequence for encoding \"UTF8\": 0x00",
                ));
            }
            if matches!(ty, Json | Jsonb) && !is_json(s) {
                return Err(bad_syntax(ty, s));
            }
            Ok(Datum::Text(s.to_string()))
        }
        Bytea => parse_bytea(s).map(Datum::Bytes),
        Date | Timestamp | Timestamptz => parse_datetime(s, ty),
        Uuid => parse_uuid(s)
            .map(Datum::Uuid)
            .ok_or_else(|| bad_syntax(ty, s)),
        _ => Err(Error::internal(format!("no text input for {}", ty.name()))),
    }
}

/// Parse PostgreSQL binary input (`recv`) of type `ty`.
fn binary_in(bytes: &[u8], ty: PgType) -> Result<Datum> {
    use PgType::*;
    Ok(match ty {
        Bool => Datum::Bool(fixed::<1>(bytes, ty)? != [0]),
        Int2 => Datum::Int(i16::from_be_bytes(fixed(bytes, ty)?).into()),
        Int4 => Datum::Int(i32::from_be_bytes(fixed(bytes, ty)?).into()),
        Int8 => Datum::Int(i64::from_be_bytes(fixed(bytes, ty)?)),
        Oid => Datum::Int(u32::from_be_bytes(fixed(bytes, ty)?).into()),
        Interval => Datum::Interval(interval::Interval::recv(fixed(bytes, ty)?)),
        _ if ty.element().is_some() => array::binary_in(bytes, ty)?,
        Name | Char => text_in(utf8(bytes)?, ty)?,
        Float4 => Datum::Float(f32::from_be_bytes(fixed(bytes, ty)?).into()),
        Float8 => Datum::Float(f64::from_be_bytes(fixed(bytes, ty)?)),
        Numeric => Datum::Numeric(Decimal::recv(bytes)?),
        Text | Varchar | Bpchar | Json | Unknown => text_in(utf8(bytes)?, ty)?,
        Jsonb => match bytes.split_first() {
            Some((1, json)) => text_in(utf8(json)?, ty)?,
            _ => return Err(bad_binary(ty, "unsupported jsonb version number")),
        },
        Bytea => Datum::Bytes(bytes.to_vec()),
        Date => {
            let days = i32::from_be_bytes(fixed(bytes, ty)?);
            if days != i32::MIN && days != i32::MAX && !(MIN_DATE..=MAX_DATE).contains(&days.into())
            {
                return Err(out_of_range("date out of range".into()));
            }
            Datum::Date(days)
        }
        Timestamp | Timestamptz => {
            let us = i64::from_be_bytes(fixed(bytes, ty)?);
            if us != i64::MIN && us != i64::MAX && !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&us) {
                return Err(out_of_range("timestamp out of range".into()));
            }
            Datum::Timestamp(us)
        }
        Uuid => Datum::Uuid(fixed(bytes, ty)?),
        _ => return Err(bad_binary(ty, "no binary input")),
    })
}

fn fixed<const N: usize>(bytes: &[u8], ty: PgType) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| bad_binary(ty, &format!("expected {N} bytes, got {}", bytes.len())))
}

/// PostgreSQL's text output.
fn text_out(datum: &Datum, ty: PgType) -> String {
    match datum {
        Datum::Bool(b) => (if *b { "t" } else { "f" }).to_string(),
        Datum::Int(i) => i.to_string(),
        Datum::Float(f) => float_text(*f, ty == PgType::Float4),
        Datum::Numeric(n) => n.to_string(),
        Datum::Text(s) => s.clone(),
        Datum::Bytes(b) => {
            let mut out = String::with_capacity(2 + 2 * b.len());
            out.push_str("\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out
        }
        Datum::Date(days) => match *days {
            i32::MAX => "infinity".into(),
            i32::MIN => "-infinity".into(),
            d => date_text(d.into()),
        },
        Datum::Timestamp(us) => match *us {
            i64::MAX => "infinity".into(),
            i64::MIN => "-infinity".into(),
            us => {
                let (days, tod) = (us.div_euclid(DAY_US), us.rem_euclid(DAY_US));
                let (secs, frac) = (tod / 1_000_000, tod % 1_000_000);
                let mut out = date_text(days);
                let _ = write!(
                    out,
                    " {:02}:{:02}:{:02}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                );
                if frac != 0 {
                    let digits = format!("{frac:06}");
                    out.push('.');
                    out.push_str(digits.trim_end_matches('0'));
                }
                if ty == PgType::Timestamptz {
                    out.push_str("+00");
                }
                out
            }
        },
        Datum::Array(items) => array::text_out(items, ty),
        Datum::Interval(i) => i.to_string(),
        Datum::Uuid(u) => {
            let mut out = String::with_capacity(36);
            for (i, byte) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
            out
        }
    }
}

/// PostgreSQL's binary output (`send`).
fn binary_out(datum: &Datum, ty: PgType) -> Vec<u8> {
    match datum {
        Datum::Bool(b) => vec![u8::from(*b)],
        // A datum is within its type's range, so the narrowing casts are exact.
        Datum::Int(i) => match ty {
            PgType::Int2 => (*i as i16).to_be_bytes().to_vec(),
            PgType::Int4 => (*i as i32).to_be_bytes().to_vec(),
            PgType::Oid => (*i as u32).to_be_bytes().to_vec(),
            _ => i.to_be_bytes().to_vec(),
        },
        Datum::Float(f) if ty == PgType::Float4 => (*f as f32).to_be_bytes().to_vec(),
        Datum::Float(f) => f.to_be_bytes().to_vec(),
        Datum::Numeric(n) => n.send(),
        Datum::Text(s) if ty == PgType::Jsonb => [&[1u8][..], s.as_bytes()].concat(),
        Datum::Text(s) => s.as_bytes().to_vec(),
        Datum::Bytes(b) => b.clone(),
        Datum::Date(days) => days.to_be_bytes().to_vec(),
        Datum::Timestamp(us) => us.to_be_bytes().to_vec(),
        Datum::Uuid(u) => u.to_vec(),
        Datum::Array(items) => array::binary_out(items, ty),
        Datum::Interval(i) => i.send().to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Booleans, integers, floats

/// PostgreSQL's boolin: any unique prefix of true/false/yes/no/on/off, or 1/0.
fn parse_bool(s: &str) -> Option<bool> {
    let t = trim_pg(s).to_ascii_lowercase();
    let prefix_of = |word: &str, min_len: usize| t.len() >= min_len && word.starts_with(&t);
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// An oid: PostgreSQL's oidin takes 0 to 2^32 - 1, and negative values down to -2^31 as
/// their two's complement.
fn oid_in_range(i: i64) -> Result<i64> {
    match i {
        0..=0xFFFF_FFFF => Ok(i),
        -0x8000_0000..=-1 => Ok(i + (1 << 32)),
        _ => Err(out_of_range(format!(
            "value \"{i}\" is out of range for type oid"
        ))),
    }
}

fn int_in_range(i: i64, ty: PgType) -> Result<i64> {
    let fits = match ty {
        PgType::Int2 => i16::try_from(i).is_ok(),
        PgType::Int4 => i32::try_from(i).is_ok(),
        _ => true,
    };
    if fits {
        Ok(i)
    } else {
        Err(out_of_range(format!("{} out of range", ty.name())))
    }
}

fn parse_int(s: &str, ty: PgType) -> Result<i64> {
    let t = trim_pg(s);
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_syntax(ty, s));
    }
    let range_error = || {
        out_of_range(format!(
            "value \"{s}\" is out of range for type {}",
            ty.name()
        ))
    };
    let mut magnitude: i128 = 0;
    for b in digits.bytes() {
        magnitude = magnitude * 10 + i128::from(b - b'0');
        if magnitude > 1 << 63 {
            return Err(range_error());
        }
    }
    let value = if negative { -magnitude } else { magnitude };
    let value = i64::try_from(value).map_err(|_| range_error())?;
    int_in_range(value, ty).map_err(|_| range_error())
}

/// PostgreSQL's float4in/float8in: a decimal or NaN/Infinity; overflow and underflow to zero
/// are errors. A real is rounded to f32 precision.
fn parse_float(s: &str, ty: PgType) -> Result<f64> {
    let t = trim_pg(s);
    let parsed = if ty == PgType::Float4 {
        t.parse::<f32>().map(f64::from)
    } else {
        t.parse::<f64>()
    };
    let value = parsed.map_err(|_| bad_syntax(ty, s))?;
    let lower = t.to_ascii_lowercase();
    if !lower.contains("inf") && !lower.contains("nan") {
        let mantissa = lower.split('e').next().unwrap_or("");
        let nonzero = mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
        if value.is_infinite() || (value == 0.0 && nonzero) {
            return Err(out_of_range(format!(
                "\"{t}\" is out of range for type {}",
                ty.name()
            )));
        }
    }
    Ok(value)
}

/// A float for a real or double precision column; real rounds to f32 precision.
fn narrow_float(f: f64, ty: PgType) -> Result<f64> {
    if ty != PgType::Float4 {
        return Ok(f);
    }
    let narrowed = f as f32;
    if narrowed.is_infinite() && f.is_finite() {
        return Err(out_of_range("value out of range: overflow".into()));
    }
    if narrowed == 0.0 && f != 0.0 {
        return Err(out_of_range("value out of range: underflow".into()));
    }
    Ok(narrowed.into())
}

/// PostgreSQL's float4out/float8out: the shortest text that reads back as the same value, in
/// fixed notation when the decimal exponent is in [-4, 6) for real and [-4, 15) for double
/// precision, otherwise as d.ddde±XX (e.g. "1e+21", "1.5e-05").
fn float_text(f: f64, single: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return (if f > 0.0 { "Infinity" } else { "-Infinity" }).into();
    }
    let (scientific, max_exp) = if single {
        (format!("{:e}", f as f32), 6)
    } else {
        (format!("{f:e}"), 15)
    };
    let (mantissa, exp) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..max_exp).contains(&exp) {
        if single {
            (f as f32).to_string()
        } else {
            f.to_string()
        }
    } else {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Numeric

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// PostgreSQL's limits: weight ≤ 32767 base-10000 digits, display scale ≤ 16383.
const NUMERIC_MAX_INT_DIGITS: usize = 131_072;
const NUMERIC_MAX_DSCALE: usize = 0x3FFF;
/// Largest exponent accepted in numeric text input ('1e1000').
const NUMERIC_MAX_EXPONENT: i64 = 1000;

/// An arbitrary-precision decimal, kept as its digits.
#[derive(Debug, Clone, PartialEq)]
enum Decimal {
    NaN,
    Infinity {
        negative: bool,
    },
    /// `int` has no leading zeros (empty for zero); `frac` holds exactly dscale digits;
    /// `negative` is false for zero.
    Finite {
        negative: bool,
        int: String,
        frac: String,
    },
}

impl Decimal {
    fn finite(negative: bool, int: &str, frac: String) -> Result<Decimal> {
        let int = int.trim_start_matches('0');
        // Only a number with over 131068 significant digits can need more base-10000 digits
        // than the binary format's i16 count allows; count them exactly only then.
        let too_long =
            int.len() + frac.len() > 131_068 && base_10000(int, &frac).0.len() > i16::MAX as usize;
        if int.len() > NUMERIC_MAX_INT_DIGITS || frac.len() > NUMERIC_MAX_DSCALE || too_long {
            return Err(out_of_range("value overflows numeric format".into()));
        }
        let nonzero = !int.is_empty() || frac.bytes().any(|b| b != b'0');
        Ok(Decimal::Finite {
            negative: negative && nonzero,
            int: int.to_string(),
            frac,
        })
    }

    /// PostgreSQL's numeric_send.
    fn send(&self) -> Vec<u8> {
        let (sign, int, frac) = match self {
            Decimal::NaN => (NUMERIC_NAN, "", ""),
            Decimal::Infinity { negative: false } => (NUMERIC_PINF, "", ""),
            Decimal::Infinity { negative: true } => (NUMERIC_NINF, "", ""),
            Decimal::Finite {
                negative,
                int,
                frac,
            } => (
                if *negative { NUMERIC_NEG } else { NUMERIC_POS },
                int.as_str(),
                frac.as_str(),
            ),
        };
        let (groups, weight) = base_10000(int, frac);
        let mut out = Vec::with_capacity(8 + 2 * groups.len());
        out.extend((groups.len() as i16).to_be_bytes());
        out.extend((weight as i16).to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend((frac.len() as u16).to_be_bytes());
        for g in groups {
            out.extend(g.to_be_bytes());
        }
        out
    }

    /// PostgreSQL's numeric_recv: digits beyond the display scale are truncated, as there.
    fn recv(bytes: &[u8]) -> Result<Decimal> {
        let ty = PgType::Numeric;
        let (header, body) = match bytes.split_first_chunk::<8>() {
            Some((header, body)) => (header, body),
            None => return Err(bad_binary(ty, "message too short")),
        };
        let [n0, n1, w0, w1, s0, s1, d0, d1] = *header;
        let ndigits = i16::from_be_bytes([n0, n1]);
        let weight = i64::from(i16::from_be_bytes([w0, w1]));
        let sign = u16::from_be_bytes([s0, s1]);
        let dscale = usize::from(u16::from_be_bytes([d0, d1]));
        if usize::try_from(ndigits).ok().map(|n| 2 * n) != Some(body.len()) {
            return Err(bad_binary(
                ty,
                "invalid length in external \"numeric\" value",
            ));
        }
        let digits: Vec<i16> = body
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        if digits.iter().any(|d| !(0..10000).contains(d)) {
            return Err(bad_binary(
                ty,
                "invalid digit in external \"numeric\" value",
            ));
        }
        let negative = match sign {
            NUMERIC_NAN => return Ok(Decimal::NaN),
            NUMERIC_PINF => return Ok(Decimal::Infinity { negative: false }),
            NUMERIC_NINF => return Ok(Decimal::Infinity { negative: true }),
            NUMERIC_POS => false,
            NUMERIC_NEG => true,
            _ => return Err(bad_binary(ty, "invalid sign in external \"numeric\" value")),
        };
        if dscale > NUMERIC_MAX_DSCALE {
            return Err(bad_binary(
                ty,
                "invalid scale in external \"numeric\" value",
            ));
        }
        // digits[i] is worth 10000^(weight - i).
        let digit_at = |i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| digits.get(i))
                .copied()
                .unwrap_or(0)
        };
        let mut int = String::new();
        for power in (0..=weight).rev() {
            let _ = write!(int, "{:04}", digit_at(weight - power));
        }
        let mut frac = String::new();
        let mut power = 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit_at(weight + power));
            power += 1;
        }
        frac.truncate(dscale);
        Decimal::finite(negative, &int, frac)
    }
}

/// The base-10000 digits of int.frac without leading or trailing zero digits, and the weight
/// (power of 10000) of the first; zero is no digits and weight 0.
fn base_10000(int: &str, frac: &str) -> (Vec<i16>, i64) {
    // Align the decimal point on a base-10000 digit boundary, then cut into groups of 4.
    let mut decimal = "0".repeat((4 - int.len() % 4) % 4);
    decimal.push_str(int);
    let int_groups = decimal.len() / 4;
    decimal.push_str(frac);
    decimal.push_str(&"0".repeat((4 - frac.len() % 4) % 4));
    let mut groups: Vec<i16> = decimal
        .as_bytes()
        .chunks(4)
        .map(|c| {
            c.iter()
                .fold(0i16, |acc, d| acc * 10 + i16::from(d.saturating_sub(b'0')))
        })
        .collect();
    let leading = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..leading);
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let weight = if groups.is_empty() {
        0
    } else {
        int_groups as i64 - 1 - leading as i64
    };
    (groups, weight)
}

impl std::fmt::Display for Decimal {
    /// PostgreSQL's numeric_out: plain notation with exactly dscale fractional digits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decimal::NaN => f.write_str("NaN"),
            Decimal::Infinity { negative } => {
                f.write_str(if *negative { "-Infinity" } else { "Infinity" })
            }
            Decimal::Finite {
                negative,
                int,
                frac,
            } => {
                let sign = if *negative { "-" } else { "" };
                let int = if int.is_empty() { "0" } else { int };
                let point = if frac.is_empty() { "" } else { "." };
                write!(f, "{sign}{int}{point}{frac}")
            }
        }
    }
}

/// PostgreSQL's numeric_in: [sign] digits [. digits] [e [sign] digits], NaN, or [sign] Infinity.
/// The display scale is the number of fractional digits written, less the exponent.
fn parse_numeric(s: &str) -> Result<Decimal> {
    let t = trim_pg(s);
    let bad = || bad_syntax(PgType::Numeric, s);
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok(Decimal::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => {
            return Ok(Decimal::Infinity { negative: false })
        }
        "-infinity" | "-inf" => return Ok(Decimal::Infinity { negative: true }),
        _ => {}
    }
    let (negative, rest) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (rest, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    let exp = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 9 || !all_digits(digits) {
                return Err(bad());
            }
            let magnitude: i64 = digits.parse().map_err(|_| bad())?;
            if magnitude > NUMERIC_MAX_EXPONENT {
                return Err(bad());
            }
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // Move the decimal point `exp` places right within the written digits.
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exp;
    let (int_part, frac_part) = if point <= 0 {
        (
            String::new(),
            "0".repeat(point.unsigned_abs() as usize) + &digits,
        )
    } else if point as usize >= digits.len() {
        (
            digits.clone() + &"0".repeat(point as usize - digits.len()),
            String::new(),
        )
    } else {
        let (i, f) = digits.split_at(point as usize);
        (i.to_string(), f.to_string())
    };
    Decimal::finite(negative, &int_part, frac_part)
}

// ---------------------------------------------------------------------------------------------
// Dates and timestamps

const DAY_US: i64 = 86_400_000_000;
/// 2000-01-01, PostgreSQL's epoch, in days since 1970-01-01.
const PG_EPOCH_DAYS: i64 = days_from_civil(2000, 1, 1);
/// Supported range, in days / microseconds since PostgreSQL's epoch: years 1 to 9999.
const MIN_DATE: i64 = days_from_civil(1, 1, 1) - PG_EPOCH_DAYS;
const MAX_DATE: i64 = days_from_civil(9999, 12, 31) - PG_EPOCH_DAYS;
const MIN_TIMESTAMP: i64 = MIN_DATE * DAY_US;
const MAX_TIMESTAMP: i64 = (MAX_DATE + 1) * DAY_US - 1;

/// Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's (2000-01-01).
pub const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_DAYS * DAY_US;

/// A timestamp given in microseconds since 2000-01-01 as PostgreSQL prints it (its stored
/// form): with `tz`, as a timestamptz in UTC ('…+00').
pub fn format_timestamp_micros(micros: i64, tz: bool) -> String {
    let ty = if tz {
        PgType::Timestamptz
    } else {
        PgType::Timestamp
    };
    text_out(&Datum::Timestamp(micros), ty)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// 'YYYY-MM-DD' for days since PostgreSQL's epoch.
fn date_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A cursor over an ASCII literal.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> bool {
        let hit = self
            .s
            .get(self.i)
            .is_some_and(|b| b.eq_ignore_ascii_case(&c));
        self.i += usize::from(hit);
        hit
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let hit = self
            .s
            .get(self.i..self.i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()));
        if hit {
            self.i += word.len();
        }
        hit
    }

    fn skip_spaces(&mut self) -> usize {
        let n = self
            .s
            .get(self.i..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| **b == b' ')
            .count();
        self.i += n;
        n
    }

    /// `min..=max` decimal digits, as (value, count).
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let rest = self.s.get(self.i..).unwrap_or_default();
        let n = rest
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return None;
        }
        let value = rest
            .iter()
            .take(n)
            .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
        self.i += n;
        Some((value, n))
    }

    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        self.digits(min, max).map(|(value, _)| value)
    }

    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
}

/// PostgreSQL's date/timestamp input in ISO form: 'YYYY-MM-DD', optionally followed by 'T' or
/// spaces and 'HH:MM[:SS[.fff…]]', optionally followed by a UTC offset ('Z', 'UTC', '+05',
/// '+05:30', '-0800'); or 'infinity', '-infinity', 'epoch'. A date ignores the time of day and
/// a timestamp without time zone ignores the offset, as PostgreSQL does; a timestamptz without
/// an offset is taken as UTC.
fn parse_datetime(s: &str, ty: PgType) -> Result<Datum> {
    let t = trim_pg(s);
    let infinite = |negative: bool| match ty {
        PgType::Date => Datum::Date(if negative { i32::MIN } else { i32::MAX }),
        _ => Datum::Timestamp(if negative { i64::MIN } else { i64::MAX }),
    };
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Ok(infinite(false)),
        "-infinity" => return Ok(infinite(true)),
        "epoch" => return parse_datetime("1970-01-01", ty),
        _ => {}
    }
    let (year, month, day, time, offset) = split_datetime(t).ok_or_else(|| bad_syntax(ty, s))?;
    let field_error = || {
        Error::sql(
            sqlstate::DATETIME_FIELD_OVERFLOW,
            format!("date/time field value out of range: \"{s}\""),
        )
    };
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return Err(field_error());
    }
    let Some(time) = time else {
        return Err(field_error());
    };
    let kind = if ty == PgType::Date {
        "date"
    } else {
        "timestamp"
    };
    let range_error = || out_of_range(format!("{kind} out of range: \"{s}\""));
    if !(1..=9999).contains(&year) {
        return Err(range_error());
    }
    let days = days_from_civil(year, month, day) - PG_EPOCH_DAYS;
    match ty {
        PgType::Date => i32::try_from(days)
            .map(Datum::Date)
            .map_err(|_| range_error()),
        _ => {
            let offset = if ty == PgType::Timestamptz { offset } else { 0 };
            let us = days * DAY_US + time - offset * 1_000_000;
            if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&us) {
                return Err(range_error());
            }
            Ok(Datum::Timestamp(us))
        }
    }
}

/// (year, month, day, time of day in µs or None if a time field is out of range, UTC offset in
/// seconds), or None on a syntax error. The caller checks the date's field ranges.
type DateTimeParts = (i64, i64, i64, Option<i64>, i64);

fn split_datetime(t: &str) -> Option<DateTimeParts> {
    let mut c = Cursor {
        s: t.as_bytes(),
        i: 0,
    };
    let year = c.number(4, 9)?;
    c.eat(b'-').then_some(())?;
    let month = c.number(1, 2)?;
    c.eat(b'-').then_some(())?;
    let day = c.number(1, 2)?;
    let (mut time, mut offset) = (Some(0), 0);
    let separated = c.eat(b'T') || c.skip_spaces() > 0;
    if separated {
        let hour = c.number(1, 2)?;
        c.eat(b':').then_some(())?;
        let minute = c.number(2, 2)?;
        let second = if c.eat(b':') { c.number(2, 2)? } else { 0 };
        let micros = if c.eat(b'.') {
            // Round to microseconds on the seventh digit.
            let rest = c.s.get(c.i..).unwrap_or_default();
            let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            let mut micros = rest
                .iter()
                .take(6)
                .take_while(|b| b.is_ascii_digit())
                .fold(0, |acc, b| acc * 10 + i64::from(b - b'0'));
            micros *= 10i64.pow(6u32.saturating_sub(n as u32));
            if n > 6 && rest.get(6).is_some_and(|b| (b'5'..=b'9').contains(b)) {
                micros += 1;
            }
            c.i += n;
            micros
        } else {
            0
        };
        let in_range = hour < 24 && minute < 60 && second <= 60
            || hour == 24 && minute == 0 && second == 0 && micros == 0;
        time = in_range.then_some(((hour * 60 + minute) * 60 + second) * 1_000_000 + micros);
        c.skip_spaces();
        if !c.done() {
            offset = parse_offset(&mut c)?;
        }
    }
    c.done().then_some((year, month, day, time, offset))
}

/// A UTC offset in seconds: 'Z', 'UTC', 'GMT', or ±HH[[:]MM[[:]SS]] up to ±15:59:59.
fn parse_offset(c: &mut Cursor<'_>) -> Option<i64> {
    if c.eat(b'Z') || c.eat_word("UTC") || c.eat_word("GMT") {
        return Some(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return None;
    };
    let hours = c.number(1, 2)?;
    let colon = c.eat(b':');
    let minutes = if colon || !c.done() {
        c.number(2, 2)?
    } else {
        0
    };
    let seconds = if (colon && c.eat(b':')) || (!colon && !c.done()) {
        c.number(2, 2)?
    } else {
        0
    };
    (hours <= 15 && minutes < 60 && seconds < 60)
        .then_some(sign * (hours * 3600 + minutes * 60 + seconds))
}

// ---------------------------------------------------------------------------------------------
// bytea, uuid, json

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL's byteain: '\x' followed by hex digit pairs (whitespace between them ignored),
/// or the escape format in which '\\' is a backslash and '\ooo' an octal byte.
fn parse_bytea(s: &str) -> Result<Vec<u8>> {
    let invalid = |message: String| Error::sql(sqlstate::INVALID_TEXT_REPRESENTATION, message);
    if let Some(hex) = s.strip_prefix("\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut digits = hex
            .bytes()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        while let Some(high) = digits.next() {
            let low = digits
                .next()
                .ok_or_else(|| invalid("invalid hexadecimal data: odd number of digits".into()))?;
            let value = |b: u8| {
                hex_digit(b).ok_or_else(|| {
                    invalid(format!("invalid hexadecimal digit: \"{}\"", char::from(b)))
                })
            };
            out.push(value(high)? << 4 | value(low)?);
        }
        return Ok(out);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match b.get(i + 1..i + 4) {
            Some([d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7']) => {
                out.push((d0 - b'0') << 6 | (d1 - b'0') << 3 | (d2 - b'0'));
                i += 4;
            }
            _ if b.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            _ => return Err(bad_syntax(PgType::Bytea, s)),
        }
    }
    Ok(out)
}

/// PostgreSQL's uuid_in: 32 hex digits, any case, optionally in braces, with a hyphen allowed
/// after any group of four digits.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let t = trim_pg(s);
    let inner = match t.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => t,
    };
    let mut out = [0u8; 16];
    let (mut n, mut after_hyphen) = (0usize, false);
    for b in inner.bytes() {
        if b == b'-' {
            if n == 0 || n % 4 != 0 || n >= 32 || after_hyphen {
                return None;
            }
            after_hyphen = true;
            continue;
        }
        let shift = if n % 2 == 0 { 4 } else { 0 };
        *out.get_mut(n / 2)? |= hex_digit(b)? << shift;
        n += 1;
        after_hyphen = false;
    }
    (n == 32 && !after_hyphen).then_some(out)
}

/// Whether `s` is exactly one JSON value (RFC 8259) with optional surrounding whitespace.
/// Iterative, so deeply nested input cannot overflow the stack.
fn is_json(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut open: Vec<u8> = Vec::new(); // b'{' or b'[' for each unclosed container
    'value: loop {
        json_ws(b, &mut i);
        match b.get(i) {
            Some(b'{') => {
                i += 1;
                json_ws(b, &mut i);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else if json_key(b, &mut i) {
                    open.push(b'{');
                    continue 'value;
                } else {
                    return false;
                }
            }
            Some(b'[') => {
                i += 1;
                json_ws(b, &mut i);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    open.push(b'[');
                    continue 'value;
                }
            }
            Some(b'"') if json_string(b, &mut i) => {}
            Some(b'-' | b'0'..=b'9') if json_number(b, &mut i) => {}
            Some(b't' | b'f' | b'n') => {
                let words: [&[u8]; 3] = [b"true", b"false", b"null"];
                let Some(word) = words
                    .into_iter()
                    .find(|w| b.get(i..i + w.len()) == Some(*w))
                else {
                    return false;
                };
                i += word.len();
            }
            _ => return false,
        }
        // A value ended: close containers until the next element or the end.
        loop {
            json_ws(b, &mut i);
            let Some(&container) = open.last() else {
                return i == b.len();
            };
            match (container, b.get(i)) {
                (_, Some(b',')) => {
                    i += 1;
                    if container == b'{' && !json_key(b, &mut i) {
                        return false;
                    }
                    continue 'value;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    i += 1;
                    open.pop();
                }
                _ => return false,
            }
        }
    }
}

fn json_ws(b: &[u8], i: &mut usize) {
    while b
        .get(*i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        *i += 1;
    }
}

/// An object key and its colon.
fn json_key(b: &[u8], i: &mut usize) -> bool {
    json_ws(b, i);
    if b.get(*i) != Some(&b'"') || !json_string(b, i) {
        return false;
    }
    json_ws(b, i);
    let colon = b.get(*i) == Some(&b':');
    *i += usize::from(colon);
    colon
}

/// A string starting at the opening quote.
fn json_string(b: &[u8], i: &mut usize) -> bool {
    *i += 1;
    loop {
        match b.get(*i) {
            None => return false,
            Some(b'"') => {
                *i += 1;
                return true;
            }
            Some(b'\\') => match b.get(*i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 2,
                Some(b'u')
                    if b.get(*i + 2..*i + 6)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                {
                    *i += 6
                }
                _ => return false,
            },
            Some(c) if *c < 0x20 => return false,
            Some(_) => *i += 1,
        }
    }
}

/// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
fn json_number(b: &[u8], i: &mut usize) -> bool {
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    *i += usize::from(b.get(*i) == Some(&b'-'));
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(i);
        }
        _ => return false,
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(i) == 0 {
            return false;
        }
    }
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        *i += 1;
        *i += usize::from(matches!(b.get(*i), Some(b'+' | b'-')));
        if digits(i) == 0 {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Type modifiers: varchar(n), char(n), numeric(p, s)

/// What a column's or cast's declared modifier constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Typmod {
    /// `varchar(n)`, `char(n)`: at most n characters.
    Length(u32),
    /// `numeric(p, s)`: rounded to s fractional digits, at most p digits in all.
    Numeric { precision: u32, scale: u32 },
}

impl Typmod {
    /// The modifier of a declared type ("varchar(8)", "numeric(10,2)"), if it constrains
    /// values; a modifier out of PostgreSQL's range is an error.
    pub fn of_declared(name: &str, ty: PgType) -> Result<Option<Typmod>> {
        let Some(open) = name.find('(') else {
            return Ok(None);
        };
        let inner = name[open + 1..].split(')').next().unwrap_or("");
        let numbers: Vec<i64> = inner
            .split(',')
            .map(|n| n.trim().parse::<i64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::sql(
                    sqlstate::SYNTAX_ERROR,
                    format!("invalid type modifier in \"{name}\""),
                )
            })?;
        let bad = |what: String| Error::sql(sqlstate::INVALID_PARAMETER_VALUE, what);
        match (ty, numbers.as_slice()) {
            (PgType::Varchar | PgType::Bpchar, [n]) => {
                if !(1..=10_485_760).contains(n) {
                    return Err(bad(format!(
                        "length for type {} must be between 1 and 10485760",
                        ty.name()
                    )));
                }
                Ok(Some(Typmod::Length(*n as u32)))
            }
            (PgType::Numeric, [p]) | (PgType::Numeric, [p, _]) => {
                let s = numbers.get(1).copied().unwrap_or(0);
                if !(1..=1000).contains(p) {
                    return Err(bad(format!(
                        "NUMERIC precision {p} must be between 1 and 1000"
                    )));
                }
                if !(0..=*p).contains(&s) {
                    return Err(bad(format!(
                        "NUMERIC scale {s} must be between 0 and precision {p}"
                    )));
                }
                Ok(Some(Typmod::Numeric {
                    precision: *p as u32,
                    scale: s as u32,
                }))
            }
            _ => Ok(None),
        }
    }

    /// How PostgreSQL names the constrained type: `character varying(8)`, `numeric(10,2)`.
    pub fn type_name(self, ty: PgType) -> String {
        match self {
            Typmod::Length(n) => format!("{}({n})", ty.name()),
            Typmod::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
        }
    }

    /// PostgreSQL's `atttypmod` for it: a length plus 4, or precision << 16 | scale, plus 4.
    pub fn pg_typmod(self) -> i32 {
        match self {
            Typmod::Length(n) => n as i32 + 4,
            Typmod::Numeric { precision, scale } => ((precision << 16) | scale) as i32 + 4,
        }
    }

    /// The numeric display scale, if this modifier fixes one.
    pub fn scale(self) -> Option<u32> {
        match self {
            Typmod::Numeric { scale, .. } => Some(scale),
            Typmod::Length(_) => None,
        }
    }
}

/// A stored value of `ty` made to fit `typmod`, as PostgreSQL's length and numeric coercions
/// do: an explicit cast truncates text and rounds numbers; an assignment (`explicit` false)
/// refuses text that is too long (22001) unless only spaces are cut. Numbers too wide for the
/// precision fail either way (22003).
pub fn apply_typmod(
    value: Value,
    ty: PgType,
    typmod: Option<Typmod>,
    explicit: bool,
) -> Result<Value> {
    match (typmod, &value) {
        (None, _) | (_, Value::Null) => Ok(value),
        (Some(Typmod::Length(n)), Value::Text(s)) => {
            let n = n as usize;
            let Some((cut, _)) = s.char_indices().nth(n) else {
                return Ok(value);
            };
            if explicit || s[cut..].chars().all(|c| c == ' ') {
                return Ok(Value::Text(s[..cut].to_string()));
            }
            Err(Error::sql(
                sqlstate::STRING_DATA_RIGHT_TRUNCATION,
                format!(
                    "value too long for type {}",
                    Typmod::Length(n as u32).type_name(ty)
                ),
            ))
        }
        (Some(Typmod::Length(_)), _) => Ok(value),
        (Some(Typmod::Numeric { precision, scale }), _) => {
            let Some(d) = exact(&value)? else {
                return Ok(value); // NaN
            };
            let d = d.round_dp_with_strategy(
                scale,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            );
            let int_digits = d.trunc().abs().to_string().trim_start_matches('0').len() as u32;
            if int_digits > precision - scale {
                return Err(Error::sql(
                    sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                    format!(
                        "numeric field overflow: a field with precision {precision}, scale {scale} must round to an absolute value less than 10^{}",
                        precision - scale
                    ),
                ));
            }
            Ok(numeric_stored(d))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact numeric arithmetic (28 significant digits; beyond that an error, never a rounding)

pub use rust_decimal::Decimal as Exact;

fn exact_overflow() -> Error {
    Error::sql(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        "numeric value out of range: Cairn computes numeric values exactly up to 28 significant digits",
    )
}

/// A stored numeric (or integer) value as an exact decimal; None for NaN.
pub fn exact(value: &Value) -> Result<Option<Exact>> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Integer(i) => return Ok(Some(Exact::from(*i))),
        Value::Real(f) if f.is_nan() => return Ok(None),
        Value::Real(f) if f.is_infinite() => return Err(exact_overflow()),
        // Rust prints the shortest text that reads back as the same double, without an
        // exponent: the decimal the user wrote, for any value of 15 significant digits.
        Value::Real(f) => f.to_string(),
        Value::Text(s) => trim_pg(s).to_string(),
        Value::Blob(b) => utf8(b)?.to_string(),
    };
    if text.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    match Exact::from_str_exact(&text) {
        Ok(d) => Ok(Some(d)),
        Err(_) => match parse_numeric(&text) {
            // A valid numeric that does not fit 28 digits.
            Ok(_) => Err(exact_overflow()),
            Err(e) => Err(e),
        },
    }
}

/// The stored form of an exact numeric: an integer when it is one, a double when the double
/// prints back as the same decimal (so SQLite compares and sorts it as a number), else the
/// decimal as text.
pub fn numeric_stored(d: Exact) -> Value {
    let n = d.normalize();
    if n.scale() == 0 {
        if let Ok(i) = i64::try_from(n) {
            return Value::Integer(i);
        }
    }
    let text = n.to_string();
    if let Ok(f) = text.parse::<f64>() {
        if f.to_string() == text {
            return Value::Real(f);
        }
    }
    Value::Text(d.to_string())
}

/// A numeric value printed with exactly `scale` fractional digits (a numeric(p, s) column's
/// display), or None if it is not a finite number.
pub fn numeric_with_scale(value: &Value, scale: u32) -> Option<String> {
    let mut d = exact(value).ok()??;
    d.rescale(scale);
    Some(d.to_string())
}

#[derive(Debug, Clone, Copy)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a op b` on numerics, exactly, with PostgreSQL's result scale: the larger scale for + and
/// -, their sum for *, and for / at least 16 significant digits. `hints` are the operands'
/// declared scales where known (a numeric(10,2) column stores 12.50 as 12.5).
pub fn numeric_arith(
    op: ArithOp,
    a: &Value,
    b: &Value,
    hints: (Option<u32>, Option<u32>),
) -> Result<Value> {
    let (Some(mut x), Some(mut y)) = (exact(a)?, exact(b)?) else {
        return Ok(Value::Text("NaN".into()));
    };
    if let Some(s) = hints.0.filter(|s| *s > x.scale()) {
        x.rescale(s);
    }
    if let Some(s) = hints.1.filter(|s| *s > y.scale()) {
        y.rescale(s);
    }
    let result = match op {
        ArithOp::Add => x.checked_add(y),
        ArithOp::Sub => x.checked_sub(y),
        ArithOp::Mul => x.checked_mul(y),
        ArithOp::Div => {
            if y.is_zero() {
                return Err(Error::sql(sqlstate::DIVISION_BY_ZERO, "division by zero"));
            }
            let scale = division_scale(&x, &y);
            x.checked_div(y).map(|mut q| {
                q = q.round_dp_with_strategy(
                    scale,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                );
                if q.scale() < scale {
                    q.rescale(scale);
                }
                q
            })
        }
    };
    result.map(numeric_stored).ok_or_else(exact_overflow)
}

/// The display scale PostgreSQL gives `x / y` (see `division_scale`).
pub fn division_scale_of(x: &Exact, y: &Exact) -> u32 {
    division_scale(x, y)
}

/// PostgreSQL's select_div_scale: enough fractional digits for 16 significant ones, and no
/// fewer than either operand's.
fn division_scale(x: &Exact, y: &Exact) -> u32 {
    // The weight and first digit of a value in base 10000, as PostgreSQL stores numerics.
    let weight = |d: &Exact| -> (i64, i64) {
        let text = d.abs().to_string();
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let int = int.trim_start_matches('0');
        let (groups, weight) = base_10000(int, frac);
        (weight, groups.first().map_or(0, |g| i64::from(*g)))
    };
    let ((w1, f1), (w2, f2)) = (weight(x), weight(y));
    let mut qweight = w1 - w2;
    if f1 <= f2 {
        qweight -= 1;
    }
    let rscale = 16 - qweight * 4;
    rscale
        .max(i64::from(x.scale()))
        .max(i64::from(y.scale()))
        .clamp(0, 28) as u32
}

// ---------------------------------------------------------------------------------------------
// Dates and timestamps as numbers

/// A stored date as days since 2000-01-01; None for NULL or an infinity.
pub fn date_days(value: &Value) -> Result<Option<i64>> {
    match value {
        Value::Null => Ok(None),
        v => match from_value(v, PgType::Date)? {
            Datum::Date(d) if d != i32::MIN && d != i32::MAX => Ok(Some(d.into())),
            _ => Ok(None),
        },
    }
}

/// The stored date `days` after 2000-01-01, or 22008 outside years 1 to 9999.
pub fn date_value(days: i64) -> Result<Value> {
    if !(MIN_DATE..=MAX_DATE).contains(&days) {
        return Err(Error::sql(
            sqlstate::DATETIME_FIELD_OVERFLOW,
            "date out of range",
        ));
    }
    Ok(Value::Text(date_text(days)))
}

/// A stored date, timestamp or timestamptz as microseconds since 2000-01-01 (UTC); None for
/// NULL or an infinity.
pub fn timestamp_micros(value: &Value, ty: PgType) -> Result<Option<i64>> {
    if matches!(value, Value::Null) {
        return Ok(None);
    }
    Ok(match from_value(value, ty)? {
        Datum::Date(d) if d != i32::MIN && d != i32::MAX => Some(i64::from(d) * DAY_US),
        Datum::Timestamp(t) if t != i64::MIN && t != i64::MAX => Some(t),
        _ => None,
    })
}

/// The civil fields of microseconds since 2000-01-01: (year, month, day, µs into the day,
/// days since 2000-01-01).
pub fn civil_fields(micros: i64) -> (i64, i64, i64, i64, i64) {
    let days = micros.div_euclid(DAY_US);
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    (y, m, d, micros.rem_euclid(DAY_US), days)
}

/// Microseconds since 2000-01-01 of a civil date at midnight.
pub fn civil_micros(year: i64, month: i64, day: i64) -> i64 {
    (days_from_civil(year, month, day) - PG_EPOCH_DAYS) * DAY_US
}

/// The stored form of a timestamp (`tz` for timestamptz) given in µs since 2000-01-01.
pub fn timestamp_value(micros: i64, tz: bool) -> Result<Value> {
    if !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&micros) {
        return Err(Error::sql(
            sqlstate::DATETIME_FIELD_OVERFLOW,
            "timestamp out of range",
        ));
    }
    Ok(Value::Text(format_timestamp_micros(micros, tz)))
}

/// PostgreSQL's cast of a stored value of type `from` (None: untyped) to `to` with modifier
/// `typmod`: through the text form where PostgreSQL's cast is I/O conversion, directly
/// between numbers (numeric and float to integer round).
pub fn cast(
    value: Value,
    from: Option<PgType>,
    to: PgType,
    typmod: Option<Typmod>,
    explicit: bool,
) -> Result<Value> {
    if matches!(value, Value::Null) {
        return Ok(Value::Null);
    }
    let integral = matches!(to, PgType::Int2 | PgType::Int4 | PgType::Int8);
    let value = match (&value, from) {
        // A numeric kept as text (its scale printed) rounds to an integer, as a double does.
        (Value::Text(t), Some(PgType::Numeric)) if integral => {
            match exact(&Value::Text(t.clone()))? {
                Some(d) => {
                    let r = d.round_dp_with_strategy(
                        0,
                        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                    );
                    let i = i64::try_from(r)
                        .map_err(|_| out_of_range(format!("{} out of range", to.name())))?;
                    Value::Integer(int_in_range(i, to)?)
                }
                None => return Err(bad_syntax(to, t)),
            }
        }
        _ => value,
    };
    let value = match from {
        Some(from) if to.is_textual() && !from.is_textual() => {
            match encode(&value, from, Format::Text)? {
                Some(bytes) => Value::Text(String::from_utf8_lossy(&bytes).into_owned()),
                None => Value::Null,
            }
        }
        _ => coerce(value, to)?,
    };
    apply_typmod(value, to, typmod, explicit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PgType::*;

    const UUID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    const UUID_BYTES: [u8; 16] = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    /// 1970-01-01 in microseconds since 2000-01-01.
    const UNIX_EPOCH_US: i64 = -946_684_800_000_000;

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    /// Decoding `wire` gives `stored`, and encoding `stored` gives `wire` back.
    fn check(ty: PgType, format: Format, wire: &[u8], stored: Value) {
        let shown = String::from_utf8_lossy(wire);
        let got = decode(wire, ty, format)
            .unwrap_or_else(|e| panic!("decode {ty:?} {format:?} {shown:?}: {e}"));
        assert_eq!(got, stored, "decode {ty:?} {format:?} {shown:?}");
        let back =
            encode(&stored, ty, format).unwrap_or_else(|e| panic!("encode {ty:?} {stored:?}: {e}"));
        assert_eq!(
            back.as_deref(),
            Some(wire),
            "encode {ty:?} {format:?} {stored:?}"
        );
    }

    /// `input` decodes from text (and coerces) to `stored`; it need not be the canonical text.
    fn check_input(ty: PgType, input: &str, stored: Value) {
        let got = decode(input.as_bytes(), ty, Format::Text);
        assert_eq!(got.ok(), Some(stored.clone()), "decode {ty:?} {input:?}");
        let coerced = coerce(text(input), ty);
        assert_eq!(coerced.ok(), Some(stored), "coerce {ty:?} {input:?}");
    }

    fn check_error(ty: PgType, format: Format, input: &[u8], code: &str) {
        match decode(input, ty, format) {
            Err(e) => assert_eq!(
                e.code(),
                code,
                "{ty:?} {format:?} {:?}: {e}",
                String::from_utf8_lossy(input)
            ),
            Ok(v) => panic!(
                "{ty:?} {format:?} {:?} decoded to {v:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    /// Canonical stored values of every type.
    fn samples() -> Vec<(PgType, Value)> {
        #[rustfmt::skip]
        let mut out = vec![
            (Bool, Value::Integer(1)),
            (Bool, Value::Integer(0)),
            (Int2, Value::Integer(-32768)),
            (Int2, Value::Integer(32767)),
            (Int4, Value::Integer(i32::MIN.into())),
            (Int4, Value::Integer(42)),
            (Int8, Value::Integer(i64::MIN)),
            (Int8, Value::Integer(i64::MAX)),
            (Float4, Value::Real(0.1f32.into())),
            (Float4, Value::Real(-3.5)),
            (Float4, Value::Real(f64::INFINITY)),
            (Float4, text("NaN")),
            (Float4, Value::Real(f32::MAX.into())),
            (Float8, Value::Real(0.1)),
            (Float8, Value::Real(-0.0)),
            (Float8, Value::Real(1e21)),
            (Float8, Value::Real(5e-324)),
            (Float8, Value::Real(f64::NEG_INFINITY)),
            (Float8, text("NaN")),
            (Numeric, text("0")),
            (Numeric, text("-1.5")),
            (Numeric, text("123.45")),
            (Numeric, text("0.0001")),
            (Numeric, text("100000000000000000000")),
            (Numeric, text("0.00")),
            (Numeric, text("12345678901234567890.123456789012345678901")),
            (Numeric, text("NaN")),
            (Numeric, text("Infinity")),
            (Numeric, text("-Infinity")),
            (Bytea, Value::Blob(vec![])),
            (Bytea, Value::Blob(vec![0, 1, 0xfe, 0xff, b'\\'])),
            (Date, text("2024-02-29")),
            (Date, text("0001-01-01")),
            (Date, text("9999-12-31")),
            (Date, text("1999-12-31")),
            (Date, text("infinity")),
            (Date, text("-infinity")),
            (Timestamp, text("2024-01-02 03:04:05")),
            (Timestamp, text("2024-01-02 03:04:05.5")),
            (Timestamp, text("0001-01-01 00:00:00")),
            (Timestamp, text("9999-12-31 23:59:59.999999")),
            (Timestamp, text("1969-07-20 20:17:40.000001")),
            (Timestamp, text("infinity")),
            (Timestamptz, text("2024-01-02 03:04:05.5+00")),
            (Timestamptz, text("1970-01-01 00:00:00+00")),
            (Timestamptz, text("-infinity")),
            (Uuid, text(UUID)),
            (Uuid, text("00000000-0000-0000-0000-000000000000")),
            (Json, text(r#"{"a": [1, 2.5e3, "x\n", null, true]}"#)),
            (Jsonb, text(r#"[{}, [], "é"]"#)),
        ];
        for ty in [Text, Varchar, Bpchar, Unknown, Name] {
            out.push((ty, text("")));
            out.push((ty, text("héllo, wörld ☃ ")));
        }
        out.extend([
            (Interval, text("1 year 2 mons 3 days 04:05:06.5")),
            (Interval, text("00:00:00")),
            (Interval, text("-1 days +02:00:00")),
            (Interval, text("-178000000 years")),
            (Oid, Value::Integer(0)),
            (Oid, Value::Integer(4_294_967_295)),
            (Char, text("r")),
            (Int2Vector, text("[1,2]")),
            (OidVector, text("[]")),
            (OidVector, text("[23,25]")),
        ]);
        // Each array type: its element type's samples, with a NULL among them, and empty.
        for (array, element) in array::ARRAYS {
            let mut items: Vec<Value> = out
                .iter()
                .filter(|(t, _)| t == element)
                .map(|(_, v)| v.clone())
                .collect();
            items.insert(items.len() / 2, Value::Null);
            let value = array::from_elements(&items, *array)
                .unwrap_or_else(|e| panic!("{array:?} of {items:?}: {e}"));
            out.push((*array, value));
            out.push((*array, text("[]")));
        }
        out
    }

    #[test]
    fn every_type_round_trips_in_both_formats() {
        let samples = samples();
        let covered: std::collections::HashSet<_> = samples.iter().map(|(ty, _)| *ty).collect();
        assert_eq!(covered.len(), ALL_TYPES.len(), "a type has no sample");
        for (ty, v) in samples {
            assert_eq!(
                coerce(v.clone(), ty).ok(),
                Some(v.clone()),
                "coerce {ty:?} {v:?} is not canonical"
            );
            for format in [Format::Text, Format::Binary] {
                let wire = encode(&v, ty, format).unwrap().unwrap();
                check(ty, format, &wire, v.clone());
            }
        }
        for ty in ALL_TYPES {
            assert_eq!(encode(&Value::Null, ty, Format::Binary).unwrap(), None);
            assert_eq!(coerce(Value::Null, ty).unwrap(), Value::Null);
        }
    }

    #[test]
    fn text_format_matches_postgresql() {
        use Format::Text as T;
        #[rustfmt::skip]
        let cases: Vec<(PgType, &str, Value)> = vec![
            (Bool, "t", Value::Integer(1)),
            (Bool, "f", Value::Integer(0)),
            (Int8, "-9223372036854775808", Value::Integer(i64::MIN)),
            (Float8, "1", Value::Real(1.0)),
            (Float8, "-0", Value::Real(-0.0)),
            (Float8, "0.1", Value::Real(0.1)),
            (Float8, "1e+21", Value::Real(1e21)),
            (Float8, "1e+15", Value::Real(1e15)),
            (Float8, "100000000000000", Value::Real(1e14)),
            (Float8, "123456789012345", Value::Real(123_456_789_012_345.0)),
            (Float8, "0.0001", Value::Real(1e-4)),
            (Float8, "1.5e-05", Value::Real(1.5e-5)),
            (Float8, "1.7976931348623157e+308", Value::Real(f64::MAX)),
            (Float8, "5e-324", Value::Real(5e-324)),
            (Float8, "Infinity", Value::Real(f64::INFINITY)),
            (Float8, "-Infinity", Value::Real(f64::NEG_INFINITY)),
            (Float8, "NaN", text("NaN")),
            (Float4, "0.1", Value::Real(0.1f32.into())),
            (Float4, "100000", Value::Real(1e5)),
            (Float4, "1e+06", Value::Real(1e6)),
            (Float4, "3.4028235e+38", Value::Real(f32::MAX.into())),
            (Float4, "1.2345679e-05", Value::Real(1.234_567_9e-5_f32.into())),
            (Numeric, "123.45", text("123.45")),
            (Numeric, "-0.001", text("-0.001")),
            (Bytea, "\\x00ff10", Value::Blob(vec![0, 0xff, 0x10])),
            (Date, "2000-01-01", text("2000-01-01")),
            (Timestamp, "2024-01-02 03:04:05.123", text("2024-01-02 03:04:05.123")),
            (Timestamptz, "2024-01-02 03:04:05+00", text("2024-01-02 03:04:05+00")),
            (Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", text(UUID)),
            (Text, "it's", text("it's")),
        ];
        for (ty, wire, stored) in cases {
            check(ty, T, wire.as_bytes(), stored);
        }
        // Integers stored in float columns and floats stored in numeric columns are sent too.
        assert_eq!(
            encode(&Value::Integer(3), Float8, T).unwrap().unwrap(),
            b"3"
        );
        assert_eq!(
            encode(&Value::Integer(3), Numeric, T).unwrap().unwrap(),
            b"3"
        );
        assert_eq!(
            encode(&Value::Real(0.25), Numeric, T).unwrap().unwrap(),
            b"0.25"
        );
        assert_eq!(
            encode(&Value::Real(1e20), Numeric, T).unwrap().unwrap(),
            b"100000000000000000000"
        );
        assert_eq!(
            encode(&Value::Real(f64::NAN), Float8, T).unwrap().unwrap(),
            b"NaN"
        );
        assert_eq!(encode(&text("hi"), Bytea, T).unwrap().unwrap(), b"\\x6869");
        assert_eq!(encode(&text(" 7 "), Int4, T).unwrap().unwrap(), b"7");
    }

    #[test]
    fn binary_format_matches_postgresql() {
        use Format::Binary as B;
        fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
            let mut out = [
                ndigits.to_be_bytes(),
                weight.to_be_bytes(),
                sign.to_be_bytes(),
                dscale.to_be_bytes(),
            ]
            .concat();
            for d in digits {
                out.extend(d.to_be_bytes());
            }
            out
        }
        #[rustfmt::skip]
        let cases: Vec<(PgType, Vec<u8>, Value)> = vec![
            (Bool, vec![1], Value::Integer(1)),
            (Bool, vec![0], Value::Integer(0)),
            (Int2, vec![0xff, 0xfe], Value::Integer(-2)),
            (Int4, vec![0, 0, 1, 0], Value::Integer(256)),
            (Int8, vec![0x80, 0, 0, 0, 0, 0, 0, 0], Value::Integer(i64::MIN)),
            (Float4, vec![0x3f, 0xc0, 0, 0], Value::Real(1.5)),
            (Float8, vec![0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Value::Real(1.5)),
            (Float8, vec![0x7f, 0xf8, 0, 0, 0, 0, 0, 0], text("NaN")),
            (Numeric, numeric(0, 0, 0, 0, &[]), text("0")),
            (Numeric, numeric(2, 0, 0x4000, 1, &[1, 5000]), text("-1.5")),
            (Numeric, numeric(2, 0, 0, 2, &[123, 4500]), text("123.45")),
            (Numeric, numeric(1, 1, 0, 0, &[1]), text("10000")),
            (Numeric, numeric(1, -1, 0, 4, &[1]), text("0.0001")),
            (Numeric, numeric(1, 5, 0, 0, &[1]), text("100000000000000000000")),
            (Numeric, numeric(0, 0, 0, 2, &[]), text("0.00")),
            (Numeric, numeric(2, 1, 0, 0, &[12, 3456]), text("123456")),
            (Numeric, numeric(1, -2, 0, 8, &[1]), text("0.00000001")),
            (Numeric, numeric(0, 0, 0xC000, 0, &[]), text("NaN")),
            (Numeric, numeric(0, 0, 0xD000, 0, &[]), text("Infinity")),
            (Numeric, numeric(0, 0, 0xF000, 0, &[]), text("-Infinity")),
            (Text, b"h\xc3\xa9".to_vec(), text("hé")),
            (Json, b"[1]".to_vec(), text("[1]")),
            (Jsonb, b"\x01[1]".to_vec(), text("[1]")),
            (Bytea, vec![0, 159], Value::Blob(vec![0, 159])),
            (Date, vec![0, 0, 0, 0], text("2000-01-01")),
            (Date, vec![0xff, 0xff, 0xff, 0xff], text("1999-12-31")),
            (Date, vec![0x7f, 0xff, 0xff, 0xff], text("infinity")),
            (Date, 8766i32.to_be_bytes().to_vec(), text("2024-01-01")),
            (Timestamp, 0i64.to_be_bytes().to_vec(), text("2000-01-01 00:00:00")),
            (Timestamp, (-1i64).to_be_bytes().to_vec(), text("1999-12-31 23:59:59.999999")),
            (Timestamp, UNIX_EPOCH_US.to_be_bytes().to_vec(), text("1970-01-01 00:00:00")),
            (Timestamptz, 1_500_000i64.to_be_bytes().to_vec(), text("2000-01-01 00:00:01.5+00")),
            (Timestamptz, i64::MIN.to_be_bytes().to_vec(), text("-infinity")),
            (Uuid, UUID_BYTES.to_vec(), text(UUID)),
        ];
        for (ty, wire, stored) in cases {
            check(ty, B, &wire, stored);
        }
        // The extremes of numeric's binary range.
        let huge = format!("1{}", "0".repeat(131_068));
        check(Numeric, B, &numeric(1, 32767, 0, 0, &[1]), text(&huge));
        let tiny = format!("0.{}1", "0".repeat(16_379));
        check(Numeric, B, &numeric(1, -4095, 0, 16_380, &[1]), text(&tiny));
        // Non-canonical binary numerics: digits past dscale are truncated, as PostgreSQL does.
        let truncated = decode(&numeric(2, 0, 0, 0, &[1, 5000]), Numeric, B).unwrap();
        assert_eq!(truncated, text("1"));
        // Stored numbers in a numeric column.
        assert_eq!(
            encode(&Value::Integer(-15), Numeric, B).unwrap().unwrap(),
            numeric(1, 0, 0x4000, 0, &[15])
        );
        assert_eq!(
            encode(&Value::Real(-1.5), Numeric, B).unwrap().unwrap(),
            numeric(2, 0, 0x4000, 1, &[1, 5000])
        );
        assert_eq!(
            encode(&text("1e20"), Numeric, B).unwrap().unwrap(),
            numeric(1, 5, 0, 0, &[1])
        );
    }

    #[test]
    fn text_input_forms_are_normalised() {
        #[rustfmt::skip]
        let cases: Vec<(PgType, &str, Value)> = vec![
            (Int2, " -32768 ", Value::Integer(-32768)),
            (Int4, "+42", Value::Integer(42)),
            (Int8, "0009223372036854775807", Value::Integer(i64::MAX)),
            (Float8, " 1e3 ", Value::Real(1000.0)),
            (Float8, "-inf", Value::Real(f64::NEG_INFINITY)),
            (Float8, "nan", text("NaN")),
            (Float8, ".5", Value::Real(0.5)),
            (Float4, "0.1", Value::Real(0.1f32.into())),
            (Numeric, "1e20", text("100000000000000000000")),
            (Numeric, "1.5e-3", text("0.0015")),
            (Numeric, "1.50E1", text("15.0")),
            (Numeric, " +007.10 ", text("7.10")),
            (Numeric, "-0", text("0")),
            (Numeric, ".5", text("0.5")),
            (Numeric, "5.", text("5")),
            (Numeric, "-inf", text("-Infinity")),
            (Numeric, "nan", text("NaN")),
            (Bytea, "\\x 01 ab\nCD", Value::Blob(vec![1, 0xab, 0xcd])),
            (Bytea, "a\\\\b\\001\\377", Value::Blob(vec![b'a', b'\\', b'b', 1, 255])),
            (Bytea, "plain", Value::Blob(b"plain".to_vec())),
            (Date, "2024-1-2", text("2024-01-02")),
            (Date, "2024-01-02 23:59:59+05", text("2024-01-02")),
            (Date, "epoch", text("1970-01-01")),
            (Date, "INFINITY", text("infinity")),
            (Timestamp, "2024-01-02T03:04:05", text("2024-01-02 03:04:05")),
            (Timestamp, "2024-01-02   03:04", text("2024-01-02 03:04:00")),
            (Timestamp, "2024-01-02", text("2024-01-02 00:00:00")),
            (Timestamp, "2024-01-02 03:04:05.500000", text("2024-01-02 03:04:05.5")),
            (Timestamp, "2024-01-02 03:04:05.1234567", text("2024-01-02 03:04:05.123457")),
            (Timestamp, "2024-01-02 23:59:59.9999999", text("2024-01-03 00:00:00")),
            (Timestamp, "2024-12-31 24:00:00", text("2025-01-01 00:00:00")),
            (Timestamp, "2024-01-02 03:04:05+05:30", text("2024-01-02 03:04:05")),
            (Timestamptz, "2024-01-02 03:04:05", text("2024-01-02 03:04:05+00")),
            (Timestamptz, "2024-01-02T03:04:05Z", text("2024-01-02 03:04:05+00")),
            (Timestamptz, "2024-01-02 03:04:05+00", text("2024-01-02 03:04:05+00")),
            (Timestamptz, "2024-01-02 03:04:05.25+05:30", text("2024-01-01 21:34:05.25+00")),
            (Timestamptz, "2024-01-02 03:04:05-0800", text("2024-01-02 11:04:05+00")),
            (Timestamptz, "2024-01-02 03:04:05 -08", text("2024-01-02 11:04:05+00")),
            (Timestamptz, "2024-12-31 23:00:00-02", text("2025-01-01 01:00:00+00")),
            (Timestamptz, "2024-01-02 03:04:05 UTC", text("2024-01-02 03:04:05+00")),
            (Timestamptz, "0001-01-01 01:00:00+01", text("0001-01-01 00:00:00+00")),
            (Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", text(UUID)),
            (Uuid, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", text(UUID)),
            (Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11", text(UUID)),
            (Uuid, "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", text(UUID)),
            (Json, " [1, {\"a\": \"\\u00e9\"}] ", text(" [1, {\"a\": \"\\u00e9\"}] ")),
            (Bpchar, "ab  ", text("ab  ")),
        ];
        for (ty, input, stored) in cases {
            check_input(ty, input, stored);
        }
    }

    #[test]
    fn bool_spellings() {
        for t in [
            "t", "true", "TRUE", " True ", "tr", "y", "yes", "on", "ON", "1",
        ] {
            check_input(Bool, t, Value::Integer(1));
        }
        for f in ["f", "false", "fAlSe", "\tf\n", "n", "no", "of", "off", "0"] {
            check_input(Bool, f, Value::Integer(0));
        }
        for bad in ["", "o", "2", "truee", "yess", "t rue", "-1", "null"] {
            check_error(
                Bool,
                Format::Text,
                bad.as_bytes(),
                sqlstate::INVALID_TEXT_REPRESENTATION,
            );
        }
    }

    #[test]
    fn coerce_follows_postgresql_casts() {
        #[rustfmt::skip]
        let cases: Vec<(Value, PgType, Value)> = vec![
            (Value::Integer(5), Bool, Value::Integer(1)),
            (text("yes"), Bool, Value::Integer(1)),
            (Value::Real(2.5), Int4, Value::Integer(2)),
            (Value::Real(3.5), Int4, Value::Integer(4)),
            (text("42"), Int8, Value::Integer(42)),
            (Value::Blob(b"42".to_vec()), Int8, Value::Integer(42)),
            (Value::Integer(3), Float8, Value::Real(3.0)),
            (Value::Real(0.1), Float4, Value::Real(0.1f32.into())),
            (Value::Real(f64::NAN), Float8, text("NaN")),
            (Value::Integer(42), Numeric, Value::Integer(42)),
            (Value::Real(1.5), Numeric, Value::Real(1.5)),
            (Value::Real(f64::NAN), Numeric, text("NaN")),
            (text("1.50"), Numeric, text("1.50")),
            (Value::Integer(42), Text, text("42")),
            (Value::Real(1.5), Varchar, text("1.5")),
            (Value::Blob(b"hi".to_vec()), Text, text("hi")),
            (text("\\x6869"), Bytea, Value::Blob(b"hi".to_vec())),
            (Value::Integer(7), Json, text("7")),
            (text("2024-01-02 03:04:05+01"), Timestamptz, text("2024-01-02 02:04:05+00")),
        ];
        for (input, ty, want) in cases {
            assert_eq!(
                coerce(input.clone(), ty).ok(),
                Some(want),
                "coerce {input:?} to {ty:?}"
            );
        }
        #[rustfmt::skip]
        let errors: Vec<(Value, PgType, &str)> = vec![
            (Value::Integer(40000), Int2, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
            (Value::Real(1e19), Int8, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
            (Value::Real(f64::NAN), Int4, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
            (Value::Real(1e39), Float4, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
            (Value::Real(1e-50), Float4, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
            (Value::Real(1.5), Bool, sqlstate::INVALID_TEXT_REPRESENTATION),
            (Value::Integer(20240102), Date, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("abc"), Int4, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("{"), Jsonb, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("a\0b"), Text, sqlstate::INVALID_TEXT_REPRESENTATION),
            (Value::Blob(vec![0xff]), Text, sqlstate::INVALID_TEXT_REPRESENTATION),
        ];
        for (input, ty, code) in errors {
            let e = coerce(input.clone(), ty).expect_err(&format!("coerce {input:?} to {ty:?}"));
            assert_eq!(e.code(), code, "coerce {input:?} to {ty:?}: {e}");
        }
    }

    #[test]
    fn encode_rejects_unrepresentable_stored_values() {
        #[rustfmt::skip]
        let cases: Vec<(Value, PgType, &str)> = vec![
            (text("abc"), Int4, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("abc"), Float8, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("abc"), Numeric, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("abc"), Date, sqlstate::INVALID_TEXT_REPRESENTATION),
            (text("abc"), Uuid, sqlstate::INVALID_TEXT_REPRESENTATION),
            (Value::Blob(vec![1, 2]), Timestamp, sqlstate::INVALID_TEXT_REPRESENTATION),
            (Value::Blob(vec![0xff]), Text, sqlstate::INVALID_TEXT_REPRESENTATION),
            (Value::Integer(40000), Int2, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE),
        ];
        for (v, ty, code) in cases {
            for format in [Format::Text, Format::Binary] {
                let e = encode(&v, ty, format).expect_err(&format!("encode {v:?} as {ty:?}"));
                assert_eq!(e.code(), code, "encode {v:?} as {ty:?}: {e}");
            }
        }
        let e = encode(&text("abc"), Int4, Format::Text).unwrap_err();
        let want = "stored value cannot be sent as integer: \
                    invalid input syntax for type integer: \"abc\"";
        assert_eq!(e.to_string(), want);
    }

    #[test]
    fn malformed_input_is_rejected() {
        use Format::{Binary as B, Text as T};
        let syntax = sqlstate::INVALID_TEXT_REPRESENTATION;
        let range = sqlstate::NUMERIC_VALUE_OUT_OF_RANGE;
        let protocol = sqlstate::PROTOCOL_VIOLATION;
        let after_max_date = (MAX_DATE as i32 + 1).to_be_bytes();
        let before_min_timestamp = (MIN_TIMESTAMP - 1).to_be_bytes();
        #[rustfmt::skip]
        let cases: Vec<(PgType, Format, &[u8], &str)> = vec![
            (Int4, T, b"abc", syntax),
            (Int4, T, b"", syntax),
            (Int4, T, b"1.5", syntax),
            (Int4, T, b"- 1", syntax),
            (Int2, T, b"40000", range),
            (Int4, T, b"2147483648", range),
            (Int8, T, b"9223372036854775808", range),
            (Int8, T, b"-99999999999999999999999999", range),
            (Int4, T, b"\xff", syntax),
            (Float8, T, b"1e400", range),
            (Float8, T, b"1e-400", range),
            (Float4, T, b"1e39", range),
            (Float8, T, b"1.5x", syntax),
            (Numeric, T, b"1.2.3", syntax),
            (Numeric, T, b"1e", syntax),
            (Numeric, T, b"e5", syntax),
            (Numeric, T, b".", syntax),
            (Numeric, T, b"1e1001", syntax),
            (Numeric, T, b"1e99999999999", syntax),
            (Bytea, T, b"\\x123", syntax),
            (Bytea, T, b"\\xzz", syntax),
            (Bytea, T, b"a\\b", syntax),
            (Bytea, T, b"\\400", syntax),
            (Date, T, b"2024-13-01", "22008"),
            (Date, T, b"2023-02-29", "22008"),
            (Date, T, b"2024-01-02 25:00", "22008"),
            (Date, T, b"24-01-02", syntax),
            (Date, T, b"10000-01-01", range),
            (Date, T, b"0000-12-31", range),
            (Timestamp, T, b"2024-01-02 03:04:61", "22008"),
            (Timestamp, T, b"2024-01-02 24:00:01", "22008"),
            (Timestamp, T, b"2024-01-02T", syntax),
            (Timestamp, T, b"2024-01-02 3", syntax),
            (Timestamp, T, b"2024-01-02 03:04:05.", syntax),
            (Timestamptz, T, b"2024-01-02 03:04:05+16", syntax),
            (Timestamptz, T, b"2024-01-02 03:04:05 PST", syntax),
            (Timestamptz, T, b"9999-12-31 23:00:00-02", range),
            (Timestamptz, T, b"0001-01-01 00:00:00+01", range),
            (Uuid, T, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", syntax),
            (Uuid, T, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", syntax),
            (Uuid, T, b"a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", syntax),
            (Uuid, T, b"-a0eebc999c0b4ef8bb6d6bb9bd380a11", syntax),
            (Uuid, T, b"{a0eebc999c0b4ef8bb6d6bb9bd380a11", syntax),
            (Uuid, T, b"g0eebc999c0b4ef8bb6d6bb9bd380a11", syntax),
            (Json, T, b"{\"a\" 1}", syntax),
            (Json, T, b"[1,]", syntax),
            (Json, T, b"01", syntax),
            (Json, T, b"\"\\x\"", syntax),
            (Json, T, b"[1] [2]", syntax),
            (Jsonb, T, b"", syntax),
            (Text, T, b"a\x00b", syntax),
            (Text, T, b"\xc3\x28", syntax),
            (Bool, B, b"", protocol),
            (Int2, B, &[0, 0, 0, 1], protocol),
            (Int4, B, &[0, 1], protocol),
            (Int8, B, &[0; 9], protocol),
            (Float4, B, &[0; 8], protocol),
            (Float8, B, &[0; 4], protocol),
            (Uuid, B, &[0; 15], protocol),
            (Date, B, &[0; 8], protocol),
            (Timestamp, B, &[0; 4], protocol),
            (Numeric, B, &[0; 7], protocol),
            (Numeric, B, &[0, 1, 0, 0, 0, 0, 0, 0], protocol),
            (Numeric, B, &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], protocol),
            (Numeric, B, &[0xff, 0xff, 0, 0, 0, 0, 0, 0], protocol),
            (Numeric, B, &[0, 0, 0, 0, 0x12, 0x34, 0, 0], protocol),
            (Numeric, B, &[0, 0, 0, 0, 0, 0, 0x40, 0], protocol),
            (Jsonb, B, b"\x02{}", protocol),
            (Jsonb, B, b"", protocol),
            (Jsonb, B, b"\x01{", syntax),
            (Text, B, b"\xff", syntax),
            (Date, B, &after_max_date, range),
            (Timestamp, B, &before_min_timestamp, range),
        ];
        for (ty, format, input, code) in cases {
            check_error(ty, format, input, code);
        }
    }

    #[test]
    fn declared_type_names() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<PgType>)> = vec![
            ("integer", Some(Int4)),
            ("INT", Some(Int4)),
            ("int4", Some(Int4)),
            ("serial", Some(Int4)),
            ("smallserial", Some(Int2)),
            ("bigserial", Some(Int8)),
            ("BigInt", Some(Int8)),
            ("int8", Some(Int8)),
            ("smallint", Some(Int2)),
            ("int2", Some(Int2)),
            ("real", Some(Float4)),
            ("float4", Some(Float4)),
            ("double   precision", Some(Float8)),
            ("float8", Some(Float8)),
            ("float", Some(Float8)),
            ("float(53)", Some(Float8)),
            ("float(24)", Some(Float4)),
            ("float(54)", None),
            ("numeric", Some(Numeric)),
            ("numeric(10,2)", Some(Numeric)),
            ("NUMERIC ( 10 , 2 )", Some(Numeric)),
            ("decimal", Some(Numeric)),
            ("decimal(5)", Some(Numeric)),
            ("text", Some(Text)),
            ("varchar", Some(Varchar)),
            ("varchar(20)", Some(Varchar)),
            ("character varying(20)", Some(Varchar)),
            ("char", Some(Bpchar)),
            ("char(3)", Some(Bpchar)),
            ("character(3)", Some(Bpchar)),
            ("bpchar", Some(Bpchar)),
            ("boolean", Some(Bool)),
            ("bool", Some(Bool)),
            ("date", Some(Date)),
            ("timestamp", Some(Timestamp)),
            ("timestamp without time zone", Some(Timestamp)),
            ("timestamp(3)", Some(Timestamp)),
            ("timestamp(3) with time zone", Some(Timestamptz)),
            ("timestamptz", Some(Timestamptz)),
            (" Timestamp  With Time Zone ", Some(Timestamptz)),
            ("bytea", Some(Bytea)),
            ("json", Some(Json)),
            ("jsonb", Some(Jsonb)),
            ("uuid", Some(Uuid)),
            ("", None),
            ("blob", None),
            ("int[]", Some(Int4Array)),
            ("INTEGER[3]", Some(Int4Array)),
            ("text[][]", Some(TextArray)),
            ("varchar(10)[]", Some(VarcharArray)),
            ("timestamp with time zone[]", Some(TimestamptzArray)),
            ("integer ARRAY", Some(Int4Array)),
            ("_int8", Some(Int8Array)),
            ("interval", Some(Interval)),
            ("interval(3)", Some(Interval)),
            ("interval day to second", Some(Interval)),
            ("oid", Some(Oid)),
            ("\"char\"", Some(Char)),
            ("int[", None),
            ("interval fortnight", None),
            ("integer(5)", None),
            ("varchar(", None),
            ("varchar(x)", None),
            ("numeric(1)(2)", None),
            ("time", None),
            ("double", None),
        ];
        for (name, want) in cases {
            assert_eq!(PgType::parse_declared(name), want, "{name:?}");
        }
    }

    #[test]
    fn oids_names_and_inference() {
        for ty in ALL_TYPES {
            assert_eq!(PgType::from_oid(ty.oid()), Some(ty));
            assert!(!ty.name().is_empty());
            if ty != Unknown {
                assert_eq!(PgType::parse_declared(ty.name()), Some(ty), "{}", ty.name());
            }
        }
        assert_eq!(PgType::from_oid(0), None);
        assert_eq!(Int4.oid(), 23);
        assert_eq!(Jsonb.oid(), 3802);
        assert_eq!(Numeric.sqlite_type(), "NUMERIC");
        assert_eq!(Bool.sqlite_type(), "INTEGER");
        assert_eq!(Float4.sqlite_type(), "REAL");
        assert_eq!(Bytea.sqlite_type(), "BLOB");
        assert_eq!(Uuid.sqlite_type(), "TEXT");
        assert_eq!(PgType::infer(&Value::Integer(1)), Int8);
        assert_eq!(PgType::infer(&Value::Real(1.0)), Float8);
        assert_eq!(PgType::infer(&text("x")), Text);
        assert_eq!(PgType::infer(&Value::Blob(vec![])), Bytea);
        assert_eq!(PgType::infer(&Value::Null), Text);
    }

    #[test]
    fn civil_date_arithmetic() {
        assert_eq!(PG_EPOCH_DAYS, 10_957);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for days in (MIN_DATE..=MAX_DATE).step_by(97) {
            let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
            assert!((1..=12).contains(&m) && (1..=days_in_month(y, m)).contains(&d));
            assert_eq!(days_from_civil(y, m, d) - PG_EPOCH_DAYS, days);
        }
        assert_eq!(civil_from_days(MIN_DATE + PG_EPOCH_DAYS), (1, 1, 1));
        assert_eq!(civil_from_days(MAX_DATE + PG_EPOCH_DAYS), (9999, 12, 31));
        assert_eq!(PG_EPOCH_UNIX_MICROS, 946_684_800_000_000);
        let unix = 1_704_164_645_500_000 - PG_EPOCH_UNIX_MICROS; // 2024-01-02 03:04:05.5 UTC
        assert_eq!(
            format_timestamp_micros(unix, true),
            "2024-01-02 03:04:05.5+00"
        );
        assert_eq!(
            format_timestamp_micros(unix, false),
            "2024-01-02 03:04:05.5"
        );
    }

    /// Pseudo-random input never panics, and whatever decodes re-encodes to the same value.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const ALPHABET: &[u8] = b"0123456789-+.:eEtTxXzZ {}[]\",\\nafu \x00\xff\xc3";
        let mut decoded = 0;
        for ty in ALL_TYPES {
            for format in [Format::Text, Format::Binary] {
                let valid: Vec<Vec<u8>> = samples()
                    .into_iter()
                    .filter(|(t, _)| *t == ty)
                    .filter_map(|(_, v)| encode(&v, ty, format).ok().flatten())
                    .collect();
                for round in 0..300 {
                    let r = next();
                    let mut input: Vec<u8> = match round % 3 {
                        // Raw bytes.
                        0 => (0..r % 24).map(|_| next() as u8).collect(),
                        // Bytes from an alphabet that reaches deeper into the parsers.
                        1 => (0..r % 40)
                            .map(|_| ALPHABET[next() as usize % ALPHABET.len()])
                            .collect(),
                        // A valid encoding with a few bytes changed, cut or extended.
                        _ => valid[r as usize % valid.len()].clone(),
                    };
                    if round % 3 == 2 {
                        for _ in 0..1 + next() % 3 {
                            let at = next() as usize % (input.len() + 1);
                            match next() % 3 {
                                0 if at < input.len() => input[at] = next() as u8,
                                1 => input.truncate(at),
                                _ => input.insert(at, ALPHABET[next() as usize % ALPHABET.len()]),
                            }
                        }
                    }
                    if let Ok(v) = decode(&input, ty, format) {
                        decoded += 1;
                        let wire = encode(&v, ty, format)
                            .unwrap_or_else(|e| panic!("{ty:?} {format:?} {input:?} → {v:?}: {e}"))
                            .unwrap();
                        assert_eq!(
                            decode(&wire, ty, format).ok(),
                            Some(v.clone()),
                            "{ty:?} {format:?} {input:?}"
                        );
                        assert_eq!(
                            coerce(v.clone(), ty).ok(),
                            Some(v),
                            "{ty:?} {format:?} {input:?}"
                        );
                    }
                }
            }
        }
        assert!(decoded > 500, "only {decoded} random inputs decoded");
    }
}
