//! The news-platform workload: the data set and queries of `examples/news` (users and their
//! reads partitioned by region, articles by category, a reference table of read counts,
//! popularity rankings), loaded once through COPY; then each operation runs one of the
//! platform's queries, chosen at random, and checks its rows against what the generated data
//! implies. Against PostgreSQL the schema drops Cairn's placement options.

#[path = "../../../examples/news/data.rs"]
mod data;

use super::{drive, wrong, Common, Report, Worker};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct NewsArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    #[arg(long, default_value_t = 300)]
    pub articles: u32,
    #[arg(long, default_value_t = 20_000)]
    pub reads: u32,
    /// Seed of the generated data set (the clients' choices follow --seed).
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    /// The data set was loaded by an earlier run with the same sizes and data seed.
    #[arg(long)]
    pub skip_load: bool,
    /// Cairn: each client session caches results this long (`SET cairn.cache_ttl`), e.g. 60s.
    #[arg(long)]
    pub cache_ttl: Option<String>,
}

/// Remove every `WITH (...)` whose text contains `needle` (all of them if `needle` is
/// empty).
fn strip_with(sql: &str, needle: &str) -> String {
    let mut out = sql.to_string();
    let mut from = 0;
    while let Some(i) = out[from..].find("WITH (").map(|i| from + i) {
        let Some(len) = out[i..].find(')') else { break };
        if out[i..i + len].contains(needle) {
            out.replace_range(i..=i + len, "");
        } else {
            from = i + len;
        }
    }
    out
}

/// The schema's statements for this server: zones never (the bench places nothing by
/// region), Cairn's co-location and reference tables only on Cairn.
fn schema(cairn: bool) -> Vec<String> {
    data::schema_statements()
        .into_iter()
        .filter(|s| cairn || !s.starts_with("SELECT create_reference_table"))
        .map(|s| {
            if cairn {
                return strip_with(&s, "zones");
            }
            // A table co-located with a list-partitioned one shares its partitions on
            // Cairn; PostgreSQL would need them declared: keep it whole instead.
            let colocated = s.contains("colocate_with");
            let mut s = strip_with(&s, "");
            if colocated {
                if let Some(i) = s.find("PARTITION BY LIST") {
                    s.truncate(i);
                }
            }
            s
        })
        .collect()
}

pub async fn news(args: NewsArgs) -> anyhow::Result<Report> {
    let scale = data::Scale {
        users: args.users,
        articles: args.articles,
        reads: args.reads,
        seed: args.data_seed,
    };
    let d = data::generate(scale);
    let setup = super::connect(&args.common.url).await?;
    if !args.skip_load {
        let version: String = setup.query_one("SELECT version()", &[]).await?.get(0);
        let cairn = version.contains("Cairn");
        eprintln!("loading the news data set ({} reads)...", args.reads);
        data::load_with(&setup, &d, &schema(cairn))
            .await
            .map_err(|e| anyhow::anyhow!("loading the news data set: {e:?}"))?;
    }
    let checks = Arc::new(data::checks(&d));
    let mut workers = Vec::new();
    for _ in 0..args.common.clients {
        let client = super::connect(&args.common.url).await?;
        if let Some(ttl) = &args.cache_ttl {
            client
                .batch_execute(&format!(
                    "SET cairn.cache_ttl = '{}'",
                    ttl.replace('\'', "")
                ))
                .await?;
        }
        workers.push(News {
            client,
            checks: checks.clone(),
        });
    }
    let params = format!(
        "users={} articles={} reads={}{}",
        args.users,
        args.articles,
        args.reads,
        args.cache_ttl
            .as_ref()
            .map(|t| format!(" cache-ttl={t}"))
            .unwrap_or_default()
    );
    drive(&args.common, "news", params, workers).await
}

struct News {
    client: tokio_postgres::Client,
    checks: Arc<Vec<data::Check>>,
}

#[async_trait::async_trait]
impl Worker for News {
    async fn op(&mut self, rng: &mut StdRng) -> anyhow::Result<bool> {
        let check = &self.checks[rng.random_range(0..self.checks.len())];
        match data::rows(&self.client, &check.sql).await {
            Ok(rows) if rows == check.expected => Ok(true),
            Ok(rows) => Err(wrong(format!(
                "news query \"{}\" returned {rows:?}, expected {:?}",
                check.what, check.expected
            ))),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_for_postgresql_has_no_cairn_options() {
        let pg = schema(false).join(";\n");
        assert!(
            !pg.contains("zones") && !pg.contains("colocate_with"),
            "{pg}"
        );
        assert!(!pg.contains("create_reference_table"));
        assert!(pg.contains("PARTITION OF users FOR VALUES IN ('Beijing')"));
        assert!(
            !pg.contains("PRIMARY KEY (region, id)\n)  PARTITION BY"),
            "{pg}"
        );
        let cairn = schema(true).join(";\n");
        assert!(
            !cairn.contains("zones") && cairn.contains("colocate_with"),
            "{cairn}"
        );
    }
}
