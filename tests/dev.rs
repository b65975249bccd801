//! `DATABASE_URL=dev` / `realtime dev --keep` against the real binary: the throwaway
//! cluster has what Postgres Changes need (logical WAL, Supabase-shaped roles and
//! `auth.*` helpers, the demo table with its owner-only policy, the publication), and is
//! stopped and removed on SIGTERM, or kept with `--keep`. The supabase-js side is
//! `tests/js/test/dev.test.mjs`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const USER_A: &str = "00000000-0000-4000-8000-000000000001";
const USER_B: &str = "00000000-0000-4000-8000-000000000002";

struct Dev {
    child: Child,
    database_url: String,
}

async fn start(args: &[&str], env: &[(&str, &str)]) -> Dev {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_realtime"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TMPDIR", std::env::temp_dir())
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut database_url = None;
    let read = async {
        let first = lines.next_line().await.unwrap().expect("a listening line");
        assert!(first.starts_with("realtime-rs listening on "), "{first}");
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DATABASE_URL=") {
                database_url = Some(url.to_owned());
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("dev starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Dev {
        child,
        database_url: database_url.expect("a DATABASE_URL= line"),
    }
}

impl Dev {
    fn port(&self) -> u16 {
        self.database_url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// SIGTERM; waits for exit 0 and returns stderr.
    async fn stop(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            pipe.read_to_string(&mut stderr).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("exits after SIGTERM");
        assert!(status.success(), "{status:?}: {stderr}");
        stderr
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let prefix = format!("realtime-dev-{}-", self.child.id().unwrap());
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Rows of public.todos visible to `role` with JWT claims `sub`, as realtime-rs checks RLS.
async fn visible(db: &tokio_postgres::Client, role: &str, sub: &str) -> i64 {
    let claims = serde_json::json!({"role": role, "sub": sub}).to_string();
    db.batch_execute("begin").await.unwrap();
    db.execute("select set_config('request.jwt.claims', $1, true)", &[&claims])
        .await
        .unwrap();
    db.batch_execute(&format!("set local role {role}")).await.unwrap();
    let n: i64 = db
        .query_one("select count(*) from public.todos", &[])
        .await
        .unwrap()
        .get(0);
    db.batch_execute("rollback").await.unwrap();
    n
}

#[tokio::test]
async fn database_url_dev_builds_a_supabase_shaped_cluster_and_removes_it_on_exit() {
    let dev = start(&[], &[("DATABASE_URL", "dev")]).await;
    assert_eq!(dev.dirs().len(), 1, "one cluster directory while running");
    let db = connect(&dev.database_url).await;

    let wal: String = db.query_one("show wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal, "logical");
    let roles: Vec<(String, bool)> = db
        .query(
            "select rolname::text, rolbypassrls from pg_roles where rolname in ('anon','authenticated','service_role') order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        roles,
        [
            ("anon".into(), false),
            ("authenticated".into(), false),
            ("service_role".into(), true)
        ]
    );
    let published: Vec<String> = db
        .query(
            "select schemaname || '.' || tablename from pg_publication_tables where pubname = 'supabase_realtime'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["public.todos"]);

    // The helpers read the claims the way realtime-rs sets them for RLS checks.
    db.batch_execute("begin").await.unwrap();
    let claims = serde_json::json!({"role": "authenticated", "sub": USER_A}).to_string();
    db.execute("select set_config('request.jwt.claims', $1, true)", &[&claims])
        .await
        .unwrap();
    let row = db
        .query_one("select auth.uid()::text, auth.role(), auth.jwt() ->> 'sub'", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (USER_A.to_owned(), "authenticated".to_owned(), USER_A.to_owned())
    );
    db.batch_execute("rollback").await.unwrap();

    // Owner-only: the row is visible to its owner and service_role, to no one else.
    db.execute(
        "insert into public.todos (owner, task) values ($1::text::uuid, 'mine')",
        &[&USER_A],
    )
    .await
    .unwrap();
    assert_eq!(visible(&db, "authenticated", USER_A).await, 1);
    assert_eq!(visible(&db, "authenticated", USER_B).await, 0);
    assert_eq!(visible(&db, "anon", USER_A).await, 0);
    assert_eq!(visible(&db, "service_role", USER_B).await, 1);
    drop(db);

    let port = dev.port();
    let dirs = dev.dirs();
    dev.stop().await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "the cluster is stopped"
    );
    assert!(dirs.iter().all(|d| !d.exists()), "and removed: {dirs:?}");
}

#[tokio::test]
async fn dev_keep_leaves_the_cluster_directory_and_says_how_to_start_it() {
    let dev = start(&["dev", "--keep"], &[]).await;
    let port = dev.port();
    let dirs = dev.dirs();
    assert_eq!(dirs.len(), 1);
    let stderr = dev.stop().await;
    let dir = &dirs[0];
    let kept = dir.join("data").join("PG_VERSION").exists();
    let said = stderr.contains(&format!("kept the cluster in {}", dir.display()));
    let stopped = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err();
    let _ = std::fs::remove_dir_all(dir);
    assert!(kept, "the data directory is kept");
    assert!(said, "stderr says where: {stderr}");
    assert!(stopped, "the server itself is stopped");
}
