//! `COPY table [(columns)] FROM STDIN` in PostgreSQL's text and CSV formats: the options,
//! and a parser that takes the data in chunks cut anywhere (as CopyData messages arrive)
//! and yields rows of text fields. The session turns fields into typed values and inserts
//! them by shard in batches.

use crate::error::{sqlstate, Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    Csv,
}

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
    /// The `\.` end marker was seen; later data is ignored.
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
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Vec<Option<String>>>> {
        if self.ended {
            return Ok(Vec::new());
        }
        self.buffer.extend_from_slice(data);
        self.take_rows(false)
    }

    /// The data is complete: return the last rows (a final line may lack its newline).
    pub fn finish(&mut self) -> Result<Vec<Vec<Option<String>>>> {
        if self.ended {
            return Ok(Vec::new());
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

    fn take_rows(&mut self, _at_end: bool) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        let mut start = 0;
        while let Some((fields, next)) = match self.options.format {
            Format::Text => self.text_row(start)?,
            Format::Csv => self.csv_row(start)?,
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
    fn text_row(&self, start: usize) -> Result<Option<(Option<Vec<Option<String>>>, usize)>> {
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
            fields.push(Some(text));
        }
        Ok(Some((Some(fields), next)))
    }

    /// One CSV row starting at `start` (quoted fields may hold newlines).
    #[allow(clippy::type_complexity)]
    fn csv_row(&self, start: usize) -> Result<Option<(Option<Vec<Option<String>>>, usize)>> {
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
        let finish_field = |field: &mut Vec<u8>, was_quoted: bool| -> Result<Option<String>> {
            let text = String::from_utf8(std::mem::take(field))
                .map_err(|_| bad(lineno, "invalid UTF-8"))?;
            Ok(if !was_quoted && text == o.null {
                None
            } else {
                Some(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all(options: Options, chunks: &[&[u8]]) -> Vec<Vec<Option<String>>> {
        let mut p = Parser::new(options);
        let mut rows = Vec::new();
        for c in chunks {
            rows.extend(p.feed(c).unwrap());
        }
        rows.extend(p.finish().unwrap());
        rows
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
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
    fn unterminated_quote_is_an_error() {
        let mut p = Parser::new(Options::csv());
        p.feed(b"1,\"open").unwrap();
        assert!(p.finish().is_err());
    }
}
