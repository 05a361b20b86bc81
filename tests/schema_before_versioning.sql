-- The aggregator's tables as fedgrove created them before its schema was versioned (up to commit 249456d:
-- `Base.metadata.create_all`, no version table), as that code's SQLAlchemy wrote them. They differ between
-- dialects in two words only, filled in by tests/schema_helpers.py: {timestamp} (SQLite DATETIME,
-- PostgreSQL TIMESTAMP WITHOUT TIME ZONE) and {serial} (INTEGER, SERIAL).

CREATE TABLE trees (
	id VARCHAR(64) NOT NULL,
	name VARCHAR(200) NOT NULL,
	owner_id VARCHAR(64) NOT NULL,
	created_at {timestamp} NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE deliveries (
	leaf_id VARCHAR(64) NOT NULL,
	aggregation_id VARCHAR(64) NOT NULL,
	delivered_at {timestamp} NOT NULL,
	PRIMARY KEY (leaf_id, aggregation_id)
);

CREATE TABLE performance (
	id {serial} NOT NULL,
	branch_id VARCHAR(64) NOT NULL,
	leaf_id VARCHAR(64) NOT NULL,
	aggregation_id VARCHAR(64) NOT NULL,
	mode VARCHAR(32) NOT NULL,
	data TEXT NOT NULL,
	created_at {timestamp} NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_performance_branch_id ON performance (branch_id);

CREATE TABLE metrics_usage (
	leaf_id VARCHAR(64) NOT NULL,
	reports INTEGER NOT NULL,
	data_bytes INTEGER NOT NULL,
	PRIMARY KEY (leaf_id)
);

CREATE TABLE branches (
	id VARCHAR(64) NOT NULL,
	tree_id VARCHAR(64) NOT NULL,
	name VARCHAR(200) NOT NULL,
	aggregation_target INTEGER NOT NULL,
	run_status VARCHAR(16) NOT NULL,
	run_number INTEGER NOT NULL,
	analytics_ops JSON NOT NULL,
	analytics_default_op VARCHAR(16),
	model_config_json JSON NOT NULL,
	round_timeout_s FLOAT,
	min_leaves INTEGER,
	max_weight_share FLOAT,
	created_at {timestamp} NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (tree_id, name),
	FOREIGN KEY(tree_id) REFERENCES trees (id)
);

CREATE TABLE leaves (
	id VARCHAR(64) NOT NULL,
	branch_id VARCHAR(64) NOT NULL,
	tree_id VARCHAR(64) NOT NULL,
	owner_id VARCHAR(64) NOT NULL,
	name VARCHAR(200) NOT NULL,
	token_hash VARCHAR(64) NOT NULL,
	created_at {timestamp} NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(branch_id) REFERENCES branches (id)
);

CREATE INDEX ix_leaves_branch_id ON leaves (branch_id);

CREATE TABLE aggregations (
	id VARCHAR(64) NOT NULL,
	branch_id VARCHAR(64) NOT NULL,
	round INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	kind VARCHAR(32),
	contributors INTEGER NOT NULL,
	weight_total FLOAT NOT NULL,
	missing_leaves JSON NOT NULL,
	opened_at {timestamp} NOT NULL,
	completed_at {timestamp},
	PRIMARY KEY (id),
	UNIQUE (branch_id, round),
	FOREIGN KEY(branch_id) REFERENCES branches (id)
);

CREATE INDEX ix_aggregations_branch_id ON aggregations (branch_id);

CREATE TABLE contributions (
	id VARCHAR(64) NOT NULL,
	aggregation_id VARCHAR(64) NOT NULL,
	leaf_id VARCHAR(64) NOT NULL,
	weighting FLOAT NOT NULL,
	size INTEGER NOT NULL,
	digest VARCHAR(100) NOT NULL,
	content_digest VARCHAR(64) NOT NULL,
	created_at {timestamp} NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (aggregation_id, leaf_id),
	FOREIGN KEY(aggregation_id) REFERENCES aggregations (id),
	FOREIGN KEY(leaf_id) REFERENCES leaves (id)
);

CREATE INDEX ix_contributions_leaf_id ON contributions (leaf_id);

CREATE INDEX ix_contributions_aggregation_id ON contributions (aggregation_id);
