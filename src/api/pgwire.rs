//! PostgreSQL wire protocol on top of the `pgwire` crate: simple and extended query protocol,
//! text and binary formats, cancel requests, transaction status in ReadyForQuery. One
//! `sql::Session` per connection; closing the connection rolls back its transaction.
//!
//! Cancel requests are Cairn's, not pgwire's: pgwire would drop the running query's future,
//! and a write dropped after its proposal left may still commit while the client hears
//! "canceled". Here a CancelRequest only cancels the running statement's token (see
//! `storage::cancel`): the statement stops with 57014 if nothing of it took effect, or
//! finishes and answers its outcome. So the query future is never dropped mid-statement,
//! and the session is never left half-way.

use crate::error::{sqlstate, Error};
use crate::limits;
use crate::sql::{Engine, Field, Output, Prepared, Session, TxnEvent};
use crate::storage::cancel::Cancel;
use crate::types::{self, Format, PgType};
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format as PortalFormat, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use rusqlite::types::Value;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};

fn pg_error(e: &Error) -> ErrorInfo {
    if !e.is_client_error() {
        tracing::warn!(error = %e, "statement failed");
    }
    ErrorInfo::new("ERROR".to_string(), e.code().to_string(), e.to_string())
}

fn user_error(e: Error) -> PgWireError {
    PgWireError::UserError(Box::new(pg_error(&e)))
}

/// `pg_error`, with the position in `query` a syntax error names (sqlparser says `at
/// Line: L, Column: C`), as PostgreSQL sends it: the 1-based character offset, which psql
/// and `cairn sql` show as `LINE n:` with a caret.
fn pg_error_in(e: &Error, query: &str) -> ErrorInfo {
    let mut info = pg_error(e);
    if info.code == crate::error::sqlstate::SYNTAX_ERROR {
        info.position = syntax_error_position(&info.message, query).map(|p| p.to_string());
    }
    info
}

fn syntax_error_position(message: &str, query: &str) -> Option<usize> {
    let at = message.rfind("Line: ")?;
    let (line, rest) = message[at + 6..].split_once(", Column: ")?;
    let line: usize = line.parse().ok()?;
    let column: usize = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let mut offset = 0;
    for (i, text) in query.split('\n').enumerate() {
        if i + 1 == line {
            return (column >= 1 && column <= text.chars().count() + 1).then_some(offset + column);
        }
        offset += text.chars().count() + 1;
    }
    None
}

fn wire_type(ty: PgType) -> Type {
    Type::from_oid(ty.oid()).unwrap_or(Type::TEXT)
}

fn field_infos(fields: &[Field], format: &PortalFormat) -> Vec<FieldInfo> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name.clone(),
                None,
                None,
                wire_type(f.ty),
                format.format_for(i),
            )
            .with_type_modifier(f.typmod.map_or(-1, |m| m.pg_typmod()))
        })
        .collect()
}

/// Encode result rows as DataRow messages in each column's requested format.
fn data_rows(output: &Output, format: &PortalFormat) -> Result<Vec<PgWireResult<DataRow>>, Error> {
    let mut rows = Vec::with_capacity(output.rows.len());
    for row in &output.rows {
        let mut data = BytesMut::new();
        for (i, (value, field)) in row.iter().zip(&output.fields).enumerate() {
            let fmt = if format.format_for(i) == FieldFormat::Binary {
                Format::Binary
            } else {
                Format::Text
            };
            let scaled = match (field.scale, field.ty) {
                (Some(scale), PgType::Numeric) => {
                    types::numeric_with_scale(value, scale).map(Value::Text)
                }
                _ => None,
            };
            match types::encode(scaled.as_ref().unwrap_or(value), field.ty, fmt)? {
                None => data.put_i32(-1),
                Some(bytes) => {
                    data.put_i32(bytes.len() as i32);
                    data.put_slice(&bytes);
                }
            }
        }
        rows.push(Ok(DataRow::new(data, row.len() as i16)));
    }
    Ok(rows)
}

