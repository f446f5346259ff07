//! `COPY table [(columns)] FROM STDIN` in PostgreSQL's text, CSV and binary formats: the
//! options, and a parser that takes the data in chunks cut anywhere (as CopyData messages
//! arrive) and yields rows of fields (text, or a value's binary form). The session turns
//! fields into typed values and inserts them by shard in batches. `COPY ... TO STDOUT` rows
//! are written by [`write_row`].

use crate::error::{sqlstate, Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    Csv,
    Binary,
}

/// One field of a row: text (text and CSV formats) or a value's binary form.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Binary(Vec<u8>),
}

/// A row: its fields, None for NULL.
pub type Row = Vec<Option<Field>>;

/// The binary format's signature, flags and header extension come first.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub format: Format,
    pub delimiter: u8,
    /// The spelling of NULL: `\N` in text format, an unquoted empty field in CSV.
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
}

impl Options {
    pub fn text() -> Options {
        Options {
            format: Format::Text,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    pub fn csv() -> Options {
        Options {
            format: Format::Csv,
            delimiter: b',',
            null: String::new(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }
}

/// A COPY in progress: bytes in, rows of fields out.
pub struct Parser {
    options: Options,
    buffer: Vec<u8>,
    /// Lines consumed so far (for error messages).
    pub line: u64,
    header_pending: bool,
    /// Binary format: the signature and header are still to come.
    binary_header_pending: bool,
    /// The `\.` end marker (binary: the trailer) was seen; later data is ignored.
    ended: bool,
}

fn bad(line: u64, what: impl std::fmt::Display) -> Error {
    Error::sql(
        sqlstate::DATA_EXCEPTION,
        format!("COPY: line {line}: {what}"),
    )
}

impl Parser {
    pub fn new(options: Options) -> Parser {
        Parser {
            header_pending: options.header,
            binary_header_pending: options.format == Format::Binary,
            options,
            buffer: Vec::new(),
            line: 0,
            ended: false,
        }
    }

    /// Bytes buffered and not yet parsed (a partial row).
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Add data; return the complete rows it finished.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Row>> {
        if self.ended {
            return Ok(Vec::new());
        }
        self.buffer.extend_from_slice(data);
        self.take_rows(false)
    }

    /// The data is complete: return the last rows (a final line may lack its newline).
    pub fn finish(&mut self) -> Result<Vec<Row>> {
        if self.ended {
            return Ok(Vec::new());
        }
        if self.options.format == Format::Binary {
            let rows = self.take_rows(true)?;
            if !self.buffer.is_empty() || self.binary_header_pending {
                return Err(bad(
                    self.line + 1,
                    "binary data ends in the middle of a row",
                ));
            }
            return Ok(rows);
        }
        if !self.buffer.is_empty() && self.buffer.last() != Some(&b'\n') {
            self.buffer.push(b'\n');
        }
        let rows = self.take_rows(true)?;
        if !self.buffer.is_empty() {
            return Err(bad(
                self.line + 1,
                "unterminated quoted field at end of data",
            ));
        }
        Ok(rows)
    }

    fn take_rows(&mut self, _at_end: bool) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let mut start = 0;
        if self.binary_header_pending {
            match self.binary_header()? {
                Some(next) => {
                    start = next;
                    self.binary_header_pending = false;
                }
                None => return Ok(rows),
            }
        }
        while let Some((fields, next)) = match self.options.format {
            Format::Text => self.text_row(start)?,
            Format::Csv => self.csv_row(start)?,
            Format::Binary => self.binary_row(start)?,
        } {
            start = next;
            self.line += 1;
            let Some(fields) = fields else {
                // `\.`: end of data.
                self.ended = true;
                break;
            };
            if self.header_pending {
                self.header_pending = false;
                continue;
            }
            rows.push(fields);
        }
        self.buffer.drain(..start);
        if self.ended {
            self.buffer.clear();
        }
        Ok(rows)
    }

    /// One text-format row starting at `start`: None if the line is incomplete; Some(None)
    /// for the end marker.
    #[allow(clippy::type_complexity)]
    fn text_row(&self, start: usize) -> Result<Option<(Option<Row>, usize)>> {
        let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let mut line = &self.buffer[start..start + end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let next = start + end + 1;
        if line == b"\\." {
            return Ok(Some((None, next)));
        }
        let lineno = self.line + 1;
        let mut fields = Vec::new();
        for raw in line.split(|b| *b == self.options.delimiter) {
            if raw == self.options.null.as_bytes() {
                fields.push(None);
                continue;
            }
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                let b = raw[i];
                if b != b'\\' || i + 1 == raw.len() {
                    out.push(b);
                    i += 1;
                    continue;
                }
                let c = raw[i + 1];
                i += 2;
                match c {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = (c - b'0') as u32;
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + (d - b'0') as u32;
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut digits = 0;
                        while digits < 2 {
                            match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    i += 1;
                                    digits += 1;
                                }
                                None => break,
                            }
                        }
                        if digits == 0 {
                            out.push(b'x');
                        } else {
                            out.push(v as u8);
                        }
                    }
                    other => out.push(other),
                }
            }
            let text = String::from_utf8(out).map_err(|_| bad(lineno, "invalid UTF-8"))?;
            fields.push(Some(Field::Text(text)));
        }
        Ok(Some((Some(fields), next)))
    }

