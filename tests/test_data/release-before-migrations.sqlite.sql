CREATE TABLE ratelimitevent (
    id INTEGER NOT NULL,
    bucket VARCHAR(64) NOT NULL,
    expires_at DATETIME NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_ratelimitevent_bucket_expires ON ratelimitevent (bucket, expires_at);
CREATE INDEX ix_ratelimitevent_expires_at ON ratelimitevent (expires_at);
CREATE TABLE revokedtoken (
    jti VARCHAR(64) NOT NULL,
    expires_at DATETIME NOT NULL,
    PRIMARY KEY (jti)
);
CREATE INDEX ix_revokedtoken_expires_at ON revokedtoken (expires_at);
CREATE TABLE user (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    email VARCHAR(320) NOT NULL,
    name VARCHAR(100),
    password_hash VARCHAR NOT NULL,
    created_at DATETIME NOT NULL,
    token_generation INTEGER NOT NULL,
    UNIQUE (email)
);
CREATE TABLE task (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    title VARCHAR(200) NOT NULL,
    description VARCHAR(1000),
    completed BOOLEAN NOT NULL,
    priority VARCHAR(6) NOT NULL,
    due_date DATETIME,
    recurrence VARCHAR(7) NOT NULL,
    next_occurrence_created BOOLEAN NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    completed_at DATETIME,
    CONSTRAINT recurring_task_has_due_date CHECK (recurrence = 'none' OR due_date IS NOT NULL),
    FOREIGN KEY(user_id) REFERENCES user (id) ON DELETE CASCADE
);
CREATE INDEX ix_task_user_created ON task (user_id, created_at, id);
CREATE TABLE tasktag (
    task_id INTEGER NOT NULL,
    name VARCHAR(30) NOT NULL,
    PRIMARY KEY (task_id, name),
    FOREIGN KEY(task_id) REFERENCES task (id) ON DELETE CASCADE
);
