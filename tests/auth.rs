//! Users, roles and logins on a cluster started with an initial password: SCRAM-SHA-256 on
//! pgwire (with tokio-postgres, a real SCRAM client), HTTP Basic on the HTTP API, roles
//! enforced statement by statement, and garbage or truncated SCRAM exchanges that leave the
//! node serving.

mod common;

use common::{free_addr, Cluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "first-s3cret";

async fn login(
    pg: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    let url = format!(
        "host={} port={} user={user} password={password} dbname=cairn connect_timeout=10",
        pg.ip(),
        pg.port()
    );
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Err(e) => Err(e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string())),
    }
}

/// A login that may need the catalog change to reach `pg`'s node first.
async fn login_soon(pg: SocketAddr, user: &str, password: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match login(pg, user, password).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{user} cannot log in at {pg}: {e}"),
        }
    }
}

fn code(e: tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A raw HTTP request with optional Basic credentials: status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> (u16, String) {
    use base64::Engine as _;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = auth
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_with_scram_and_do_what_their_roles_allow() {
    let init = format!("ENV:CAIRN_INIT_PASSWORD={ADMIN_PASSWORD}");
    let cluster = tokio::task::block_in_place(|| Cluster::start(3, &[init.as_str()]));
    let (pg1, pg2) = (cluster.nodes[0].pg, cluster.nodes[1].pg);

    // Wrong passwords and unknown users: 28P01, on any node.
    assert_eq!(
        login(pg1, "admin", "wrong").await.err().as_deref(),
        Some("28P01")
    );
    assert_eq!(
        login(pg2, "nobody", "x").await.err().as_deref(),
        Some("28P01")
    );

    let admin = login_soon(pg1, "admin", ADMIN_PASSWORD).await;
    admin
        .batch_execute(
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text);
             INSERT INTO notes VALUES (1, 'first');",
        )
        .await
        .unwrap();
    admin
        .batch_execute("CREATE USER reader WITH PASSWORD 'r-pw'")
        .await
        .unwrap();
    admin
        .batch_execute("GRANT readonly TO reader")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE ROLE writer LOGIN PASSWORD 'w-pw' IN ROLE readwrite")
        .await
        .unwrap();
    let dup = admin
        .batch_execute("CREATE USER reader PASSWORD 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(dup), "42710");
    let bad_role = admin
        .batch_execute("GRANT superhero TO reader")
        .await
        .unwrap_err();
    assert!(!code(bad_role).is_empty());

    // readonly reads, and nothing else; through another node (the catalog carries users).
    let reader = login_soon(pg2, "reader", "r-pw").await;
    let rows = reader.query("SELECT body FROM notes", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "first");
    let denied = reader
        .execute("INSERT INTO notes VALUES (2, 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(code(denied), "42501");
    let denied = reader
        .batch_execute("CREATE TABLE mine (k int PRIMARY KEY)")
        .await
        .unwrap_err();
    assert_eq!(code(denied), "42501");
    let denied = reader
        .batch_execute("CREATE USER sneaky PASSWORD 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(denied), "42501");

    // readwrite changes rows, not the schema.
    let writer = login_soon(pg2, "writer", "w-pw").await;
    writer
        .execute("INSERT INTO notes VALUES (2, 'second')", &[])
        .await
        .unwrap();
    let denied = writer.batch_execute("DROP TABLE notes").await.unwrap_err();
    assert_eq!(code(denied), "42501");

    // A new password replaces the old; a revoked role is gone from open sessions at their
    // next statement; a dropped user cannot log in.
    admin
        .batch_execute("ALTER USER reader WITH PASSWORD 'r-pw-2'")
        .await
        .unwrap();
    assert_eq!(
        login(pg1, "reader", "r-pw").await.err().as_deref(),
        Some("28P01")
    );
    login_soon(pg1, "reader", "r-pw-2").await;
    admin
        .batch_execute("REVOKE readonly FROM reader")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match reader.query("SELECT 1 FROM notes", &[]).await {
            Err(e) => {
                assert_eq!(code(e), "42501");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "the revoke did not reach n2"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.batch_execute("DROP USER writer").await.unwrap();
    assert_eq!(
        login(pg1, "writer", "w-pw").await.err().as_deref(),
        Some("28P01")
    );
    let own = admin.batch_execute("DROP USER admin").await.unwrap_err();
    assert_eq!(code(own), "55006");
    // The last admin keeps its role: nobody could manage users or the schema otherwise.
    let last = admin
        .batch_execute("REVOKE admin FROM admin")
        .await
        .unwrap_err();
    assert_eq!(code(last), "55000");

    // HTTP: Basic credentials, the same users and roles; /health stays open.
    let http1 = cluster.nodes[0].http;
    tokio::task::block_in_place(|| {
        let (status, body) = http(http1, "GET", "/v1/tables", None, "");
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"code\":\"28P01\""), "{body}");
        let (status, _) = http(http1, "GET", "/health", None, "");
        assert_eq!(status, 200);
        let wrong = http(
            http1,
            "POST",
            "/v1/sql",
            Some(("admin", "nope")),
            r#"{"sql":"SELECT 1"}"#,
        );
        assert_eq!(wrong.0, 401, "{}", wrong.1);
        let count = r#"{"sql":"SELECT count(*) FROM notes"}"#;
        let (status, body) = http(
            http1,
            "POST",
            "/v1/sql",
            Some(("admin", ADMIN_PASSWORD)),
            count,
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("[[2]]"), "{body}");
        let insert = r#"{"sql":"INSERT INTO notes VALUES (3, 'x')"}"#;
        admin_http_grant(http1);
        let (status, body) = http(http1, "POST", "/v1/sql", Some(("reader", "r-pw-2")), insert);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("42501"), "{body}");
        let (status, body) = http(http1, "POST", "/v1/sql", Some(("reader", "r-pw-2")), count);
        assert_eq!(status, 200, "{body}");
        let (status, body) = http(
            http1,
            "POST",
            "/v1/nodes/n3/decommission",
            Some(("reader", "r-pw-2")),
            "",
        );
        assert_eq!(status, 403, "{body}");
    });
}

/// Give `reader` back its readonly role, over HTTP as admin.
fn admin_http_grant(http1: SocketAddr) {
    let grant = r#"{"sql":"GRANT readonly TO reader"}"#;
    let (status, body) = http(
        http1,
        "POST",
        "/v1/sql",
        Some(("admin", ADMIN_PASSWORD)),
        grant,
    );
    assert_eq!(status, 200, "{body}");
}

/// A startup message for `user`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0{user}\0database\0cairn\0\0").as_bytes());
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

#[test]
fn garbage_and_truncated_scram_exchanges_never_take_a_node_down() {
    let init = format!("ENV:CAIRN_INIT_PASSWORD={ADMIN_PASSWORD}");
    let dir = tempfile::tempdir().unwrap();
    let node = common::ProcessNode::spawn_in_cluster(
        dir.path(),
        free_addr(),
        free_addr(),
        free_addr(),
        None,
        &[init.as_str()],
    );
    // A bounded run of seeded random exchanges: SASLInitialResponse and SASLResponse bodies
    // of random bytes and lengths, mechanisms named or not, connections cut mid-message.
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let Ok(mut s) = TcpStream::connect(node.pg) else {
            panic!("round {round}: the node stopped accepting connections");
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&startup("admin"));
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf); // AuthenticationSASL
        let len = (next() % 200) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match round % 4 {
            0 => {
                let mut named = b"SCRAM-SHA-256\0".to_vec();
                named.extend((len as i32).to_be_bytes());
                named.extend(&body);
                body = named;
            }
            1 => body.truncate(len / 2),
            _ => {}
        }
        let declared = if round % 5 == 0 {
            (next() % 100_000) as i32
        } else {
            body.len() as i32 + 4
        };
        let mut msg = vec![b'p'];
        msg.extend(declared.to_be_bytes());
        msg.extend(&body);
        if round % 3 == 0 {
            msg.truncate(msg.len() / 2);
        }
        let _ = s.write_all(&msg);
        // The end of the input: a node waiting for the rest of a message sees it now.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read(&mut buf);
    }
    // Still serving, and still checking passwords.
    let (status, body) = http(node.http, "GET", "/health", None, "");
    assert_eq!(status, 200, "{body}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert_eq!(
            login(node.pg, "admin", "wrong").await.err().as_deref(),
            Some("28P01")
        );
        let c = login_soon(node.pg, "admin", ADMIN_PASSWORD).await;
        c.simple_query("SELECT 1").await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_user_of_an_open_cluster_must_be_an_admin_and_logins_start_with_it() {
    let node = common::TestNode::start().await;
    let open = node.client().await;
    let e = open
        .batch_execute("CREATE USER ann PASSWORD 'pw'")
        .await
        .unwrap_err();
    assert_eq!(code(e), "55000");
    open.batch_execute("CREATE USER boss PASSWORD 'pw' IN ROLE admin")
        .await
        .unwrap();
    // New connections log in from now on.
    assert_eq!(
        login(node.pg, "boss", "wrong").await.err().as_deref(),
        Some("28P01")
    );
    let boss = login_soon(node.pg, "boss", "pw").await;
    boss.simple_query("SELECT 1").await.unwrap();
}