    /// One CSV row starting at `start` (quoted fields may hold newlines).
    #[allow(clippy::type_complexity)]
    fn csv_row(&self, start: usize) -> Result<Option<(Option<Row>, usize)>> {
        let o = &self.options;
        let buf = &self.buffer;
        let lineno = self.line + 1;
        let mut fields = Vec::new();
        let mut field = Vec::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut i = start;
        // The end marker is a line of exactly `\.`.
        if let Some(end) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line == b"\\." {
                return Ok(Some((None, start + end + 1)));
            }
        }
        let finish_field = |field: &mut Vec<u8>, was_quoted: bool| -> Result<Option<Field>> {
            let text = String::from_utf8(std::mem::take(field))
                .map_err(|_| bad(lineno, "invalid UTF-8"))?;
            Ok(if !was_quoted && text == o.null {
                None
            } else {
                Some(Field::Text(text))
            })
        };
        while i < buf.len() {
            let b = buf[i];
            if quoted {
                if b == o.escape && o.escape != o.quote && buf.get(i + 1) == Some(&o.quote) {
                    field.push(o.quote);
                    i += 2;
                } else if b == o.quote {
                    if buf.get(i + 1) == Some(&o.quote) && o.escape == o.quote {
                        field.push(o.quote);
                        i += 2;
                    } else if i + 1 == buf.len() {
                        // Cannot tell a closing quote from a doubled one yet.
                        return Ok(None);
                    } else {
                        quoted = false;
                        i += 1;
                    }
                } else {
                    field.push(b);
                    i += 1;
                }
                continue;
            }
            match b {
                _ if b == o.quote => {
                    quoted = true;
                    was_quoted = true;
                    i += 1;
                }
                _ if b == o.delimiter => {
                    fields.push(finish_field(&mut field, was_quoted)?);
                    was_quoted = false;
                    i += 1;
                }
                b'\n' => {
                    // Outside quotes, a CR before the newline is the line ending's.
                    if field.last() == Some(&b'\r') {
                        field.pop();
                    }
                    fields.push(finish_field(&mut field, was_quoted)?);
                    return Ok(Some((Some(fields), i + 1)));
                }
                _ => {
                    field.push(b);
                    i += 1;
                }
            }
        }
        Ok(None)
    }
}

impl Parser {
    /// The binary format's header: where the first row starts, None if incomplete.
    fn binary_header(&self) -> Result<Option<usize>> {
        let b = &self.buffer;
        if b.len() < BINARY_SIGNATURE.len() + 8 {
            if !BINARY_SIGNATURE.starts_with(&b[..b.len().min(BINARY_SIGNATURE.len())]) {
                return Err(bad(1, "COPY file signature not recognized"));
            }
            return Ok(None);
        }
        if &b[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
            return Err(bad(1, "COPY file signature not recognized"));
        }
        let at = BINARY_SIGNATURE.len();
        let flags = u32::from_be_bytes(b[at..at + 4].try_into().expect("four bytes"));
        if flags & (1 << 16) != 0 {
            return Err(bad(1, "COPY binary data with OIDs is not supported"));
        }
        let extension = u32::from_be_bytes(b[at + 4..at + 8].try_into().expect("four bytes"));
        let end = at + 8 + extension as usize;
        Ok((b.len() >= end).then_some(end))
    }

