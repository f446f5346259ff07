//! The key-value workload against etcd, through its JSON gateway (`/v3/kv/range`, `put`,
//! `txn`; keys and values in base64) — etcd's gRPC API would need protoc to build a client.
//! Reads are etcd's default, linearizable; a batch of updates is one `txn`. HTTP/1.1 with
//! keep-alive, one connection per client; what the client itself costs shows in the
//! report's `client_cpu_s`.

use super::{drive, kv_params, valid, value, wrong, KeyChooser, KvArgs, Report, Worker};
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

fn key(k: u64) -> String {
    B64.encode(format!("cairn_bench_kv/{k:012}"))
}

#[derive(Clone)]
struct Etcd {
    agent: ureq::Agent,
    host: String,
}

impl Etcd {
    fn new(host: String) -> Etcd {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Etcd { agent, host }
    }

    /// POST `body` to `path`; the JSON answer of a 200, else an error.
    fn call(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.host))
            .header("content-type", "application/json")
            .send(body.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if status != 200 {
            bail!("etcd {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    fn put(&self, k: u64, v: &str) -> anyhow::Result<()> {
        self.call(
            "/v3/kv/put",
            &json!({"key": key(k), "value": B64.encode(v)}),
        )
        .map(|_| ())
    }
}

pub async fn kv(args: &KvArgs, hosts: Vec<String>) -> anyhow::Result<Report> {
    let loader = Etcd::new(hosts[0].clone());
    eprintln!(
        "loading {} keys of {} bytes...",
        args.keys, args.value_bytes
    );
    let (keys, bytes) = (args.keys, args.value_bytes);
    let first = if args.skip_load { keys } else { 0 };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for k in first..keys {
            loader.put(k, &value(k, 0, bytes))?;
            if k % 500 == 0 {
                eprint!("\r  {k}/{keys}");
            }
        }
        eprintln!("\r  {keys}/{keys}");
        Ok(())
    })
    .await?
    .context("loading etcd")?;
    let chooser = KeyChooser::new(args.distribution, args.keys);
    let workers = (0..args.common.clients)
        .map(|c| EtcdKv {
            etcd: Etcd::new(hosts[c % hosts.len()].clone()),
            args: args.clone(),
            keys: chooser.share(),
            id: c as u64,
            version: 0,
        })
        .collect();
    drive(&args.common, "kv", kv_params(args), workers).await
}

struct EtcdKv {
    etcd: Etcd,
    args: KvArgs,
    keys: KeyChooser,
    id: u64,
    version: u64,
}

#[async_trait::async_trait]
impl Worker for EtcdKv {
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool> {
        let etcd = self.etcd.clone();
        let bytes = self.args.value_bytes;
        if rng.random_bool(self.args.read_ratio) {
            let k = self.keys.pick(rng);
            let answer = tokio::task::spawn_blocking(move || {
                etcd.call("/v3/kv/range", &json!({ "key": key(k) }))
            })
            .await?;
            let Ok(answer) = answer else { return Ok(false) };
            let v = answer["kvs"][0]["value"]
                .as_str()
                .and_then(|v| B64.decode(v).ok())
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            return match v {
                Some(v) if valid(k, &v, bytes) => Ok(true),
                other => Err(wrong(format!("etcd key {k} read {other:?}"))),
            };
        }
        let mut keys: Vec<u64> = (0..self.args.batch).map(|_| self.keys.pick(rng)).collect();
        keys.sort_unstable();
        keys.dedup();
        self.version += 1;
        let version = self.version * 1000 + self.id;
        let done = tokio::task::spawn_blocking(move || {
            if keys.len() == 1 {
                return etcd.put(keys[0], &value(keys[0], version, bytes));
            }
            let puts: Vec<Value> = keys
                .iter()
                .map(|k| {
                    json!({"requestPut": {"key": key(*k), "value": B64.encode(value(*k, version, bytes))}})
                })
                .collect();
            etcd.call("/v3/kv/txn", &json!({ "success": puts })).map(|_| ())
        })
        .await?;
        Ok(done.is_ok())
    }
}
