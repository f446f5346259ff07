//! `cairn sql`: an interactive SQL shell over pgwire, and a script runner.
//!
//! Interactive on a terminal (`rustyline`: history file, statements spanning lines until
//! their `;`, Ctrl-C cancelling the running statement); with `-c`, `-f` or a pipe on stdin
//! it runs the statements in order and stops at the first error with exit status 1 (2 when
//! the server cannot be reached), like psql with `ON_ERROR_STOP`. Results are drawn with
//! `comfy-table`; errors carry their SQLSTATE and point at the position the server names.

use super::pgtls;
use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;
use tokio_postgres::SimpleQueryMessage;

#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    /// A node's PostgreSQL address: `postgres://user@host:port/db` (several hosts,
    /// `host1:port1,host2:port2`, are tried in turn), or just `host:port`.
    #[arg(default_value = "postgres://cairn@127.0.0.1:5433/cairn")]
    pub url: String,
    /// Run these statements (and backslash commands) and exit; may be given several times.
    #[arg(short = 'c', long = "command")]
    pub command: Vec<String>,
    /// Run the statements in this file (`-` for stdin) and exit.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Print results as CSV (header, then rows; no command tags or row counts).
    #[arg(long)]
    pub csv: bool,
    /// Print each row as a list of `column | value` lines (as `\x` does).
    #[arg(short = 'x', long)]
    pub expanded: bool,
    /// History of the interactive shell [default: ~/.cairn_history].
    #[arg(long, env = "CAIRN_HISTORY")]
    pub history: Option<PathBuf>,
}

/// Exit status of a script stopped by a failed statement, and of a shell or script that
/// could not reach the server (psql's).
const EXIT_STATEMENT_FAILED: i32 = 1;
const EXIT_CONNECTION: i32 = 2;

pub async fn run(args: SqlArgs) -> Result<()> {
    let url = normalise_url(&args.url);
    let config =
        pgtls::target(&url).with_context(|| format!("{}: not a PostgreSQL address", args.url))?;
    let mut shell = Shell {
        client: match pgtls::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cairn sql: cannot connect to {}: {e}", args.url);
                std::process::exit(EXIT_CONNECTION);
            }
        },
        config,
        expanded: args.expanded,
        timing: false,
        csv: args.csv,
        interactive: false,
    };
    // Each -c is a script of its own (a last statement without `;` ends with it).
    let scripts = if !args.command.is_empty() {
        Some(args.command.clone())
    } else if let Some(path) = &args.file {
        Some(vec![if path.as_os_str() == "-" {
            read_stdin()?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
        }])
    } else if !std::io::stdin().is_terminal() {
        Some(vec![read_stdin()?])
    } else {
        None
    };
    match scripts {
        Some(texts) => {
            let code = shell.script(&texts).await;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        None => {
            shell.interactive = true;
            shell.interactive(args.history).await
        }
    }
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin")?;
    Ok(text)
}

/// `host:port` alone means Cairn's default user and database there.
fn normalise_url(url: &str) -> String {
    if url.contains("://") || url.contains('=') {
        url.to_string()
    } else {
        format!("postgres://cairn@{url}/cairn")
    }
}

struct Shell {
    client: tokio_postgres::Client,
    config: pgtls::Target,
    expanded: bool,
    timing: bool,
    csv: bool,
    interactive: bool,
}

/// What one input did: fine, a statement failed (the session goes on), or the
/// connection is gone, or the user asked to quit.
#[derive(Debug, PartialEq)]
enum Done {
    Ok,
    Failed,
    Lost,
    Quit,
}