    /// One binary row at `start`: a field count, then each field's length (-1 for NULL)
    /// and bytes; a count of -1 is the trailer.
    fn binary_row(&self, start: usize) -> Result<Option<(Option<Row>, usize)>> {
        let b = &self.buffer;
        let Some(count) = b.get(start..start + 2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes(count.try_into().expect("two bytes"));
        if count == -1 {
            return Ok(Some((None, start + 2)));
        }
        if count < 0 {
            return Err(bad(self.line + 1, format!("invalid field count {count}")));
        }
        let mut at = start + 2;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Some(len) = b.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes(len.try_into().expect("four bytes"));
            at += 4;
            if len < 0 {
                fields.push(None);
                continue;
            }
            let Some(bytes) = b.get(at..at + len as usize) else {
                return Ok(None);
            };
            fields.push(Some(Field::Binary(bytes.to_vec())));
            at += len as usize;
        }
        Ok(Some((Some(fields), at)))
    }
}

/// One row of `COPY ... TO STDOUT` in text or CSV format (fields already in PostgreSQL's
/// text form, None for NULL), with its line ending.
pub fn write_row(fields: &[Option<String>], o: &Options) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(o.delimiter);
        }
        match (f, &o.format) {
            (None, _) => out.extend_from_slice(o.null.as_bytes()),
            (Some(text), Format::Csv) => {
                let special = text.is_empty() && o.null.is_empty()
                    || text == &o.null
                    || text
                        .bytes()
                        .any(|b| b == o.delimiter || b == o.quote || b == b'\n' || b == b'\r');
                if special {
                    out.push(o.quote);
                    for b in text.bytes() {
                        if b == o.quote || b == o.escape {
                            out.push(o.escape);
                        }
                        out.push(b);
                    }
                    out.push(o.quote);
                } else {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            (Some(text), _) => {
                for b in text.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' if o.delimiter == b'\t' => out.extend_from_slice(b"\\t"),
                        b if b == o.delimiter => {
                            out.push(b'\\');
                            out.push(b);
                        }
                        b => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(options: Options, chunks: &[&[u8]]) -> Vec<Row> {
        let mut p = Parser::new(options);
        let mut rows = Vec::new();
        for c in chunks {
            rows.extend(p.feed(c).unwrap());
        }
        rows.extend(p.finish().unwrap());
        rows
    }

    fn s(v: &str) -> Option<Field> {
        Some(Field::Text(v.to_string()))
    }

    #[test]
    fn text_format_with_escapes_nulls_and_split_chunks() {
        let data: &[u8] = b"1\ta\\tb\t\\N\n2\tline\\nbreak\tx\\\\y\n\\.\nignored\n";
        let expected = vec![
            vec![s("1"), s("a\tb"), None],
            vec![s("2"), s("line\nbreak"), s("x\\y")],
        ];
        assert_eq!(all(Options::text(), &[data]), expected);
        // Cut at every byte: the same rows.
        let pieces: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(all(Options::text(), &pieces), expected);
    }

    #[test]
    fn csv_with_quotes_header_and_newlines_in_fields() {
        let mut o = Options::csv();
        o.header = true;
        let data: &[u8] =
            b"id,name,note\r\n1,\"Smith, J\",\"said \"\"hi\"\"\"\n2,,\"\"\n3,\"two\nlines\",x";
        let expected = vec![
            vec![s("1"), s("Smith, J"), s("said \"hi\"")],
            vec![s("2"), None, s("")],
            vec![s("3"), s("two\nlines"), s("x")],
        ];
        assert_eq!(all(o.clone(), &[data]), expected);
        let pieces: Vec<&[u8]> = data.chunks(3).collect();
        assert_eq!(all(o, &pieces), expected);
    }

    #[test]
    fn binary_format_rows_cut_anywhere() {
        let mut data = BINARY_SIGNATURE.to_vec();
        data.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        data.extend(2i16.to_be_bytes());
        data.extend(4i32.to_be_bytes());
        data.extend(7i32.to_be_bytes());
        data.extend((-1i32).to_be_bytes());
        data.extend((-1i16).to_be_bytes());
        let expected = vec![vec![Some(Field::Binary(7i32.to_be_bytes().to_vec())), None]];
        let mut o = Options::text();
        o.format = Format::Binary;
        assert_eq!(all(o.clone(), &[&data]), expected);
        let pieces: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(all(o, &pieces), expected);
    }

    #[test]
    fn rows_written_read_back() {
        let fields = vec![
            Some("a\tb".to_string()),
            None,
            Some("x,\"y\"".into()),
            Some(String::new()),
        ];
        for o in [Options::text(), Options::csv()] {
            let line = write_row(&fields, &o);
            let back = all(o, &[&line]);
            let want: Row = fields.iter().map(|f| f.clone().map(Field::Text)).collect();
            assert_eq!(back, vec![want]);
        }
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let mut p = Parser::new(Options::csv());
        p.feed(b"1,\"open").unwrap();
        assert!(p.finish().is_err());
    }
}
