//! SQL facts: the table operations a SQL string performs, parsed with `sqlparser` (never regexes).

use std::ops::ControlFlow;

use serde::Serialize;
use sqlparser::ast::{
    FromTable, ObjectName, ObjectType, OnConflictAction, OnInsert, SqliteOnConflict, Statement,
    TableFactor, TableObject, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// What one SQL string does, as far as rules care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlFact {
    /// Table operations, including those nested in CTEs and sub-queries.
    pub ops: Vec<SqlOp>,
    /// Whether some `SELECT` takes row locks (`FOR UPDATE`/`FOR SHARE`).
    pub locks: bool,
    /// The parser's message when no dialect could parse the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a statement does to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `INSERT` without conflict handling that overwrites.
    Insert,
    /// `INSERT … ON CONFLICT DO UPDATE`, `ON DUPLICATE KEY UPDATE`.
    Upsert,
    /// `REPLACE INTO`, `INSERT OR REPLACE`, `INSERT OVERWRITE`.
    Replace,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`.
    Truncate,
    /// `DROP TABLE`.
    Drop,
    /// `ALTER TABLE`.
    Alter,
    /// `MERGE INTO`.
    Merge,
}

/// One operation on one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SqlOp {
    /// What it does.
    pub op: OpKind,
    /// Lowercased, unquoted, possibly schema-qualified table name (`es.events`).
    pub table: String,
    /// The last part of `table` (`events`).
    pub name: String,
}

const SQL_KEYWORDS: &[&str] = &[
    "select", "insert", "update", "delete", "with", "truncate", "drop", "alter", "merge",
    "replace", "upsert", "create",
];

/// Whether `text` starts like a SQL statement (after whitespace, comments and parentheses).
pub fn looks_like_sql(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix('(') {
            rest = after.trim_start();
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    let next = rest[word.len()..].chars().next();
    SQL_KEYWORDS.contains(&word.as_str()) && next.is_none_or(|c| !c.is_alphanumeric() && c != '_')
}

thread_local! {
    /// Analyses by SQL text: generated and repetitive code sends the same statements many times.
    static CACHE: std::cell::RefCell<std::collections::HashMap<String, SqlFact>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Parses `text` with the PostgreSQL, generic, MySQL and SQLite dialects in turn (memoised per thread).
pub fn analyse(text: &str) -> SqlFact {
    if let Some(hit) = CACHE.with(|cache| cache.borrow().get(text).cloned()) {
        return hit;
    }
    let fact = analyse_uncached(text);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(text.to_owned(), fact.clone());
    });
    fact
}

fn analyse_uncached(text: &str) -> SqlFact {
    let dialects: [&dyn Dialect; 4] = [
        &PostgreSqlDialect {},
        &GenericDialect {},
        &MySqlDialect {},
        &SQLiteDialect {},
    ];
    let mut first_error = None;
    for dialect in dialects {
        match Parser::parse_sql(dialect, text) {
            Ok(statements) => {
                let mut collector = Collector::default();
                for statement in &statements {
                    let _ = statement.visit(&mut collector);
                }
                collector.ops.sort();
                collector.ops.dedup();
                return SqlFact {
                    ops: collector.ops,
                    locks: collector.locks,
                    error: None,
                };
            }
            Err(err) => {
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    SqlFact {
        ops: Vec::new(),
        locks: false,
        error: first_error,
    }
}

#[derive(Default)]
struct Collector {
    ops: Vec<SqlOp>,
    locks: bool,
}

impl Collector {
    fn push(&mut self, op: OpKind, name: &ObjectName) {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| match part.as_ident() {
                Some(ident) => ident.value.to_lowercase(),
                None => part.to_string().to_lowercase(),
            })
            .collect();
        let table = parts.join(".");
        let last = parts.last().cloned().unwrap_or_default();
        self.ops.push(SqlOp {
            op,
            table,
            name: last,
        });
    }

    fn push_factor(&mut self, op: OpKind, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            self.push(op, name);
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.locks = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                let op = match (&insert.on, &insert.or) {
                    (Some(OnInsert::DuplicateKeyUpdate(_)), _) => OpKind::Upsert,
                    (Some(OnInsert::OnConflict(conflict)), _)
                        if matches!(conflict.action, OnConflictAction::DoUpdate(_)) =>
                    {
                        OpKind::Upsert
                    }
                    (_, Some(SqliteOnConflict::Replace)) => OpKind::Replace,
                    _ if insert.replace_into => OpKind::Replace,
                    _ if insert.overwrite => OpKind::Replace,
                    _ => OpKind::Insert,
                };
                if let TableObject::TableName(name) = &insert.table {
                    self.push(op, name);
                }
            }
            Statement::Update(update) => self.push_factor(OpKind::Update, &update.table.relation),
            Statement::Delete(delete) => {
                for name in &delete.tables {
                    self.push(OpKind::Delete, name);
                }
                let from = match &delete.from {
                    FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => {
                        tables
                    }
                };
                if delete.tables.is_empty() {
                    for table in from {
                        self.push_factor(OpKind::Delete, &table.relation);
                    }
                }
            }
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    self.push(OpKind::Truncate, &target.name);
                }
            }
            Statement::Drop {
                object_type: ObjectType::Table,
                names,
                ..
            } => {
                for name in names {
                    self.push(OpKind::Drop, name);
                }
            }
            Statement::AlterTable(alter) => self.push(OpKind::Alter, &alter.name),
            Statement::Merge(merge) => self.push_factor(OpKind::Merge, &merge.table),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(sql: &str) -> Vec<(OpKind, String)> {
        let fact = analyse(sql);
        assert!(fact.error.is_none(), "{sql}: {:?}", fact.error);
        fact.ops.into_iter().map(|o| (o.op, o.table)).collect()
    }

    #[test]
    fn recognises_every_mutation_form() {
        assert_eq!(
            ops("update Events set payload = $1"),
            vec![(OpKind::Update, "events".into())]
        );
        assert_eq!(
            ops(r#"DELETE FROM "es"."events" WHERE id = 1"#),
            vec![(OpKind::Delete, "es.events".into())]
        );
        assert_eq!(
            ops("TRUNCATE events"),
            vec![(OpKind::Truncate, "events".into())]
        );
        assert_eq!(
            ops("DROP TABLE events"),
            vec![(OpKind::Drop, "events".into())]
        );
        assert_eq!(
            ops("ALTER TABLE events ADD COLUMN x int"),
            vec![(OpKind::Alter, "events".into())]
        );
        assert_eq!(
            ops("INSERT INTO events (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2"),
            vec![(OpKind::Upsert, "events".into())]
        );
        assert_eq!(
            ops("INSERT INTO events (id) VALUES (1) ON CONFLICT DO NOTHING"),
            vec![(OpKind::Insert, "events".into())]
        );
        assert_eq!(
            ops("REPLACE INTO events (id) VALUES (1)"),
            vec![(OpKind::Replace, "events".into())]
        );
        assert_eq!(
            ops("WITH gone AS (DELETE FROM events WHERE id = 1 RETURNING *) SELECT * FROM gone"),
            vec![(OpKind::Delete, "events".into())]
        );
        assert_eq!(
            ops(
                "MERGE INTO events e USING incoming i ON e.id = i.id WHEN MATCHED THEN UPDATE SET payload = i.payload"
            ),
            vec![(OpKind::Merge, "events".into())]
        );
    }

    #[test]
    fn reads_are_not_mutations() {
        let fact = analyse("SELECT * FROM events WHERE stream_id = $1 FOR UPDATE");
        assert!(fact.ops.is_empty());
        assert!(fact.locks);
    }

    #[test]
    fn detects_sql_looking_text() {
        assert!(looks_like_sql("  -- hi\n  UPDATE events SET x = 1"));
        assert!(looks_like_sql("(select 1)"));
        assert!(!looks_like_sql("updated events for stream"));
        assert!(!looks_like_sql("deleting events"));
    }
}
