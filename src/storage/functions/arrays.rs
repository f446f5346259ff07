//! PostgreSQL's array functions over Cairn's stored arrays (JSON text, see
//! `types::array`): `array_agg`, `array_length`, `cardinality`, `array_position`,
//! `array_append`/`prepend`/`cat`/`remove`/`replace`, `array_to_string`, `string_to_array`,
//! subscripts, and the `@>` `<@` `&&` operators. NULL in, NULL out, as PostgreSQL's are.

use super::{coded, sql_error, type_arg};
use crate::error::sqlstate;
use crate::limits;
use crate::types::{self, array, PgType};
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use serde_json::Value as Json;

type Items = Vec<Json>;

/// The array argument `i`: None for NULL, an error if it is not an array.
fn items(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Option<Items>> {
    match ctx.get_raw(i) {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => {
            let text = std::str::from_utf8(t).unwrap_or("");
            match array::json_items(text) {
                Some(items) => Ok(Some(items)),
                None => Err(not_an_array(text)),
            }
        }
        other => Err(not_an_array(&format!("{other:?}"))),
    }
}

fn not_an_array(what: &str) -> rusqlite::Error {
    coded(
        sqlstate::INVALID_TEXT_REPRESENTATION,
        format!("malformed array literal: \"{what}\""),
    )
}

fn stored(items: Items) -> rusqlite::Result<String> {
    if items.len() > limits::ARRAY_ELEMENTS_MAX {
        return Err(coded(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "array size exceeds the maximum allowed ({})",
                limits::ARRAY_ELEMENTS_MAX
            ),
        ));
    }
    Ok(Json::Array(items).to_string())
}

/// Equality of two elements as SQL compares them (1 = 1.0); NULL equals nothing.
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::Null, _) | (_, Json::Null) => false,
        (Json::Bool(x), Json::Number(n)) | (Json::Number(n), Json::Bool(x)) => {
            n.as_i64() == Some(i64::from(*x))
        }
        _ => a == b,
    }
}

/// `IS NOT DISTINCT FROM` on elements: NULL equals NULL (array_position, array_remove).
fn not_distinct(a: &Json, b: &Json) -> bool {
    (a.is_null() && b.is_null()) || same(a, b)
}

fn element_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<Json> {
    Ok(array::json_of(&ctx.get::<Value>(i)?))
}