fn response(output: Output, format: &PortalFormat) -> Result<Response, Error> {
    if let Some((columns, binary)) = output.copy_in {
        // Text and CSV both travel as overall format 0, binary as 1; the rows come as
        // CopyData.
        return Ok(Response::CopyIn(CopyResponse::new(
            i8::from(binary),
            columns,
            stream::empty(),
        )));
    }
    if let Some((columns, data)) = output.copy_out {
        // One CopyData per row: pgwire counts them for the `COPY n` tag.
        let chunks = data.into_iter().map(|d| Ok(CopyData::new(d.into())));
        return Ok(Response::CopyOut(CopyResponse::new(
            0,
            columns,
            stream::iter(chunks),
        )));
    }
    match output.txn {
        TxnEvent::Started => return Ok(Response::TransactionStart(Tag::new(&output.tag))),
        TxnEvent::Ended => return Ok(Response::TransactionEnd(Tag::new(&output.tag))),
        TxnEvent::None => {}
    }
    if !output.returns_rows {
        return Ok(Response::Execution(Tag::new(&output.tag)));
    }
    let schema = Arc::new(field_infos(&output.fields, format));
    let rows = data_rows(&output, format)?;
    let mut resp = QueryResponse::new(schema, stream::iter(rows));
    // pgwire appends the row count itself: "SELECT" + " 3", "INSERT 0" + " 1".
    let verb = output
        .tag
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end();
    resp.set_command_tag(verb);
    Ok(Response::Query(resp))
}

/// Translates statements at Parse time, so syntax errors surface there as in PostgreSQL.
pub struct Parser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let given: Vec<Option<PgType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(|t| PgType::from_oid(t.oid())))
            .collect();
        self.engine
            .session()
            .prepare(sql, &given)
            .await
            .map_err(|e| PgWireError::UserError(Box::new(pg_error_in(&e, sql))))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types().iter().map(|t| wire_type(*t)).collect())
    }

    fn get_result_schema(
        &self,
        _stmt: &Prepared,
        _format: Option<&PortalFormat>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        // Describe is answered by `Connection` itself (it needs the database); see below.
        Ok(Vec::new())
    }
}

/// The statement a connection is running, as its CancelRequest finds it.
type Running = Arc<std::sync::Mutex<Option<Cancel>>>;

/// Connections by the (process id, secret key) they told their client at startup.
#[derive(Default)]
pub struct Cancels {
    by_key: std::sync::Mutex<HashMap<(i32, bytes::Bytes), Running>>,
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let running = self
            .by_key
            .lock()
            .expect("cancel registry lock poisoned")
            .get(&key)
            .cloned();
        // An unknown key, or no statement running: nothing to do, as in PostgreSQL.
        if let Some(token) = running.and_then(|r| r.lock().expect("running lock").clone()) {
            token.cancel();
        }
    }
}

/// One client connection.
pub struct Connection {
    session: Mutex<Session>,
    parser: Arc<Parser>,
    cancels: Arc<Cancels>,
    running: Running,
    /// The key this connection registered under in `cancels`.
    key: std::sync::Mutex<Option<(i32, bytes::Bytes)>>,
    /// The node serves TLS: a client that did not ask for it is turned away.
    require_tls: bool,
}

impl Connection {
    /// A statement starts: the session's fresh token is what a CancelRequest cancels.
    fn start_statement(&self, session: &mut Session) {
        *self.running.lock().expect("running lock") = Some(session.new_statement());
    }

    fn end_statement(&self) {
        *self.running.lock().expect("running lock") = None;
    }

    fn unregister(&self) {
        if let Some(key) = self.key.lock().expect("key lock").take() {
            self.cancels
                .by_key
                .lock()
                .expect("cancel registry lock poisoned")
                .remove(&key);
        }
    }
}

#[async_trait]
impl NoopStartupHandler for Connection {
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls && !client.is_secure() {
            return Err(tls_required());
        }
        self.register_cancel_key(client);
        Ok(())
    }
}