impl Shell {
    async fn interactive(&mut self, history: Option<PathBuf>) -> Result<()> {
        let history = history
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cairn_history")));
        let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
        if let Some(path) = &history {
            // A first run has no history yet.
            let _ = editor.load_history(path);
        }
        let db = self
            .config
            .config
            .get_dbname()
            .unwrap_or("cairn")
            .to_string();
        println!(
            "cairn sql {}: \\? for help, \\q to quit.",
            env!("CARGO_PKG_VERSION")
        );
        let mut splitter = Splitter::default();
        loop {
            let prompt = if splitter.is_empty() {
                format!("{db}=> ")
            } else {
                format!("{db}-> ")
            };
            let line = tokio::task::block_in_place(|| editor.readline(&prompt));
            let line = match line {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    splitter = Splitter::default();
                    continue;
                }
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(anyhow!("reading a line: {e}")),
            };
            for input in splitter.push_line(&line) {
                // Quitting is not worth recalling.
                if !matches!(input.text().trim(), "\\q" | "\\quit") {
                    let _ = editor.add_history_entry(input.text().trim());
                }
                if self.input(&input).await == Done::Quit {
                    return save(&mut editor, history.as_deref());
                }
            }
        }
        save(&mut editor, history.as_deref())
    }

    /// Runs `texts` to their end or the first failure; the exit status.
    async fn script(&mut self, texts: &[String]) -> i32 {
        let mut inputs = Vec::new();
        for text in texts {
            let mut splitter = Splitter::default();
            for line in text.lines() {
                inputs.extend(splitter.push_line(line));
            }
            inputs.extend(splitter.finish());
        }
        for input in &inputs {
            match self.input(input).await {
                Done::Ok => {}
                Done::Quit => return 0,
                Done::Failed => return EXIT_STATEMENT_FAILED,
                Done::Lost => return EXIT_CONNECTION,
            }
        }
        0
    }

    async fn input(&mut self, input: &Input) -> Done {
        if self.client.is_closed() && self.interactive {
            match pgtls::connect(&self.config).await {
                Ok(c) => {
                    eprintln!("The connection to the server was lost; connected again.");
                    self.client = c;
                }
                Err(e) => {
                    eprintln!(
                        "The connection to the server was lost and cannot be made again: {e}"
                    );
                    return Done::Lost;
                }
            }
        }
        let started = Instant::now();
        let done = match input {
            Input::Statement(sql) => self.statement(sql).await,
            Input::Meta(line) => self.meta(line).await,
        };
        if self.timing && matches!(done, Done::Ok | Done::Failed) {
            println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
        }
        done
    }

    /// Runs one statement and prints what it answers. Ctrl-C cancels it on the server.
    async fn statement(&mut self, sql: &str) -> Done {
        let cancel = self.client.cancel_token();
        let run = self.client.simple_query(sql);
        tokio::pin!(run);
        let answer = tokio::select! {
            answer = &mut run => answer,
            _ = tokio::signal::ctrl_c() => {
                if let Err(e) = cancel.cancel_query(self.config.tls.clone()).await {
                    eprintln!("could not send the cancel request: {e}");
                }
                run.await
            }
        };
        match answer {
            Ok(messages) => {
                self.print(sql, messages);
                Done::Ok
            }
            Err(e) => self.failed(&e, Some(sql)),
        }
    }

    fn failed(&self, e: &tokio_postgres::Error, sql: Option<&str>) -> Done {
        eprint!("{}", describe_error(e, sql));
        if e.as_db_error().is_some() {
            Done::Failed
        } else if self.client.is_closed() {
            Done::Lost
        } else {
            Done::Failed
        }
    }

    fn print(&self, sql: &str, messages: Vec<SimpleQueryMessage>) {
        let mut out = String::new();
        let mut columns: Option<Vec<String>> = None;
        let mut rows: Vec<Vec<Option<String>>> = Vec::new();
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = Some(cols.iter().map(|c| c.name().to_string()).collect());
                    rows.clear();
                }
                SimpleQueryMessage::Row(row) => {
                    rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => {
                    match columns.take() {
                        Some(cols) if self.csv => out.push_str(&render_csv(&cols, &rows)),
                        Some(cols) => {
                            out.push_str(&render(&cols, &rows, self.expanded));
                            out.push_str(&row_count(rows.len()));
                        }
                        None if self.csv => {}
                        None => {
                            out.push_str(&command_tag(sql, n));
                            out.push('\n');
                        }
                    }
                    rows.clear();
                }
                _ => {}
            }
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    async fn meta(&mut self, line: &str) -> Done {
        let line = line.trim();
        let (command, rest) = match line.find(char::is_whitespace) {
            Some(i) => (&line[..i], line[i..].trim()),
            None => (line, ""),
        };
        match command {
            "\\q" | "\\quit" => Done::Quit,
            "\\?" => {
                print!("{HELP}");
                Done::Ok
            }
            "\\timing" => {
                self.timing = toggle(self.timing, rest);
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
                Done::Ok
            }
            "\\x" => {
                self.expanded = toggle(self.expanded, rest);
                println!(
                    "Expanded display is {}.",
                    if self.expanded { "on" } else { "off" }
                );
                Done::Ok
            }
            "\\dt" => self.statement(&list_relations(rest, true)).await,
            "\\d" if rest.is_empty() => self.statement(&list_relations(rest, false)).await,
            "\\d" => self.describe(rest).await,
            "\\copy" => match self.copy(rest).await {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("\\copy: {e:#}");
                    Done::Failed
                }
            },
            _ => {
                eprintln!("invalid command {command}: try \\? for help");
                Done::Failed
            }
        }
    }

    /// `\d name`: the table's columns (type, nullable, default), then its key.
    async fn describe(&mut self, name: &str) -> Done {
        let name = unquote_identifier(name);
        let literal = quote_literal(&name);
        let exists = format!(
            "SELECT table_type FROM information_schema.tables WHERE table_name = {literal}"
        );
        match self.client.simple_query(&exists).await {
            Ok(messages) => {
                if !messages
                    .iter()
                    .any(|m| matches!(m, SimpleQueryMessage::Row(_)))
                {
                    eprintln!("Did not find any relation named \"{name}\".");
                    return Done::Failed;
                }
            }
            Err(e) => return self.failed(&e, None),
        }
        println!("Table \"{name}\"");
        let columns = format!(
            "SELECT column_name AS \"Column\", data_type AS \"Type\", \
             CASE is_nullable WHEN 'NO' THEN 'not null' ELSE '' END AS \"Nullable\", \
             coalesce(column_default, '') AS \"Default\" \
             FROM information_schema.columns WHERE table_name = {literal} \
             ORDER BY ordinal_position"
        );
        let keys = format!(
            "SELECT tc.constraint_type AS \"Constraint\", tc.constraint_name AS \"Name\", \
             k.column_name AS \"Column\" \
             FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_name = tc.constraint_name AND k.table_name = tc.table_name \
             WHERE tc.table_name = {literal} ORDER BY 1, 2, k.ordinal_position"
        );
        for sql in [columns, keys] {
            match self.client.simple_query(&sql).await {
                Ok(messages) => self.print(&sql, messages),
                Err(e) => return self.failed(&e, None),
            }
        }
        Done::Ok
    }

    /// `\copy`: COPY whose data comes from or goes to a file (or stdin/stdout) on this side.
    async fn copy(&mut self, rest: &str) -> Result<Done> {
        let copy = CopyCommand::parse(rest)?;
        if copy.from {
            let mut reader: Box<dyn Read + Send> = match &copy.file {
                None => Box::new(std::io::stdin()),
                Some(path) => {
                    Box::new(std::fs::File::open(path).with_context(|| path.display().to_string())?)
                }
            };
            let sink = match self.client.copy_in(&copy.sql).await {
                Ok(sink) => sink,
                Err(e) => return Ok(self.failed(&e, Some(&copy.sql))),
            };
            tokio::pin!(sink);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::task::block_in_place(|| reader.read(&mut buf))
                    .context("reading the data")?;
                if n == 0 {
                    break;
                }
                if let Err(e) = sink.send(bytes::Bytes::copy_from_slice(&buf[..n])).await {
                    return Ok(self.failed(&e, Some(&copy.sql)));
                }
            }
            match sink.as_mut().finish().await {
                Ok(rows) => {
                    println!("COPY {rows}");
                    Ok(Done::Ok)
                }
                Err(e) => Ok(self.failed(&e, Some(&copy.sql))),
            }
        } else {
            let mut writer: Box<dyn Write + Send> = match &copy.file {
                None => Box::new(std::io::stdout()),
                Some(path) => Box::new(
                    std::fs::File::create(path).with_context(|| path.display().to_string())?,
                ),
            };
            let stream = match self.client.copy_out(&copy.sql).await {
                Ok(stream) => stream,
                Err(e) => return Ok(self.failed(&e, Some(&copy.sql))),
            };
            tokio::pin!(stream);
            let mut lines = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => return Ok(self.failed(&e, Some(&copy.sql))),
                };
                lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                writer.write_all(&chunk).context("writing the data")?;
            }
            writer.flush().context("writing the data")?;
            if copy.file.is_some() {
                println!("COPY {lines} lines");
            }
            Ok(Done::Ok)
        }
    }
}

