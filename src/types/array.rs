//! One-dimensional arrays (`integer[]`, `text[]`, ...) and the catalogs' vectors
//! (`int2vector`, `oidvector`).
//!
//! Stored form: a JSON array of the elements' stored forms (`[1,2,null]`, `["a","b c"]`;
//! booleans as 0/1 as SQLite keeps them), so SQLite's own JSON functions work on it:
//! `json_each` unnests, `json_array` builds `ARRAY[...]`, `json_array_length` counts. The
//! JSON is compact, as SQLite writes it, so two equal arrays are equal text.
//!
//! Wire forms are PostgreSQL's: text `{1,2,NULL}` (vectors `1 2`), binary `array_send`.
//! Multidimensional arrays are refused with 0A000.

use super::{
    bad_binary, bad_syntax, binary_in as element_binary_in, binary_out as element_binary_out,
    from_value, stored, text_in as element_text_in, text_out as element_text_out, Datum, PgType,
};
use crate::error::{sqlstate, Error, Result};
use crate::limits;
use rusqlite::types::Value;

/// Array types and their element types.
pub const ARRAYS: &[(PgType, PgType)] = {
    use PgType::*;
    &[
        (BoolArray, Bool),
        (Int2Array, Int2),
        (Int4Array, Int4),
        (Int8Array, Int8),
        (Float4Array, Float4),
        (Float8Array, Float8),
        (NumericArray, Numeric),
        (TextArray, Text),
        (VarcharArray, Varchar),
        (BpcharArray, Bpchar),
        (ByteaArray, Bytea),
        (DateArray, Date),
        (TimestampArray, Timestamp),
        (TimestamptzArray, Timestamptz),
        (JsonArray, Json),
        (JsonbArray, Jsonb),
        (UuidArray, Uuid),
        (IntervalArray, Interval),
        (OidArray, Oid),
        (NameArray, Name),
        (CharArray, Char),
    ]
};

/// The element type named by a declared array type — `integer[]`, `int[3]`, `text[][]`,
/// `integer ARRAY`, `_int4` — or None if `name` is not an array type.
pub fn declared_element(name: &str) -> Option<&str> {
    let t = name.trim();
    if let Some(open) = t.find('[') {
        let suffix = &t[open..];
        let brackets_only = suffix
            .chars()
            .all(|c| c.is_ascii_digit() || "[] ".contains(c));
        return (brackets_only && suffix.trim_end().ends_with(']')).then(|| t[..open].trim());
    }
    let lower = t.to_ascii_lowercase();
    if lower.ends_with(" array") {
        return Some(t[..t.len() - " array".len()].trim());
    }
    t.strip_prefix('_').filter(|rest| !rest.is_empty())
}

fn is_vector(ty: PgType) -> bool {
    matches!(ty, PgType::Int2Vector | PgType::OidVector)
}

fn element_of(ty: PgType) -> PgType {
    ty.element().expect("array types have an element type")
}

fn multidimensional() -> Error {
    Error::unsupported("multidimensional arrays")
}

fn too_many() -> Error {
    Error::sql(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "array size exceeds the maximum allowed ({})",
            limits::ARRAY_ELEMENTS_MAX
        ),
    )
}

/// Text input: PostgreSQL's `{a,"b c",NULL}` (with an optional `[1:3]=` dimension
/// decoration), a vector's `1 2 3`, or the stored JSON form.
pub(super) fn text_in(s: &str, ty: PgType) -> Result<Datum> {
    let element = element_of(ty);
    let t = super::trim_pg(s);
    if t.starts_with('[') && !t.contains("]=") {
        return json_in(t, ty);
    }
    let items = if is_vector(ty) {
        t.split_ascii_whitespace()
            .map(|w| Some(w.to_string()))
            .collect()
    } else {
        split_text(t).ok_or_else(|| bad_syntax(ty, s))??
    };
    if items.len() > limits::ARRAY_ELEMENTS_MAX {
        return Err(too_many());
    }
    items
        .into_iter()
        .map(|item| item.map(|text| element_text_in(&text, element)).transpose())
        .collect::<Result<Vec<_>>>()
        .map(Datum::Array)
}