impl Connection {
    /// CancelRequests naming this connection's key cancel its running statement.
    fn register_cancel_key<C: ClientInfo>(&self, client: &C) {
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        self.cancels
            .by_key
            .lock()
            .expect("cancel registry lock poisoned")
            .insert(key.clone(), self.running.clone());
        *self.key.lock().expect("key lock") = Some(key);
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut session = self.session.lock().await;
        self.start_statement(&mut session);
        let outputs = session.run_script(query).await;
        self.end_statement();
        let mut responses = Vec::with_capacity(outputs.len());
        for output in outputs {
            match output.and_then(|o| response(o, &PortalFormat::UnifiedText)) {
                Ok(r) => responses.push(r),
                Err(e) => {
                    responses.push(Response::Error(Box::new(pg_error_in(&e, query))));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

fn decode_params(portal: &Portal<Prepared>) -> Result<Vec<rusqlite::types::Value>, Error> {
    let prepared = &portal.statement.statement;
    let expected = prepared.param_types().len();
    if portal.parameters.len() != expected {
        return Err(Error::sql(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "bind message supplies {} parameters, but prepared statement requires {expected}",
                portal.parameters.len()
            ),
        ));
    }
    portal
        .parameters
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ty = portal
                .statement
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .and_then(|t| PgType::from_oid(t.oid()))
                .filter(|t| *t != PgType::Unknown)
                .unwrap_or(prepared.param_types()[i]);
            let fmt = if portal.parameter_format.is_binary(i) {
                Format::Binary
            } else {
                Format::Text
            };
            match p {
                None => Ok(rusqlite::types::Value::Null),
                Some(bytes) => types::decode(bytes, ty, fmt),
            }
        })
        .collect()
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = decode_params(portal).map_err(user_error)?;
        let mut session = self.session.lock().await;
        self.start_statement(&mut session);
        let output = session.execute(&portal.statement.statement, params).await;
        self.end_statement();
        let output = output.map_err(user_error)?;
        response(output, &portal.result_column_format).map_err(user_error)
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &target.statement;
        let params: Vec<Type> = prepared
            .param_types()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| wire_type(*t))
            })
            .collect();
        let fields = self
            .session
            .lock()
            .await
            .describe(prepared)
            .await
            .map_err(user_error)?;
        Ok(DescribeStatementResponse::new(
            params,
            field_infos(&fields, &PortalFormat::UnifiedBinary),
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self
            .session
            .lock()
            .await
            .describe(&portal.statement.statement)
            .await
            .map_err(user_error)?;
        Ok(DescribePortalResponse::new(field_infos(
            &fields,
            &portal.result_column_format,
        )))
    }
}

/// The handler set pgwire asks for; every role is played by the connection itself.
#[async_trait]
impl CopyHandler for Connection {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.session.lock().await.copy_data(&data.data).await;
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let output = self
            .session
            .lock()
            .await
            .copy_done()
            .await
            .map_err(user_error)?;
        let tag = Tag::new("COPY").with_rows(output.rows_affected as usize);
        client
            .send(PgWireBackendMessage::CommandComplete(tag.into()))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let e = self.session.lock().await.copy_fail(&fail.message).await;
        user_error(e)
    }
}

struct Handlers(Arc<Connection>, Option<Arc<Sasl>>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(Startup {
            conn: self.0.clone(),
            sasl: self.1.clone(),
            initial_seen: Default::default(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.0.cancels.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }
}

/// Serve PostgreSQL clients on `listener` until the task is dropped.
/// The catalog's users, for SCRAM: each one's salt and salted password.
struct Users(Arc<Engine>);

impl Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Users")
    }
}

#[async_trait]
impl pgwire::api::auth::AuthSource for Users {
    async fn get_password(
        &self,
        login: &pgwire::api::auth::LoginInfo,
    ) -> PgWireResult<pgwire::api::auth::Password> {
        let name = login.user().unwrap_or_default().to_lowercase();
        let catalog = self.0.cluster.catalog();
        let stored = catalog.users.get(&name).and_then(|u| {
            Some((
                crate::auth::unhex(&u.salt)?,
                crate::auth::unhex(&u.salted_password)?,
            ))
        });
        match stored {
            Some((salt, salted)) => Ok(pgwire::api::auth::Password::new(Some(salt), salted)),
            None => Err(PgWireError::InvalidPassword(name)),
        }
    }
}

type Sasl = pgwire::api::auth::sasl::SASLAuthStartupHandler<
    pgwire::api::auth::DefaultServerParameterProvider,
>;

/// SCRAM-SHA-256 against the catalog's users (and SCRAM-SHA-256-PLUS, channel binding to
/// the node's certificate, over TLS).
fn sasl(engine: &Arc<Engine>, tls: Option<&crate::tls::Tls>) -> Sasl {
    let mut scram = pgwire::api::auth::sasl::scram::ScramAuth::new(Arc::new(Users(engine.clone())));
    scram.set_iterations(crate::auth::SCRAM_ITERATIONS as usize);
    if let Some(tls) = tls {
        if let Err(e) = scram.configure_certificate(&tls.cert_pem) {
            tracing::warn!(error = %e, "SCRAM channel binding is off: the node's certificate did not load");
        }
    }
    Sasl::new(Arc::new(Default::default())).with_scram(scram)
}

/// A connection's startup: as it was where the cluster has no users; a SCRAM login where it
/// has, after which the session runs as that user.
pub struct Startup {
    conn: Arc<Connection>,
    sasl: Option<Arc<Sasl>>,
    /// The client's first SASL message (its SASLInitialResponse) has come.
    initial_seen: std::sync::atomic::AtomicBool,
}