fn save(editor: &mut rustyline::DefaultEditor, history: Option<&std::path::Path>) -> Result<()> {
    if let Some(path) = history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("could not save the history to {}: {e}", path.display());
        }
    }
    Ok(())
}

/// `\x`, `\x on`, `\x off`.
fn toggle(now: bool, arg: &str) -> bool {
    match arg {
        "on" => true,
        "off" => false,
        _ => !now,
    }
}

const HELP: &str = "\
  \\d [NAME]     list tables and views, or describe a table
  \\dt           list tables
  \\x [on|off]   expanded display (one column per line)
  \\timing [on|off]  print how long each statement took
  \\copy TABLE [(COLUMNS)] FROM 'FILE'|stdin [WITH (FORMAT csv, HEADER true)]
  \\copy TABLE|(QUERY) TO 'FILE'|stdout [WITH (...)]
                load or save rows with a file on this machine
  \\q            quit
Statements end with ';' and may span lines. Ctrl-C cancels a running statement,
or clears the statement being typed.
";

fn list_relations(_pattern: &str, tables_only: bool) -> String {
    let filter = if tables_only {
        " AND table_type = 'BASE TABLE'"
    } else {
        ""
    };
    format!(
        "SELECT table_name AS \"Name\", \
         CASE table_type WHEN 'BASE TABLE' THEN 'table' WHEN 'VIEW' THEN 'view' ELSE lower(table_type) END AS \"Type\" \
         FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema'){filter} ORDER BY 1"
    )
}

