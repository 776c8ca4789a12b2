//! Fixtures shared by the integration tests: a store of either kind (reopenable, for restart
//! tests), a bootstrapped cloud, and two tenant projects with a member user each.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use hv_orchestrator::identity::{Bootstrap, NewUser, PasswordAuth};
use hv_orchestrator::store::{PostgresStore, SqliteStore, Store};
use hv_orchestrator::{Cloud, Config, Context, Role};
use hv_test_support::postgres::PgServer;

/// Where a test's state lives.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgServer, tempfile::TempDir),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    /// `None` (after `require!`'s notice) when PostgreSQL is not installed.
    pub fn postgres() -> Option<Db> {
        let pg = PgServer::start();
        if !hv_test_support::check(pg.is_some(), hv_test_support::postgres::PG_MISSING) {
            return None;
        }
        Some(Db::Postgres(pg.unwrap(), tempfile::tempdir().unwrap()))
    }

    pub fn dir(&self) -> PathBuf {
        match self {
            Db::Sqlite(d) | Db::Postgres(_, d) => d.path().to_path_buf(),
        }
    }

    /// Opens (or reopens) the store.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(d) => Arc::new(SqliteStore::open(d.path().join("cloud.db")).unwrap()),
            Db::Postgres(pg, _) => Arc::new(PostgresStore::connect(&pg.url()).unwrap()),
        }
    }

    /// Opens a cloud over a (re)opened store.
    pub fn cloud(&self) -> Cloud {
        Cloud::open(self.store(), Config::new(self.dir().join("images"))).unwrap()
    }
}

/// Runs a test body against SQLite and against PostgreSQL, as two tests.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn sqlite() {
                let f: fn(&$crate::common::Db) = $body;
                f(&$crate::common::Db::sqlite());
            }
            #[test]
            fn postgres() {
                let f: fn(&$crate::common::Db) = $body;
                if let Some(db) = $crate::common::Db::postgres() {
                    f(&db);
                }
            }
        }
    };
}

pub const ADMIN_PW: &str = "admin-pw";

/// A bootstrapped cloud's admin context.
pub fn admin(cloud: &Cloud) -> Context {
    cloud.bootstrap(&Bootstrap::new(ADMIN_PW)).unwrap();
    login(cloud, "admin", ADMIN_PW, "admin")
}

pub fn login(cloud: &Cloud, user: &str, pw: &str, project: &str) -> Context {
    let t = cloud.authenticate(&PasswordAuth::by_name(user, pw, project)).unwrap();
    cloud.validate(&t.secret).unwrap()
}

/// A project `name` with a user `name-user` holding `role` there; returns the user's context.
pub fn tenant(cloud: &Cloud, admin: &Context, name: &str, role: Role) -> Context {
    let p = cloud.create_project(admin, name, "").unwrap();
    let user = format!("{name}-user");
    let u = cloud
        .create_user(
            admin,
            &NewUser {
                name: user.clone(),
                password: "pw".into(),
                default_project_id: Some(p.id.clone()),
            },
        )
        .unwrap();
    cloud.grant_role(admin, &p.id, &u.id, role).unwrap();
    login(cloud, &user, "pw", name)
}

impl Db {
    /// Opens a cloud over a (re)opened store whose process is a compute host, its host state
    /// in `state_dir` (the same directory after a restart finds the running VMs again).
    pub fn compute_cloud(&self, state_dir: &std::path::Path) -> Cloud {
        let mut cfg = Config::new(self.dir().join("images"));
        let mut c = hv_orchestrator::ComputeConfig::new(state_dir, hv_test_support::vmm_binary());
        c.host_name = "test-host".into();
        c.shutdown_timeout = std::time::Duration::from_secs(5);
        cfg.compute = Some(c);
        Cloud::open(self.store(), cfg).unwrap()
    }
}

/// True when VMs, bridges and nft rules can be made here (KVM, root, `nft`, `ip`).
pub fn can_run_vms() -> bool {
    hv_test_support::have_kvm()
        && hv_test_support::is_root()
        && hv_test_support::netns::have_netns_tools()
        && std::path::Path::new("/usr/sbin/nft").exists()
}

/// Uploads the test guest as an `aki` image booting with `cmdline`.
pub fn guest_image(cloud: &Cloud, ctx: &Context, name: &str, cmdline: &str) -> String {
    use hv_orchestrator::image::{DiskFormat, NewImage};
    let mut n = NewImage::new(name, DiskFormat::Aki);
    n.properties.insert("os_command_line".into(), cmdline.into());
    n.properties.insert("os_shutdown_timeout".into(), "5".into());
    let img = cloud.create_image(ctx, &n).unwrap();
    let mut f = std::fs::File::open(hv_test_support::test_guest()).unwrap();
    cloud.upload_image(ctx, &img.id, &mut f).unwrap();
    img.id
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}