/// The elements of `{...}` as text (None for NULL); None on a syntax error, Some(Err) for a
/// nested array.
fn split_text(t: &str) -> Option<Result<Vec<Option<String>>>> {
    let t = match t.find("]=") {
        Some(at) if t.starts_with('[') => t[at + 2..].trim_start(),
        _ => t,
    };
    let inner = t.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    if inner.trim().is_empty() {
        return Some(Ok(items));
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut text = String::new();
        let mut quoted = false;
        match chars.peek() {
            Some('{') => return Some(Err(multidimensional())),
            Some('"') => {
                quoted = true;
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => text.push(chars.next()?),
                        c => text.push(c),
                    }
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' => break,
                        '"' | '{' | '}' => return None,
                        '\\' => {
                            chars.next();
                            text.push(chars.next()?);
                        }
                        c => {
                            text.push(c);
                            chars.next();
                        }
                    }
                }
                let kept = text.trim_end().len();
                text.truncate(kept);
                if text.is_empty() {
                    return None;
                }
            }
        }
        let null = !quoted && text.eq_ignore_ascii_case("null");
        items.push((!null).then_some(text));
        match chars.next() {
            None => return Some(Ok(items)),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// The stored JSON form back into elements.
fn json_in(t: &str, ty: PgType) -> Result<Datum> {
    let element = element_of(ty);
    let parsed: serde_json::Value = serde_json::from_str(t).map_err(|_| bad_syntax(ty, t))?;
    let serde_json::Value::Array(items) = parsed else {
        return Err(bad_syntax(ty, t));
    };
    if items.len() > limits::ARRAY_ELEMENTS_MAX {
        return Err(too_many());
    }
    items
        .into_iter()
        .map(|item| {
            let value = match item {
                serde_json::Value::Null => return Ok(None),
                serde_json::Value::Bool(b) => Value::Integer(b.into()),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Integer(i),
                    None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::String(s) => Value::Text(s),
                serde_json::Value::Array(_) => return Err(multidimensional()),
                serde_json::Value::Object(_) => return Err(bad_syntax(ty, t)),
            };
            from_value(&value, element).map(Some)
        })
        .collect::<Result<Vec<_>>>()
        .map(Datum::Array)
}

/// The stored JSON form of elements of array type `ty`.
pub(super) fn stored_json(items: Vec<Option<Datum>>, ty: PgType) -> String {
    let element = element_of(ty);
    let json: Vec<serde_json::Value> = items
        .into_iter()
        .map(|item| match item.map(|d| stored(d, element)) {
            None | Some(Value::Null) => serde_json::Value::Null,
            Some(Value::Integer(i)) => i.into(),
            Some(Value::Real(f)) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| super::float_text(f, false).into()),
            Some(Value::Text(s)) => s.into(),
            Some(Value::Blob(b)) => element_text_out(&Datum::Bytes(b), PgType::Bytea).into(),
        })
        .collect();
    serde_json::Value::Array(json).to_string()
}

/// Whether an element's text must be quoted in an array's text form.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.eq_ignore_ascii_case("null")
        || s.chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace())
}

pub(super) fn text_out(items: &[Option<Datum>], ty: PgType) -> String {
    let element = element_of(ty);
    let texts = items.iter().map(|item| match item {
        None => "NULL".to_string(),
        Some(d) => element_text_out(d, element),
    });
    if is_vector(ty) {
        return texts.collect::<Vec<_>>().join(" ");
    }
    let mut out = String::from("{");
    for (i, text) in texts.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let null = items[i].is_none();
        if !null && needs_quotes(&text) {
            out.push('"');
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&text);
        }
    }
    out.push('}');
    out
}