/// The text PostgreSQL prints for an element of `ty` (booleans `t`/`f`, numbers as printed).
fn element_text(item: &Json, element: Option<PgType>) -> String {
    let value = array::value_of_json(item);
    if let Some(ty) = element {
        if let Ok(Some(bytes)) = types::encode(&value, ty, types::Format::Text) {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    match value {
        Value::Text(s) => s,
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        _ => String::new(),
    }
}

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let constant = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_aggregate_function("array_agg", 1, constant, ArrayAgg)?;
    // a[i], 1-based; out of range is NULL.
    conn.create_scalar_function("cairn_array_get", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(Value::Null);
        };
        let ValueRef::Integer(i) = ctx.get_raw(1) else {
            return Ok(Value::Null);
        };
        Ok(usize::try_from(i - 1)
            .ok()
            .and_then(|i| items.get(i))
            .map_or(Value::Null, array::value_of_json))
    })?;
    // a[lo:hi], either bound optional (NULL).
    conn.create_scalar_function("cairn_array_slice", 3, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        let bound = |i: usize, default: i64| match ctx.get_raw(i) {
            ValueRef::Integer(n) => n,
            _ => default,
        };
        let lo = bound(1, 1).max(1);
        let hi = bound(2, items.len() as i64).min(items.len() as i64);
        let picked: Items = if lo > hi {
            Vec::new()
        } else {
            items[(lo - 1) as usize..hi as usize].to_vec()
        };
        stored(picked).map(Some)
    })?;
    // array_length(a, 1): NULL for an empty array or another dimension.
    conn.create_scalar_function("array_length", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        Ok((ctx.get::<Option<i64>>(1)? == Some(1) && !items.is_empty())
            .then_some(items.len() as i64))
    })?;
    conn.create_scalar_function("array_upper", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        Ok((ctx.get::<Option<i64>>(1)? == Some(1) && !items.is_empty())
            .then_some(items.len() as i64))
    })?;
    conn.create_scalar_function("array_lower", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        Ok((ctx.get::<Option<i64>>(1)? == Some(1) && !items.is_empty()).then_some(1i64))
    })?;
    conn.create_scalar_function("array_ndims", 1, constant, |ctx| {
        Ok(items(ctx, 0)?.and_then(|items| (!items.is_empty()).then_some(1i64)))
    })?;
    conn.create_scalar_function("cardinality", 1, constant, |ctx| {
        Ok(items(ctx, 0)?.map(|items| items.len() as i64))
    })?;
    for n in [2, 3] {
        conn.create_scalar_function("array_position", n, constant, |ctx| {
            let Some(items) = items(ctx, 0)? else {
                return Ok(None);
            };
            let x = element_arg(ctx, 1)?;
            let start = if ctx.len() > 2 {
                ctx.get::<Option<i64>>(2)?.unwrap_or(1).max(1) as usize
            } else {
                1
            };
            Ok(items
                .iter()
                .enumerate()
                .skip(start - 1)
                .find(|(_, item)| not_distinct(item, &x))
                .map(|(i, _)| i as i64 + 1))
        })?;
    }
    conn.create_scalar_function("array_positions", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        let x = element_arg(ctx, 1)?;
        let found: Items = items
            .iter()
            .enumerate()
            .filter(|(_, item)| not_distinct(item, &x))
            .map(|(i, _)| Json::from(i as i64 + 1))
            .collect();
        stored(found).map(Some)
    })?;
    conn.create_scalar_function("array_append", 2, constant, |ctx| {
        let mut items = items(ctx, 0)?.unwrap_or_default();
        items.push(element_arg(ctx, 1)?);
        stored(items)
    })?;
    conn.create_scalar_function("array_prepend", 2, constant, |ctx| {
        let mut items = items(ctx, 1)?.unwrap_or_default();
        items.insert(0, element_arg(ctx, 0)?);
        stored(items)
    })?;
    conn.create_scalar_function("array_cat", 2, constant, |ctx| {
        match (items(ctx, 0)?, items(ctx, 1)?) {
            (None, None) => Ok(None),
            (a, b) => {
                let mut out = a.unwrap_or_default();
                out.extend(b.unwrap_or_default());
                stored(out).map(Some)
            }
        }
    })?;
    conn.create_scalar_function("array_remove", 2, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        let x = element_arg(ctx, 1)?;
        stored(items.into_iter().filter(|i| !not_distinct(i, &x)).collect()).map(Some)
    })?;
    conn.create_scalar_function("array_replace", 3, constant, |ctx| {
        let Some(items) = items(ctx, 0)? else {
            return Ok(None);
        };
        let (from, to) = (element_arg(ctx, 1)?, element_arg(ctx, 2)?);
        let replaced = items
            .into_iter()
            .map(|i| {
                if not_distinct(&i, &from) {
                    to.clone()
                } else {
                    i
                }
            })
            .collect();
        stored(replaced).map(Some)
    })?;
    // cairn_array_to_string(a, sep, null text or NULL, 'array type' or NULL)
    conn.create_scalar_function("cairn_array_to_string", 4, constant, |ctx| {
        let (Some(items), Some(sep)) = (items(ctx, 0)?, ctx.get::<Option<String>>(1)?) else {
            return Ok(None);
        };
        let null = ctx.get::<Option<String>>(2)?;
        let element = type_arg(ctx, 3)?.and_then(PgType::element);
        let parts: Vec<String> = items
            .iter()
            .filter_map(|item| match item {
                Json::Null => null.clone(),
                item => Some(element_text(item, element)),
            })
            .collect();
        Ok(Some(parts.join(&sep)))
    })?;
    for n in [2, 3] {
        conn.create_scalar_function("string_to_array", n, constant, |ctx| {
            let Some(text) = ctx.get::<Option<String>>(0)? else {
                return Ok(None);
            };
            let sep = ctx.get::<Option<String>>(1)?;
            let null = if ctx.len() > 2 {
                ctx.get::<Option<String>>(2)?
            } else {
                None
            };
            let pieces: Vec<String> = match sep.as_deref() {
                _ if text.is_empty() => Vec::new(),
                None => text.chars().map(String::from).collect(),
                Some("") => vec![text.clone()],
                Some(sep) => text.split(sep).map(String::from).collect(),
            };
            let items = pieces
                .into_iter()
                .map(|p| match &null {
                    Some(n) if *n == p => Json::Null,
                    _ => Json::String(p),
                })
                .collect();
            stored(items).map(Some)
        })?;
    }
    // a @> b: every element of b is in a (NULLs never match).
    conn.create_scalar_function("cairn_array_contains", 2, constant, |ctx| {
        let (Some(a), Some(b)) = (items(ctx, 0)?, items(ctx, 1)?) else {
            return Ok(None);
        };
        Ok(Some(b.iter().all(|x| a.iter().any(|y| same(x, y)))))
    })?;
    // a && b: some element in both.
    conn.create_scalar_function("cairn_array_overlap", 2, constant, |ctx| {
        let (Some(a), Some(b)) = (items(ctx, 0)?, items(ctx, 1)?) else {
            return Ok(None);
        };
        Ok(Some(b.iter().any(|x| a.iter().any(|y| same(x, y)))))
    })?;
    // cairn_array_in(value, 'array type'): a value of any form as a stored array.
    conn.create_scalar_function("cairn_array_in", 2, constant, |ctx| {
        let value: Value = ctx.get(0)?;
        match type_arg(ctx, 1)? {
            Some(ty) => types::coerce(value, ty).map_err(sql_error),
            None => Ok(value),
        }
    })?;
    Ok(())
}

/// array_agg(x): the values in the order the aggregate sees them (its ORDER BY), NULL
/// when there are none.
struct ArrayAgg;

impl rusqlite::functions::Aggregate<Items, Option<String>> for ArrayAgg {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Items> {
        Ok(Vec::new())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Items) -> rusqlite::Result<()> {
        if acc.len() >= limits::ARRAY_ELEMENTS_MAX {
            return Err(coded(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "array size exceeds the maximum allowed ({})",
                    limits::ARRAY_ELEMENTS_MAX
                ),
            ));
        }
        acc.push(array::json_of(&ctx.get::<Value>(0)?));
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<Items>,
    ) -> rusqlite::Result<Option<String>> {
        match acc.filter(|a| !a.is_empty()) {
            None => Ok(None),
            Some(items) => stored(items).map(Some),
        }
    }
}
