//! The key-value workload against Cairn's HTTP key-value API (`/v1/kv/{key}`, batches as
//! `/v1/kv/txn`), for comparing with etcd's JSON gateway on equal terms: HTTP/1.1 with
//! keep-alive, one connection per client, linearizable reads, checked values.

use super::{drive, kv_params, valid, value, wrong, KeyChooser, KvArgs, Report, Worker};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

fn path(k: u64) -> String {
    format!("/v1/kv/cairn_bench_kv/{k:012}")
}

#[derive(Clone)]
struct Node {
    agent: ureq::Agent,
    host: String,
}

impl Node {
    fn new(host: String) -> Node {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Node { agent, host }
    }

    fn put(&self, k: u64, v: &str) -> anyhow::Result<()> {
        let mut resp = self
            .agent
            .put(&format!("{}{}", self.host, path(k)))
            .header("content-type", "text/plain")
            .send(v)?;
        if resp.status() != 200 {
            bail!(
                "PUT {k}: {} {}",
                resp.status(),
                resp.body_mut().read_to_string()?
            );
        }
        Ok(())
    }

    fn get(&self, k: u64) -> anyhow::Result<Option<String>> {
        let mut resp = self
            .agent
            .get(&format!("{}{}", self.host, path(k)))
            .call()?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.body_mut().read_to_string()?)),
            404 => Ok(None),
            s => bail!("GET {k}: {s} {}", resp.body_mut().read_to_string()?),
        }
    }

    fn txn(&self, puts: Vec<(u64, String)>) -> anyhow::Result<()> {
        let ops: Vec<_> = puts
            .iter()
            .map(|(k, v)| json!({"put": path(*k).trim_start_matches("/v1/kv/"), "value": v}))
            .collect();
        let mut resp = self
            .agent
            .post(&format!("{}/v1/kv/txn", self.host))
            .header("content-type", "application/json")
            .send(json!({ "ops": ops }).to_string())?;
        if resp.status() != 200 {
            bail!(
                "txn: {} {}",
                resp.status(),
                resp.body_mut().read_to_string()?
            );
        }
        Ok(())
    }
}

pub async fn kv(args: &KvArgs, hosts: Vec<String>) -> anyhow::Result<Report> {
    let loader = Node::new(hosts[0].clone());
    eprintln!(
        "loading {} keys of {} bytes...",
        args.keys, args.value_bytes
    );
    let (keys, bytes) = (args.keys, args.value_bytes);
    let first = if args.skip_load { keys } else { 0 };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut k = first;
        while k < keys {
            // Loaded in transactions of 100 keys.
            let end = (k + 100).min(keys);
            loader.txn((k..end).map(|k| (k, value(k, 0, bytes))).collect())?;
            k = end;
            eprint!("\r  {k}/{keys}");
        }
        eprintln!();
        Ok(())
    })
    .await?
    .context("loading through /v1/kv/txn")?;
    let chooser = KeyChooser::new(args.distribution, args.keys);
    let workers = (0..args.common.clients)
        .map(|c| HttpKv {
            node: Node::new(hosts[c % hosts.len()].clone()),
            args: args.clone(),
            keys: chooser.share(),
            id: c as u64,
            version: 0,
        })
        .collect();
    drive(&args.common, "kv", kv_params(args), workers).await
}

struct HttpKv {
    node: Node,
    args: KvArgs,
    keys: KeyChooser,
    id: u64,
    version: u64,
}

#[async_trait::async_trait]
impl Worker for HttpKv {
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool> {
        let node = self.node.clone();
        let bytes = self.args.value_bytes;
        if rng.random_bool(self.args.read_ratio) {
            let k = self.keys.pick(rng);
            let answer = tokio::task::spawn_blocking(move || node.get(k)).await?;
            let Ok(v) = answer else { return Ok(false) };
            return match v {
                Some(v) if valid(k, &v, bytes) => Ok(true),
                other => Err(wrong(format!("key {k} read {other:?}"))),
            };
        }
        let mut keys: Vec<u64> = (0..self.args.batch).map(|_| self.keys.pick(rng)).collect();
        keys.sort_unstable();
        keys.dedup();
        self.version += 1;
        let version = self.version * 1000 + self.id;
        let done = tokio::task::spawn_blocking(move || {
            if keys.len() == 1 {
                return node.put(keys[0], &value(keys[0], version, bytes));
            }
            node.txn(
                keys.iter()
                    .map(|k| (*k, value(*k, version, bytes)))
                    .collect(),
            )
        })
        .await?;
        Ok(done.is_ok())
    }
}
