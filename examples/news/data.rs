//! The news platform's data: a deterministic generator (same seed and sizes, same rows),
//! loading through COPY, and the platform's queries with the answers the generated data
//! implies — so a run checks Cairn's results instead of only printing them.
//!
//! Shared by the `news` example (`cargo run --release --example news -- --help`) and by
//! `tests/news.rs`.

#![allow(dead_code)]

use std::collections::BTreeMap;

pub const SCHEMA: &str = include_str!("schema.sql");

/// Sizes of a generated data set.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub users: u32,
    pub articles: u32,
    pub reads: u32,
    pub seed: u64,
}

pub struct User {
    pub uid: i32,
    pub region: &'static str,
    pub name: String,
    pub gender: &'static str,
    pub dept: String,
    pub grade: String,
    pub language: &'static str,
    pub credits: i32,
}

pub struct Article {
    pub aid: i32,
    pub category: &'static str,
    pub title: String,
    pub authors: String,
    pub language: &'static str,
}

pub struct Read {
    pub id: i64,
    pub region: &'static str,
    pub uid: i32,
    pub aid: i32,
    pub time_length: i32,
    pub agree: bool,
    pub comment: bool,
    pub share: bool,
    pub ts: i64,
}

pub struct Dataset {
    pub users: Vec<User>,
    pub articles: Vec<Article>,
    pub reads: Vec<Read>,
    /// (aid, reads, agrees, comments, shares), every article that was read.
    pub be_read: Vec<(i32, i32, i32, i32, i32)>,
    /// (id, granularity, top-5 aids, ts).
    pub ranks: Vec<(i32, &'static str, String, i64)>,
}

/// The first day of the generated reads (2017-09-25, as in the platform's data).
pub const START_TS: i64 = 1_506_297_600;
const DAY: i64 = 86_400;

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn generate(scale: Scale) -> Dataset {
    let mut rng = Rng(scale.seed);
    let users: Vec<User> = (1..=scale.users as i32)
        .map(|uid| {
            let beijing = rng.chance(60);
            User {
                uid,
                region: if beijing { "Beijing" } else { "Hong Kong" },
                name: format!("user{uid}"),
                gender: if rng.chance(50) { "male" } else { "female" },
                dept: format!("dept{}", rng.below(20)),
                grade: format!("grade{}", rng.below(4) + 1),
                language: if rng.chance(80) { "zh" } else { "en" },
                credits: rng.below(100) as i32,
            }
        })
        .collect();
    let articles: Vec<Article> = (1..=scale.articles as i32)
        .map(|aid| Article {
            aid,
            category: if rng.chance(45) {
                "science"
            } else {
                "technology"
            },
            title: format!("title{aid}"),
            authors: format!("author{}", rng.below(500)),
            language: if rng.chance(50) { "zh" } else { "en" },
        })
        .collect();
    // Popular articles are read much more: a skewed pick over articles.
    let reads: Vec<Read> = (1..=scale.reads as i64)
        .map(|id| {
            let user = &users[rng.below(users.len() as u64) as usize];
            let a = rng.below(articles.len() as u64);
            let hot = rng.below(articles.len() as u64 / 10 + 1);
            let aid = if rng.chance(50) { hot } else { a } as i32 + 1;
            Read {
                id,
                region: user.region,
                uid: user.uid,
                aid,
                time_length: rng.below(300) as i32,
                agree: rng.chance(30),
                comment: rng.chance(10),
                share: rng.chance(5),
                // Reads spread over 60 days.
                ts: START_TS + rng.below(60 * DAY as u64) as i64,
            }
        })
        .collect();
    let mut counts: BTreeMap<i32, (i32, i32, i32, i32)> = BTreeMap::new();
    for r in &reads {
        let c = counts.entry(r.aid).or_default();
        c.0 += 1;
        c.1 += r.agree as i32;
        c.2 += r.comment as i32;
        c.3 += r.share as i32;
    }
    let be_read = counts
        .iter()
        .map(|(aid, c)| (*aid, c.0, c.1, c.2, c.3))
        .collect();
    // Rankings: the top 5 articles of the last day, week and month of the reads.
    let end = START_TS + 60 * DAY;
    let mut ranks = Vec::new();
    for (id, (granularity, span)) in [("daily", DAY), ("weekly", 7 * DAY), ("monthly", 30 * DAY)]
        .into_iter()
        .enumerate()
    {
        ranks.push((
            id as i32 + 1,
            granularity,
            top5(&reads, end - span, end),
            end,
        ));
    }
    Dataset {
        users,
        articles,
        reads,
        be_read,
        ranks,
    }
}

/// The five most read articles with a read in [from, to): most reads first, then lowest id.
fn top5(reads: &[Read], from: i64, to: i64) -> String {
    let mut n: BTreeMap<i32, i64> = BTreeMap::new();
    for r in reads.iter().filter(|r| r.ts >= from && r.ts < to) {
        *n.entry(r.aid).or_default() += 1;
    }
    let mut v: Vec<(i32, i64)> = n.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.iter()
        .take(5)
        .map(|(aid, _)| aid.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn b(v: bool) -> &'static str {
    if v {
        "t"
    } else {
        "f"
    }
}

/// COPY text-format data for each table, in load order.
pub fn copy_data(d: &Dataset) -> Vec<(&'static str, String)> {
    let mut users = String::new();
    for u in &d.users {
        users.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            u.uid, u.region, u.name, u.gender, u.dept, u.grade, u.language, u.credits
        ));
    }
    let mut articles = String::new();
    for a in &d.articles {
        articles.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            a.aid, a.category, a.title, a.authors, a.language
        ));
    }
    let mut reads = String::new();
    for r in &d.reads {
        reads.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.id,
            r.region,
            r.uid,
            r.aid,
            r.time_length,
            b(r.agree),
            b(r.comment),
            b(r.share),
            r.ts
        ));
    }
    let mut be_read = String::new();
    for (aid, n, a, c, s) in &d.be_read {
        be_read.push_str(&format!("{aid}\t{n}\t{a}\t{c}\t{s}\n"));
    }
    let mut ranks = String::new();
    for (id, g, list, ts) in &d.ranks {
        ranks.push_str(&format!("{id}\t{g}\t{list}\t{ts}\n"));
    }
    vec![
        ("users", users),
        ("articles", articles),
        ("reads", reads),
        ("be_read", be_read),
        ("popular_rank", ranks),
    ]
}

