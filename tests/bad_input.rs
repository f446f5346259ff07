//! Bad input never crashes a node: garbage bytes and truncated messages on the pgwire port,
//! malformed SQL, wrong parameter types and encodings, a 10 MB query. Each gets an error (or
//! a closed connection) and the node keeps serving other clients.

mod common;

use common::TestNode;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A deliberately low-level pgwire client: it sends exactly the bytes a test asks for.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s }
    }

    fn startup(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr);
        let mut body = 196608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0test\0database\0cairn\0\0");
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend(body);
        r.s.write_all(&msg).unwrap();
        r.until_ready();
        r
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend(((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.s.write_all(&msg).unwrap();
    }

    /// Read messages until ReadyForQuery; returns (type, body) of each.
    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 5];
            self.s.read_exact(&mut head).expect("server answers");
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.s.read_exact(&mut body).unwrap();
            let done = head[0] == b'Z';
            out.push((head[0], body));
            if done {
                return out;
            }
        }
    }

    fn error_code(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
        let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
        body.split(|b| *b == 0)
            .find(|f| f.first() == Some(&b'C'))
            .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
    }

    /// Parse + Bind (with the given parameter format codes and raw values) + Execute + Sync.
    fn extended(
        &mut self,
        sql: &str,
        param_oids: &[i32],
        formats: &[i16],
        params: &[Option<&[u8]>],
    ) -> Vec<(u8, Vec<u8>)> {
        let mut p = b"\0".to_vec();
        p.extend(sql.as_bytes());
        p.push(0);
        p.extend((param_oids.len() as i16).to_be_bytes());
        for o in param_oids {
            p.extend(o.to_be_bytes());
        }
        self.send(b'P', &p);
        let mut b = b"\0\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((params.len() as i16).to_be_bytes());
        for v in params {
            match v {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend(0i16.to_be_bytes());
        self.send(b'B', &b);
        self.send(b'E', b"\0\0\0\0\0");
        self.send(b'S', b"");
        self.until_ready()
    }
}

/// A fixed-seed xorshift, so a failing input can be reproduced.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

async fn still_serving(node: &TestNode) {
    let c = node.client().await;
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_messages_on_the_pgwire_port() {
    let node = TestNode::start().await;
    let addr = node.pg;
    tokio::task::spawn_blocking(move || {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..40 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = (rng.next() % 600) as usize + 1;
            let mut junk = rng.bytes(n);
            if round % 4 == 1 {
                // A plausible length prefix, then not enough bytes.
                junk.splice(0..0, 1_000_000i32.to_be_bytes());
            }
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        // After a valid startup: garbage message types, truncated and oversize lengths.
        for round in 0..20 {
            let mut r = Raw::startup(addr);
            let mut junk = vec![b"QPBEDSXHCdfc"[round % 12]];
            junk.extend(((rng.next() % 64) as i32 - 8).to_be_bytes());
            let n = (rng.next() % 64) as usize;
            junk.extend(rng.bytes(n));
            let _ = r.s.write_all(&junk);
            let _ = r.s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = r.s.read_to_end(&mut sink);
        }
    })
    .await
    .unwrap();
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sql_and_wrong_parameters() {
    let node = TestNode::start().await;
    let c = node.client().await;
    c.batch_execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text, f double precision, ts timestamptz)",
    )
    .await
    .unwrap();
    let nested = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let malformed = [
        "SELECT (",
        "INSERT INTO",
        "'unterminated",
        "SELECT * FROM t WHERE",
        ")))",
        "SELECT 1 +",
        "CREATE TABLE (",
        "SELECT $0",
        "SELECT $99999999999999999999",
        "UPDATE t SET",
        "DELETE",
        "SELECT 'a' :: :: int",
        nested.as_str(),
        "SELECT * FROM t; SELEC",
        "COPY t FROM STDIN",
        "GRANT ALL ON t TO bob",
        "INSERT INTO t VALUES (1, 'x', 'not a float', now())",
        "SELECT 'abc'::integer",
        "SELECT '2024-13-45'::date",
        "SELECT 1/0",
    ];
    for sql in malformed {
        let e = c.simple_query(sql).await.expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert!(!db.code().code().is_empty(), "{sql}");
    }
    // Wrong parameter types and encodings over the extended protocol.
    let addr = node.pg;
    tokio::task::spawn_blocking(move || {
        let mut r = Raw::startup(addr);
        // (sql, parameter type oids, parameter formats, parameter values, expected SQLSTATE)
        type Case<'a> = (&'a str, Vec<i32>, Vec<i16>, Vec<Option<&'a [u8]>>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "INSERT INTO t (id) VALUES ($1)",
                vec![23],
                vec![0],
                vec![Some(b"abc")],
                "22P02",
            ),
            (
                "INSERT INTO t (id) VALUES ($1)",
                vec![23],
                vec![1],
                vec![Some(&[1, 2, 3])],
                "08P01",
            ),
            (
                "INSERT INTO t (id) VALUES ($1)",
                vec![],
                vec![0],
                vec![Some(b"99999999999")],
                "22003",
            ),
            (
                "INSERT INTO t (id, ts) VALUES (1, $1)",
                vec![],
                vec![0],
                vec![Some(b"yesterday-ish")],
                "22P02",
            ),
            (
                "INSERT INTO t (id, v) VALUES (1, $1)",
                vec![25],
                vec![0],
                vec![Some(&[0xff, 0xfe])],
                "22P02",
            ),
            (
                "INSERT INTO t (id) VALUES ($1)",
                vec![],
                vec![0],
                vec![],
                "08P01",
            ),
            (
                "INSERT INTO t (id) VALUES ($1)",
                vec![],
                vec![0],
                vec![Some(b"1"), Some(b"2")],
                "08P01",
            ),
        ];
        for (sql, oids, formats, params, want) in cases {
            let msgs = r.extended(sql, &oids, &formats, &params);
            assert_eq!(
                Raw::error_code(&msgs).as_deref(),
                Some(want),
                "{sql} {params:?}"
            );
        }
        // Text-format parameters of several types work.
        let msgs = r.extended(
            "INSERT INTO t VALUES ($1, $2, $3, $4)",
            &[],
            &[0],
            &[
                Some(b"7"),
                Some(b"seven"),
                Some(b"7.5"),
                Some(b"2024-01-01 00:00:00+02"),
            ],
        );
        assert_eq!(Raw::error_code(&msgs), None);
    })
    .await
    .unwrap();
    let r = c
        .query_one("SELECT v, f, ts::text FROM t WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, f64>(1),
            r.get::<_, String>(2)
        ),
        ("seven".into(), 7.5, "2023-12-31 22:00:00+00".into())
    );
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_query_is_refused() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let sql = format!("SELECT '{}'", "z".repeat(10 * 1024 * 1024));
    let e = c.simple_query(&sql).await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("54000"),
        "{e}"
    );
    still_serving(&node).await;
}
