//! The two migration sets must describe the same tables, columns and
//! nullability; only the DDL spelling may differ.

use std::collections::BTreeMap;

use sqlx::Row as _;

use crate::common::TestDb;

/// table -> column -> nullable
type Shape = BTreeMap<String, BTreeMap<String, bool>>;

async fn sqlite_shape(db: &TestDb) -> Shape {
    let _store = db.store().await;
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let sql = "SELECT m.name AS t, p.name AS c, p.\"notnull\" AS nn, p.pk AS pk \
               FROM sqlite_master m JOIN pragma_table_info(m.name) p \
               WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'";
    let mut shape = Shape::new();
    for row in sqlx::query(sql).fetch_all(&pool).await.unwrap() {
        // SQLite primary keys may be NULL in theory; PostgreSQL's never are.
        let nullable = row.get::<i64, _>("nn") == 0 && row.get::<i64, _>("pk") == 0;
        shape
            .entry(row.get("t"))
            .or_default()
            .insert(row.get("c"), nullable);
    }
    pool.close().await;
    shape
}

async fn postgres_shape(db: &TestDb) -> Shape {
    let _store = db.store().await;
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let sql = "SELECT table_name::text AS t, column_name::text AS c, is_nullable::text AS n \
               FROM information_schema.columns \
               WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'";
    let mut shape = Shape::new();
    for row in sqlx::query(sql).fetch_all(&pool).await.unwrap() {
        shape
            .entry(row.get("t"))
            .or_default()
            .insert(row.get("c"), row.get::<String, _>("n") == "YES");
    }
    pool.close().await;
    shape
}

#[tokio::test]
async fn both_migration_sets_define_the_same_schema() {
    let Some(pg) = TestDb::postgres("both_migration_sets_define_the_same_schema").await else {
        return;
    };
    let lite = TestDb::sqlite();
    let (a, b) = (sqlite_shape(&lite).await, postgres_shape(&pg).await);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        [
            "api_keys",
            "audit_log",
            "auth_requests",
            "dns_settings",
            "nodes",
            "policies",
            "preauth_keys",
            "ssh_approvals",
            "ssh_recordings",
            "users"
        ]
    );
    assert_eq!(a, b);
    pg.finish().await;
}