/// The schema's statements, comments left out.
pub fn schema_statements() -> Vec<String> {
    SCHEMA
        .split(';')
        .map(|stmt| {
            stmt.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string()
        })
        .filter(|sql| !sql.is_empty())
        .collect()
}

/// Create the schema and load `d` through COPY.
pub async fn load(c: &tokio_postgres::Client, d: &Dataset) -> Result<(), tokio_postgres::Error> {
    load_with(c, d, &schema_statements()).await
}

/// Run `schema` (the schema's statements, perhaps adapted to the server), then load `d`
/// through COPY.
pub async fn load_with(
    c: &tokio_postgres::Client,
    d: &Dataset,
    schema: &[String],
) -> Result<(), tokio_postgres::Error> {
    use futures::SinkExt;
    for sql in schema {
        c.batch_execute(sql).await?;
    }
    for (table, data) in copy_data(d) {
        let sink = c.copy_in(&format!("COPY {table} FROM STDIN")).await?;
        futures::pin_mut!(sink);
        for chunk in data.as_bytes().chunks(64 * 1024) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
    }
    Ok(())
}

/// A platform query and the rows it must return (text, in order).
pub struct Check {
    pub what: &'static str,
    pub sql: String,
    pub expected: Vec<Vec<String>>,
}

pub fn checks(d: &Dataset) -> Vec<Check> {
    let mut out = Vec::new();
    // Users of a region.
    let beijing: Vec<&User> = d.users.iter().filter(|u| u.region == "Beijing").collect();
    out.push(Check {
        what: "users of a region (count)",
        sql: "SELECT count(*) FROM users WHERE region = 'Beijing'".into(),
        expected: vec![vec![beijing.len().to_string()]],
    });
    out.push(Check {
        what: "users of a region (first ten)",
        sql: "SELECT uid, name FROM users WHERE region = 'Beijing' ORDER BY uid LIMIT 10".into(),
        expected: beijing
            .iter()
            .take(10)
            .map(|u| vec![u.uid.to_string(), u.name.clone()])
            .collect(),
    });
    // Science articles.
    let science = d
        .articles
        .iter()
        .filter(|a| a.category == "science")
        .count();
    out.push(Check {
        what: "science articles",
        sql: "SELECT count(*) FROM articles WHERE category = 'science'".into(),
        expected: vec![vec![science.to_string()]],
    });
    // Articles read by Beijing users: reads (co-located with users) joined with articles
    // (placed elsewhere) — a distributed join.
    let category: BTreeMap<i32, &str> = d.articles.iter().map(|a| (a.aid, a.category)).collect();
    let mut by_category: BTreeMap<&str, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for r in d.reads.iter().filter(|r| r.region == "Beijing") {
        by_category
            .entry(category[&r.aid])
            .or_default()
            .insert(r.aid);
    }
    out.push(Check {
        what: "articles read by Beijing users, by category",
        sql: "SELECT a.category, count(DISTINCT a.aid) FROM reads r JOIN articles a ON a.aid = r.aid \
              JOIN users u ON u.region = r.region AND u.uid = r.uid \
              WHERE u.region = 'Beijing' GROUP BY a.category ORDER BY a.category"
            .into(),
        expected: by_category
            .iter()
            .map(|(c, s)| vec![c.to_string(), s.len().to_string()])
            .collect(),
    });
    // Top-5 popular articles per granularity, as ranked, and from the reads themselves.
    for (_, g, list, _) in &d.ranks {
        out.push(Check {
            what: "top-5 popular articles (ranking table)",
            sql: format!(
                "SELECT article_aid_list FROM popular_rank WHERE temporal_granularity = '{g}'"
            ),
            expected: vec![vec![list.clone()]],
        });
    }
    let end = START_TS + 60 * DAY;
    out.push(Check {
        what: "top-5 popular articles of the last week (from reads)",
        sql: format!(
            "SELECT aid FROM reads WHERE ts >= {} AND ts < {end} GROUP BY aid \
             ORDER BY count(*) DESC, aid LIMIT 5",
            end - 7 * DAY
        ),
        expected: d.ranks[1]
            .2
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| vec![s.to_string()])
            .collect(),
    });
    // Reads per article.
    let mut most: Vec<&(i32, i32, i32, i32, i32)> = d.be_read.iter().collect();
    most.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.push(Check {
        what: "reads per article (most read five)",
        sql: "SELECT aid, read_num FROM be_read ORDER BY read_num DESC, aid LIMIT 5".into(),
        expected: most
            .iter()
            .take(5)
            .map(|r| vec![r.0.to_string(), r.1.to_string()])
            .collect(),
    });
    let seven = d.reads.iter().filter(|r| r.aid == 7).count();
    out.push(Check {
        what: "reads of one article (from reads)",
        sql: "SELECT count(*) FROM reads WHERE aid = 7".into(),
        expected: vec![vec![seven.to_string()]],
    });
    out
}

/// Run `sql` and return its rows as text.
pub async fn rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}
