//! The news-platform example: creates the schema (`schema.sql`), loads a deterministic data
//! set of the size asked through COPY, runs the platform's queries and checks each answer
//! against what the generated data implies.
//!
//! ```sh
//! cargo run --release -- dev --nodes 4 --zones beijing,beijing,hongkong,hongkong &
//! cargo run --release --example news -- --url postgres://cairn@127.0.0.1:5433/cairn \
//!     --users 10000 --articles 2000 --reads 200000
//! ```

#[path = "data.rs"]
mod data;

use clap::Parser;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Where to connect (any node).
    #[arg(long, default_value = "postgres://cairn@127.0.0.1:5433/cairn")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    users: u32,
    #[arg(long, default_value_t = 300)]
    articles: u32,
    #[arg(long, default_value_t = 20_000)]
    reads: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only run the queries (the data set is already loaded with the same sizes and seed).
    #[arg(long)]
    skip_load: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = data::Scale {
        users: args.users,
        articles: args.articles,
        reads: args.reads,
        seed: args.seed,
    };
    let d = data::generate(scale);
    let (c, conn) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    if !args.skip_load {
        let started = Instant::now();
        data::load(&c, &d).await?;
        let rows = d.users.len() + d.articles.len() + d.reads.len() + d.be_read.len() + 3;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "schema created and {rows} rows loaded in {secs:.1} s ({:.0} rows/s)",
            rows as f64 / secs
        );
    }
    let mut failed = 0;
    for check in data::checks(&d) {
        let started = Instant::now();
        let got = data::rows(&c, &check.sql).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let ok = got == check.expected;
        if !ok {
            failed += 1;
        }
        println!(
            "{} {:<52} {:>8.1} ms  {}",
            if ok { "ok  " } else { "FAIL" },
            check.what,
            ms,
            got.iter()
                .take(3)
                .map(|r| r.join("|"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        if !ok {
            println!("     expected {:?}", check.expected);
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} queries returned wrong results");
    }
    Ok(())
}
