-- The news platform on Cairn: users and their reads kept in the zone of their region,
-- articles placed by category, read counts copied to every node, rankings by granularity.
-- Run against a cluster whose nodes carry --zone beijing / --zone hongkong, e.g.
--   cairn dev --nodes 4 --zones beijing,beijing,hongkong,hongkong

CREATE TABLE users (
    uid integer NOT NULL,
    region text NOT NULL,
    name text NOT NULL,
    gender text,
    dept text,
    grade text,
    language text,
    obtained_credits integer,
    PRIMARY KEY (region, uid)
) PARTITION BY LIST (region);
CREATE TABLE users_beijing PARTITION OF users FOR VALUES IN ('Beijing') WITH (zones = 'beijing');
CREATE TABLE users_hongkong PARTITION OF users FOR VALUES IN ('Hong Kong') WITH (zones = 'hongkong');

-- Reads live with their reader: same partitions, so joins on (region, uid) stay local.
CREATE TABLE reads (
    id bigint NOT NULL,
    region text NOT NULL,
    uid integer NOT NULL,
    aid integer NOT NULL,
    read_time_length integer,
    agree boolean,
    comment boolean,
    share boolean,
    ts bigint NOT NULL,
    PRIMARY KEY (region, id)
) WITH (colocate_with = 'users') PARTITION BY LIST (region);

CREATE TABLE articles (
    aid integer NOT NULL,
    category text NOT NULL,
    title text NOT NULL,
    authors text,
    language text,
    PRIMARY KEY (category, aid)
) PARTITION BY LIST (category);
CREATE TABLE articles_science PARTITION OF articles FOR VALUES IN ('science') WITH (zones = 'beijing,hongkong');
CREATE TABLE articles_technology PARTITION OF articles FOR VALUES IN ('technology') WITH (zones = 'hongkong');

-- Read counts per article, small and read everywhere: a copy on every node.
CREATE TABLE be_read (
    aid integer PRIMARY KEY,
    read_num integer NOT NULL,
    agree_num integer NOT NULL,
    comment_num integer NOT NULL,
    share_num integer NOT NULL
);
SELECT create_reference_table('be_read');

CREATE TABLE popular_rank (
    id integer NOT NULL,
    temporal_granularity text NOT NULL,
    article_aid_list text NOT NULL,
    ts bigint NOT NULL,
    PRIMARY KEY (temporal_granularity, id)
) PARTITION BY LIST (temporal_granularity);
CREATE TABLE popular_rank_daily PARTITION OF popular_rank FOR VALUES IN ('daily') WITH (zones = 'beijing');
CREATE TABLE popular_rank_longer PARTITION OF popular_rank FOR VALUES IN ('weekly', 'monthly') WITH (zones = 'hongkong');
