//! The only module that knows wire formats: PostgreSQL's protocol (`pgwire`), HTTP/JSON
//! (`http`), WebSocket subscriptions (`ws`), the key-value API (`kv`), files (`files`, `ftp`). Each turns requests into `sql` calls and
//! `sql::Output` / `Error` back into its own format (RowDescription + DataRow + SQLSTATE;
//! JSON with an error code).

pub mod dashboard;
pub mod dev;
pub mod files;
pub mod ftp;
pub mod http;
pub mod kv;
pub mod nodes;
pub mod pgwire;
pub mod ws;