fn unquote_identifier(name: &str) -> String {
    let name = name.trim().trim_end_matches(';');
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_lowercase(),
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `\copy` as the COPY statement to send and the local end of its data.
#[derive(Debug, PartialEq)]
struct CopyCommand {
    sql: String,
    from: bool,
    /// None: stdin or stdout.
    file: Option<PathBuf>,
}

impl CopyCommand {
    fn parse(text: &str) -> Result<CopyCommand> {
        // The direction is the first FROM or TO outside parentheses and quotes.
        let mut depth = 0i32;
        let mut quote: Option<char> = None;
        let mut direction = None;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for (k, &(i, c)) in chars.iter().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => depth -= 1,
                (None, c) if depth == 0 && c.is_whitespace() => {
                    let word: String = chars[k + 1..]
                        .iter()
                        .map(|(_, c)| *c)
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let lower = word.to_lowercase();
                    if lower == "from" || lower == "to" {
                        direction = Some((i, lower == "from", word.len()));
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some((at, from, len)) = direction else {
            bail!("expected \\copy TABLE FROM 'FILE' or \\copy TABLE|(QUERY) TO 'FILE'");
        };
        let target = text[..at].trim();
        if target.is_empty() {
            bail!(
                "expected a table or a (query) before {}",
                if from { "FROM" } else { "TO" }
            );
        }
        let after = text[at + 1 + len..].trim_start();
        let (file, options) = if let Some(quoted) = after.strip_prefix('\'') {
            let end = quoted
                .find('\'')
                .ok_or_else(|| anyhow!("the file name's quote is not closed"))?;
            (quoted[..end].to_string(), &quoted[end + 1..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if file.is_empty() {
            bail!("expected a file name, stdin or stdout");
        }
        let file = match file.to_lowercase().as_str() {
            "stdin" | "pstdin" if from => None,
            "stdout" | "pstdout" if !from => None,
            _ => Some(PathBuf::from(file)),
        };
        let options = options.trim().trim_end_matches(';').trim();
        let sql = format!(
            "COPY {target} {} {options}",
            if from { "FROM STDIN" } else { "TO STDOUT" }
        );
        Ok(CopyCommand {
            sql: sql.trim_end().to_string(),
            from,
            file,
        })
    }
}

/// A complete piece of input: a statement (its text up to and with its `;`) or a
/// backslash command (its line).
#[derive(Debug, Clone, PartialEq)]
enum Input {
    Statement(String),
    Meta(String),
}

impl Input {
    fn text(&self) -> &str {
        match self {
            Input::Statement(s) | Input::Meta(s) => s,
        }
    }
}

/// Collects lines into statements: a statement ends at a `;` outside quotes, dollar
/// quotes and comments; a line starting with `\` between statements is a command.
#[derive(Debug, Default)]
struct Splitter {
    pending: String,
}

impl Splitter {
    fn is_empty(&self) -> bool {
        self.pending.trim().is_empty()
    }

    fn push_line(&mut self, line: &str) -> Vec<Input> {
        if self.is_empty() && line.trim_start().starts_with('\\') {
            self.pending.clear();
            return vec![Input::Meta(line.trim().to_string())];
        }
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        let mut inputs = Vec::new();
        while let Some(end) = first_statement_end(&self.pending) {
            let statement = self.pending[..=end].trim().to_string();
            self.pending = self.pending[end + 1..].to_string();
            if statement != ";" {
                inputs.push(Input::Statement(statement));
            }
        }
        // A backslash command after the last statement on its line (`SELECT 1; \x`).
        if self.pending.trim_start().starts_with('\\') {
            inputs.push(Input::Meta(self.pending.trim().to_string()));
            self.pending.clear();
        }
        // A comment after the last statement does not start another.
        if strip_comments(&self.pending).trim().is_empty() && !self.pending.contains("/*") {
            self.pending.clear();
        }
        inputs
    }

    /// What is left at the end of a script: run as a statement of its own (psql does),
    /// unless it is only comments.
    fn finish(&mut self) -> Option<Input> {
        let rest = std::mem::take(&mut self.pending);
        let meaningful = strip_comments(&rest);
        (!meaningful.trim().is_empty()).then(|| Input::Statement(rest.trim().to_string()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Lex {
    Code,
    Single { backslashes: bool },
    Double,
    LineComment,
    Block(u32),
    Dollar(String),
}

/// Byte offset of the first `;` that ends a statement in `text`, if there is one.
fn first_statement_end(text: &str) -> Option<usize> {
    let mut end = None;
    lex(text, |i, state, c| {
        if *state == Lex::Code && c == ';' {
            end = Some(i);
            return false;
        }
        true
    });
    end
}

/// `text` with its comments blanked out.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    lex(text, |_, state, c| {
        if matches!(
            state,
            Lex::Code | Lex::Single { .. } | Lex::Double | Lex::Dollar(_)
        ) {
            out.push(c);
        }
        true
    });
    out
}

/// Walks `text` calling `visit(offset, state, char)` for each character in code, strings
/// and comments (the state the character is in); stops when `visit` answers false.
fn lex(text: &str, mut visit: impl FnMut(usize, &Lex, char) -> bool) {
    let bytes = text.as_bytes();
    let mut state = Lex::Code;
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("in bounds");
        let width = c.len_utf8();
        let next = bytes.get(i + 1).copied();
        match &state {
            Lex::Code => {
                let identifier_before =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                if c == '\'' {
                    let escaped = i > 0
                        && matches!(bytes[i - 1], b'e' | b'E')
                        && (i < 2
                            || !(bytes[i - 2].is_ascii_alphanumeric() || bytes[i - 2] == b'_'));
                    if !visit(i, &state, c) {
                        return;
                    }
                    state = Lex::Single {
                        backslashes: escaped,
                    };
                    i += 1;
                    continue;
                } else if c == '"' {
                    if !visit(i, &state, c) {
                        return;
                    }
                    state = Lex::Double;
                    i += 1;
                    continue;
                } else if c == '-' && next == Some(b'-') {
                    state = Lex::LineComment;
                } else if c == '/' && next == Some(b'*') {
                    state = Lex::Block(1);
                    i += 2;
                    continue;
                } else if c == '$' && !identifier_before {
                    let tag: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let starts_ok = tag.chars().next().is_none_or(|c| !c.is_ascii_digit());
                    if starts_ok && text[i + 1 + tag.len()..].starts_with('$') {
                        let opening = tag.len() + 2;
                        for (k, ch) in text[i..i + opening].char_indices() {
                            if !visit(i + k, &state, ch) {
                                return;
                            }
                        }
                        state = Lex::Dollar(tag);
                        i += opening;
                        continue;
                    }
                }
            }
            Lex::Single { backslashes } => {
                if *backslashes && c == '\\' {
                    if !visit(i, &state, c) {
                        return;
                    }
                    i += 1;
                    if i < text.len() {
                        let escaped = text[i..].chars().next().expect("in bounds");
                        if !visit(i, &state, escaped) {
                            return;
                        }
                        i += escaped.len_utf8();
                    }
                    continue;
                }
                if c == '\'' {
                    if !visit(i, &state, c) {
                        return;
                    }
                    state = Lex::Code;
                    i += 1;
                    continue;
                }
            }
            Lex::Double => {
                if c == '"' {
                    if !visit(i, &state, c) {
                        return;
                    }
                    state = Lex::Code;
                    i += 1;
                    continue;
                }
            }
            Lex::LineComment => {
                if c == '\n' {
                    state = Lex::Code;
                }
            }
            Lex::Block(depth) => {
                let depth = *depth;
                if c == '*' && next == Some(b'/') {
                    state = if depth == 1 {
                        Lex::Code
                    } else {
                        Lex::Block(depth - 1)
                    };
                    i += 2;
                    continue;
                } else if c == '/' && next == Some(b'*') {
                    state = Lex::Block(depth + 1);
                    i += 2;
                    continue;
                }
            }
            Lex::Dollar(tag) => {
                let closing = format!("${tag}$");
                if text[i..].starts_with(&closing) {
                    for (k, ch) in closing.char_indices() {
                        if !visit(i + k, &state, ch) {
                            return;
                        }
                    }
                    state = Lex::Code;
                    i += closing.len();
                    continue;
                }
            }
        }
        if !visit(i, &state, c) {
            return;
        }
        i += width;
    }
}

/// A result drawn as a table (or as `-[ RECORD n ]-` blocks when expanded). NULL is shown
/// empty, as psql does.
fn render(columns: &[String], rows: &[Vec<Option<String>>], expanded: bool) -> String {
    if expanded {
        if rows.is_empty() {
            return "(0 rows)\n".to_string();
        }
        let width = columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (n, row) in rows.iter().enumerate() {
            out.push_str(&format!("-[ RECORD {} ]-\n", n + 1));
            for (column, value) in columns.iter().zip(row) {
                out.push_str(&format!(
                    "{column:<width$} | {}\n",
                    value.as_deref().unwrap_or("")
                ));
            }
        }
        return out;
    }
    let mut table = comfy_table::Table::new();
    // psql's look: ` a | b` over `---+---`, no outer border.
    table.load_preset("     -+ |          ");
    table.set_header(columns);
    for row in rows {
        table.add_row(row.iter().map(|v| v.as_deref().unwrap_or("")));
    }
    format!("{table}\n")
}

fn row_count(n: usize) -> String {
    format!("({n} row{})\n\n", if n == 1 { "" } else { "s" })
}

fn render_csv(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) || s.is_empty() {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = columns
        .iter()
        .map(|c| field(c))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for row in rows {
        // NULL is an empty unquoted field, an empty string a quoted one (PostgreSQL's CSV).
        let line: Vec<String> = row
            .iter()
            .map(|v| v.as_deref().map(field).unwrap_or_default())
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// psql's command tag for a statement that returned no rows: `INSERT 0 3`, `UPDATE 2`,
/// `CREATE TABLE`, `BEGIN`.
fn command_tag(sql: &str, rows: u64) -> String {
    let code = strip_comments(sql);
    let words: Vec<String> = code
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .take(6)
        .map(str::to_uppercase)
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    match first {
        "INSERT" => format!("INSERT 0 {rows}"),
        "UPDATE" | "DELETE" | "MERGE" | "COPY" | "SELECT" | "FETCH" | "MOVE" => {
            format!("{first} {rows}")
        }
        "CREATE" | "DROP" | "ALTER" => {
            let modifiers = [
                "OR",
                "REPLACE",
                "UNIQUE",
                "TEMP",
                "TEMPORARY",
                "UNLOGGED",
                "MATERIALIZED",
            ];
            let object = words[1..]
                .iter()
                .find(|w| !modifiers.contains(&w.as_str()))
                .cloned()
                .unwrap_or_default();
            let object = if object == "MATERIALIZED" {
                "MATERIALIZED VIEW".to_string()
            } else {
                object
            };
            format!("{first} {object}").trim().to_string()
        }
        "END" => "COMMIT".to_string(),
        "ABORT" => "ROLLBACK".to_string(),
        "START" => "START TRANSACTION".to_string(),
        _ => first.to_string(),
    }
}

/// An error as psql prints it with its SQLSTATE, and a caret under the position the
/// server names:
///
/// ```text
/// ERROR:  42P01: relation "nope" does not exist
/// LINE 1: SELECT * FROM nope;
///                       ^
/// ```
fn describe_error(e: &tokio_postgres::Error, sql: Option<&str>) -> String {
    let Some(db) = e.as_db_error() else {
        return if e.is_closed() {
            "The connection to the server was lost.\n".to_string()
        } else {
            format!("error: {e}\n")
        };
    };
    let mut out = format!(
        "{}:  {}: {}\n",
        db.severity(),
        db.code().code(),
        db.message()
    );
    if let (Some(tokio_postgres::error::ErrorPosition::Original(position)), Some(sql)) =
        (db.position(), sql)
    {
        out.push_str(&pointer(sql, *position as usize));
    }
    if let Some(detail) = db.detail() {
        out.push_str(&format!("DETAIL:  {detail}\n"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("HINT:  {hint}\n"));
    }
    out
}

/// `LINE n: <the line>` and a caret under character `position` (1-based) of `sql`.
fn pointer(sql: &str, position: usize) -> String {
    let before: String = sql.chars().take(position.saturating_sub(1)).collect();
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count();
    let line = sql[line_start..].lines().next().unwrap_or("");
    let prefix = format!("LINE {line_no}: ");
    format!(
        "{prefix}{line}\n{}^\n",
        " ".repeat(prefix.chars().count() + column)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<Input> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for line in text.lines() {
            out.extend(s.push_line(line));
        }
        out.extend(s.finish());
        out
    }

    fn statements(v: &[&str]) -> Vec<Input> {
        v.iter().map(|s| Input::Statement(s.to_string())).collect()
    }

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(
            split("SELECT 1; SELECT\n 2;\nSELECT ';' AS \"a;b\"; -- c;\nSELECT $x$ ; $x$;"),
            statements(&[
                "SELECT 1;",
                "SELECT\n 2;",
                "SELECT ';' AS \"a;b\";",
                "SELECT $x$ ; $x$;"
            ])
        );
        assert_eq!(
            split("SELECT /* ; /* ; */ ; */ 1;"),
            statements(&["SELECT /* ; /* ; */ ; */ 1;"])
        );
        assert_eq!(split("SELECT E'\\';';"), statements(&["SELECT E'\\';';"]));
        // '' inside a string, $1 is a parameter and not a dollar quote.
        assert_eq!(
            split("SELECT 'it''s;', $1;"),
            statements(&["SELECT 'it''s;', $1;"])
        );
    }

    #[test]
    fn backslash_commands_are_lines_between_statements_and_a_last_statement_runs() {
        assert_eq!(
            split("\\timing\nSELECT 1;\n\\d t\nSELECT 2"),
            vec![
                Input::Meta("\\timing".into()),
                Input::Statement("SELECT 1;".into()),
                Input::Meta("\\d t".into()),
                Input::Statement("SELECT 2".into()),
            ]
        );
        // Inside a statement a backslash line is part of it (a string, say).
        let mut s = Splitter::default();
        assert!(s.push_line("SELECT '").is_empty());
        assert_eq!(
            s.push_line("\\x';"),
            vec![Input::Statement("SELECT '\n\\x';".into())]
        );
        assert_eq!(split("SELECT 1; -- done"), statements(&["SELECT 1;"]));
        assert_eq!(
            split("SELECT 1; \\dt"),
            vec![
                Input::Statement("SELECT 1;".into()),
                Input::Meta("\\dt".into())
            ]
        );
    }

    #[test]
    fn copy_commands_become_copy_statements_with_a_local_end() {
        assert_eq!(
            CopyCommand::parse("t (a, b) FROM 'data file.csv' WITH (FORMAT csv, HEADER true)")
                .unwrap(),
            CopyCommand {
                sql: "COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)".into(),
                from: true,
                file: Some("data file.csv".into()),
            }
        );
        assert_eq!(
            CopyCommand::parse("(SELECT * FROM t WHERE a = 'to') TO stdout").unwrap(),
            CopyCommand {
                sql: "COPY (SELECT * FROM t WHERE a = 'to') TO STDOUT".into(),
                from: false,
                file: None,
            }
        );
        assert!(CopyCommand::parse("t").is_err());
        assert!(CopyCommand::parse("FROM 'x'").is_err());
    }

    #[test]
    fn tags_errors_and_results_print_as_psql_does() {
        assert_eq!(
            command_tag("insert into t values (1), (2);", 2),
            "INSERT 0 2"
        );
        assert_eq!(
            command_tag("CREATE UNIQUE INDEX i ON t (a)", 0),
            "CREATE INDEX"
        );
        assert_eq!(command_tag("-- x\nupdate t set a = 1", 3), "UPDATE 3");
        assert_eq!(command_tag("begin", 0), "BEGIN");
        assert_eq!(
            pointer("SELECT 1;\nSELECT * FROM nope;", 25),
            "LINE 2: SELECT * FROM nope;\n                      ^\n"
        );
        assert_eq!(
            render_csv(
                &["a".into(), "b".into()],
                &[
                    vec![Some("x,y".into()), None],
                    vec![Some(String::new()), Some("1".into())]
                ]
            ),
            "a,b\n\"x,y\",\n\"\",1\n"
        );
        let expanded = render(
            &["id".into(), "name".into()],
            &[vec![Some("1".into()), None]],
            true,
        );
        assert_eq!(expanded, "-[ RECORD 1 ]-\nid   | 1\nname | \n");
    }
}