/// Whether `body` is a well-formed SASLInitialResponse: a mechanism's name, then its data's
/// length (-1 for none) and at least that much data. pgwire 0.42 decodes it without these
/// checks and panics on a short one (its connection task dies, the node goes on): refused
/// here first.
fn sasl_initial_response_fits(body: &[u8]) -> bool {
    let Some(nul) = body.iter().position(|b| *b == 0) else {
        return false;
    };
    let rest = &body[nul + 1..];
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    len == -1 || (len >= 0 && len as usize <= rest.len() - 4)
}

#[async_trait]
impl pgwire::api::auth::StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(sasl) = &self.sasl else {
            return pgwire::api::auth::StartupHandler::on_startup(&*self.conn, client, message)
                .await;
        };
        use pgwire::messages::startup::PasswordMessageFamily;
        use pgwire::messages::PgWireFrontendMessage as M;
        let starting = matches!(message, M::Startup(_));
        if starting && self.conn.require_tls && !client.is_secure() {
            return Err(tls_required());
        }
        if let M::PasswordMessageFamily(PasswordMessageFamily::Raw(body)) = &message {
            let first = !self
                .initial_seen
                .swap(true, std::sync::atomic::Ordering::Relaxed);
            if first && !sasl_initial_response_fits(body) {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".to_string(),
                    crate::error::sqlstate::PROTOCOL_VIOLATION.to_string(),
                    "malformed SASLInitialResponse".to_string(),
                ))));
            }
        }
        sasl.on_startup(client, message).await?;
        if matches!(
            client.state(),
            pgwire::api::PgWireConnectionState::ReadyForQuery
        ) {
            self.conn.register_cancel_key(client);
            let user = client
                .metadata()
                .get(pgwire::api::METADATA_USER)
                .cloned()
                .unwrap_or_default();
            self.conn.session.lock().await.log_in(&user);
        }
        Ok(())
    }
}

fn tls_required() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        crate::error::sqlstate::INVALID_AUTHORIZATION_SPECIFICATION.to_string(),
        "this node accepts TLS connections only (sslmode=require or verify-full)".to_string(),
    )))
}

/// Serve PostgreSQL clients on `listener`; with `tls`, only over TLS (SSLRequest). Once the
/// catalog has users, every client logs in as one (SCRAM).
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, tls: Option<crate::tls::Tls>) {
    let sasl = Arc::new(sasl(&engine, tls.as_ref()));
    let acceptor = tls.map(|t| pgwire::tokio::TlsAcceptor::from(t.clients));
    let cancels = Arc::new(Cancels::default());
    let parser = Arc::new(Parser {
        engine: engine.clone(),
    });
    let slots = Arc::new(Semaphore::new(limits::CONNECTIONS_MAX));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "pgwire accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing connection: {} connections open", limits::CONNECTIONS_MAX);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let conn = Arc::new(Connection {
            session: Mutex::new(engine.session()),
            parser: parser.clone(),
            cancels: cancels.clone(),
            running: Running::default(),
            key: std::sync::Mutex::new(None),
            require_tls: acceptor.is_some(),
        });
        let acceptor = acceptor.clone();
        // Logins once the cluster has users (checked as each client connects).
        let sasl = (!engine.cluster.catalog().users.is_empty()).then(|| sasl.clone());
        tokio::spawn(async move {
            let handlers = Handlers(conn.clone(), sasl);
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!(%peer, error = %e, "pgwire connection ended with an error");
            }
            conn.unregister();
            conn.session.lock().await.close().await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod sasl_tests {
    use super::sasl_initial_response_fits as fits;

    #[test]
    fn short_sasl_initial_responses_are_caught() {
        assert!(fits(b"SCRAM-SHA-256\0\0\0\0\x03abc"));
        assert!(fits(b"SCRAM-SHA-256\0\xff\xff\xff\xff"));
        assert!(!fits(b"SCRAM-SHA-256\0\0\0\0\x09abc"));
        assert!(!fits(b"SCRAM-SHA-256\0\0\0"));
        assert!(!fits(b"no terminator"));
        assert!(!fits(b"M\0\x80\0\0\0"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_syntax_errors_line_and_column_become_its_position_in_the_query() {
        let query = "SELECT 1,\n  2 FORM t";
        let message =
            "sql parser error: Expected: end of statement, found: t at Line: 2, Column: 10";
        // 10 characters of line 1 (with its newline), then column 10 of line 2.
        assert_eq!(super::syntax_error_position(message, query), Some(20));
        assert_eq!(&query[19..20], "t");
        assert_eq!(super::syntax_error_position("no position", query), None);
        assert_eq!(
            super::syntax_error_position("at Line: 9, Column: 1", query),
            None
        );
    }
}