/// PostgreSQL's array_send: dimensions, a has-nulls flag, the element type, then each
/// element's length and binary form (-1 for NULL).
pub(super) fn binary_out(items: &[Option<Datum>], ty: PgType) -> Vec<u8> {
    let element = element_of(ty);
    let mut out = Vec::new();
    let ndim: i32 = if items.is_empty() { 0 } else { 1 };
    out.extend(ndim.to_be_bytes());
    out.extend(i32::from(items.iter().any(Option::is_none)).to_be_bytes());
    out.extend(element.oid().to_be_bytes());
    if ndim == 1 {
        out.extend((items.len() as i32).to_be_bytes());
        out.extend(if is_vector(ty) { 0i32 } else { 1i32 }.to_be_bytes());
    }
    for item in items {
        match item {
            None => out.extend((-1i32).to_be_bytes()),
            Some(d) => {
                let bytes = element_binary_out(d, element);
                out.extend((bytes.len() as i32).to_be_bytes());
                out.extend(bytes);
            }
        }
    }
    out
}

/// A reader over a binary array.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    ty: PgType,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let b = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| bad_binary(self.ty, &format!("{what} cut short")))?;
        self.at += n;
        Ok(b)
    }

    fn int(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes(b.try_into().expect("four bytes")))
    }
}

/// PostgreSQL's array_recv, for one dimension.
pub(super) fn binary_in(bytes: &[u8], ty: PgType) -> Result<Datum> {
    let element = element_of(ty);
    let mut r = Reader { bytes, at: 0, ty };
    let ndim = r.int("dimensions")?;
    let _has_nulls = r.int("flags")?;
    let oid = r.int("element type")? as u32;
    let len = match ndim {
        0 => 0,
        1 => {
            let len = r.int("length")?;
            let _lower_bound = r.int("lower bound")?;
            usize::try_from(len).map_err(|_| bad_binary(ty, "negative length"))?
        }
        n if n > 1 => return Err(multidimensional()),
        _ => return Err(bad_binary(ty, "negative dimensions")),
    };
    if oid != element.oid() && !(element == PgType::Text && oid == PgType::Varchar.oid()) {
        return Err(Error::sql(
            sqlstate::DATATYPE_MISMATCH,
            format!(
                "binary data has array element type {oid} instead of expected {}",
                element.oid()
            ),
        ));
    }
    if len > limits::ARRAY_ELEMENTS_MAX {
        return Err(too_many());
    }
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        let n = r.int("element length")?;
        if n < 0 {
            items.push(None);
            continue;
        }
        let body = r.take(n as usize, "element")?;
        items.push(Some(element_binary_in(body, element)?));
    }
    if r.at != bytes.len() {
        return Err(bad_binary(ty, "trailing bytes"));
    }
    Ok(Datum::Array(items))
}

/// The elements of a stored array as stored values (NULL for a NULL element), for the SQL
/// functions over arrays. A value that is not an array of `ty` is an error.
pub fn elements(value: &Value, ty: PgType) -> Result<Vec<Value>> {
    let element = element_of(ty);
    match from_value(value, ty)? {
        Datum::Array(items) => Ok(items
            .into_iter()
            .map(|i| i.map_or(Value::Null, |d| stored(d, element)))
            .collect()),
        _ => Err(Error::internal("not an array datum")),
    }
}

/// The stored array of type `ty` holding stored element values.
pub fn from_elements(values: &[Value], ty: PgType) -> Result<Value> {
    let element = element_of(ty);
    if values.len() > limits::ARRAY_ELEMENTS_MAX {
        return Err(too_many());
    }
    let items = values
        .iter()
        .map(|v| match v {
            Value::Null => Ok(None),
            v => from_value(v, element).map(Some),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Value::Text(stored_json(items, ty)))
}

/// A stored value as a JSON array element (what `json_array` would make of it).
pub fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| super::float_text(*f, false).into()),
        Value::Text(s) => s.clone().into(),
        Value::Blob(b) => element_text_out(&Datum::Bytes(b.clone()), PgType::Bytea).into(),
    }
}

/// A JSON array element as the value SQLite's `json_each` would give for it.
pub fn value_of_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer((*b).into()),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// The elements of a stored array (JSON) without knowing its type; None if it is not one.
pub fn json_items(stored: &str) -> Option<Vec<serde_json::Value>> {
    match serde_json::from_str(stored).ok()? {
        serde_json::Value::Array(items) => Some(items),
        _ => None,
    }
}
