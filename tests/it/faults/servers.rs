//! Private server instances for fault injection: PostgreSQL, NATS JetStream and RabbitMQ, each
//! on free loopback ports in its own temporary folder, never the shared servers of the machine.
//!
//! Every guard stops its server when dropped, also when a test panics.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A free TCP port on 127.0.0.1 (free when asked; a server binds it right after).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Waits until `port` accepts connections, or panics naming `what` after `timeout`.
pub(crate) fn wait_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !port_open(port) {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The path of `name` when it is an executable on `PATH` or in `extra` folders.
fn find_binary(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `Some(path)` of a server binary, or `None` (the test skips) with a message; with
/// `NEXUS_REQUIRE_SERVICES=1` a missing binary fails the test instead.
pub(crate) fn require_binary(found: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    if found.is_none() {
        // The fault report lists what did not run, beside what did.
        super::report(&format!("skipped: {what} is not installed"));
    }
    crate::support::available(found.ok_or_else(|| format!("{what} is not installed")))
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Whether this process runs as root (PostgreSQL refuses to, so it runs as `postgres` then).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Sends `signal` (e.g. `-KILL`, or `-0` to ask whether any member lives) to the process
/// group `pgid`; true when some process received it.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `timeout` for `child` to exit; true when it did.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private PostgreSQL cluster (initdb, pg_ctl) in a temporary folder, trust auth on loopback.
pub(crate) struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    _dir: TempDir,
}

impl Postgres {
    /// Starts a fresh cluster, or `None` (skipped) when PostgreSQL's server binaries are missing.
    pub(crate) fn start() -> Option<Self> {
        let bin = require_binary(postgres_bin_dir(), "PostgreSQL (initdb, pg_ctl)")?;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let user = if running_as_root() {
            let user = system_user("postgres").expect("a `postgres` user to run PostgreSQL as");
            std::os::unix::fs::chown(dir.path(), Some(user.0), Some(user.1)).unwrap();
            Some(user)
        } else {
            None
        };
        let server = Self {
            bin,
            data: dir.path().join("data"),
            port: free_port(),
            user,
            _dir: dir,
        };
        let init = server
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&server.data)
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        server.pg_ctl_start();
        Some(server)
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.current_dir(self._dir.path());
        command
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self._dir.path().display()
        );
        let started = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-o", &options, "-l"])
            .arg(self._dir.path().join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        wait_port(self.port, "PostgreSQL", Duration::from_secs(30));
    }

    /// Stops the server the hard way (`-m immediate`: no shutdown checkpoint, crash recovery
    /// on start), waits `down`, and starts it again on the same port and data.
    pub(crate) fn restart(&self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.pg_ctl_start();
    }

    fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The URL of database `name` (the cluster has `postgres`; create others with [`Self::create_database`]).
    pub(crate) fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub(crate) fn create_database(&self, name: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                    .await
                    .expect("connect to the private PostgreSQL");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the database");
        });
        self.url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl`, or the folder
/// of `initdb` on `PATH`.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .or_else(|| find_binary("initdb", &[]).and_then(|p| p.parent().map(Path::to_path_buf)))
}

/// A private `nats-server -js` with its own store folder; killed with SIGKILL on drop.
pub(crate) struct Nats {
    bin: PathBuf,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

impl Nats {
    /// Starts a server, or `None` (skipped) when `nats-server` is missing.
    pub(crate) fn start() -> Option<Self> {
        let bin = require_binary(
            std::env::var_os("NEXUS_TEST_NATS_SERVER")
                .map(PathBuf::from)
                .or_else(|| find_binary("nats-server", &["/usr/sbin"])),
            "nats-server",
        )?;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = free_port();
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("jetstream");
        // JetStream fsyncs every 2 minutes by default; `sync_interval: always` (nats-server
        // 2.10+) makes every acknowledged write durable, as the configurations Nexus generates do.
        let durable = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            store.display().to_string()
        );
        std::fs::write(&config, &durable).unwrap();
        let sync_always = Command::new(&bin)
            .args(["-t", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !sync_always {
            let plain = format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n}}\n",
                store.display().to_string()
            );
            std::fs::write(&config, plain).unwrap();
            super::report(
                "note: this nats-server does not know `sync_interval` (2.10+): JetStream runs with \
                 its default fsync interval, which survives kill -9 (the page cache stays) but not a power cut",
            );
        }
        let mut server = Self {
            bin,
            port,
            config,
            child: None,
            _dir: dir,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_port(self.port, "nats-server", Duration::from_secs(30));
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL, waits `down`, and starts it again on the same port and store.
    pub(crate) fn kill_and_restart(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.spawn();
    }

    /// Kills the server with SIGKILL, deletes its JetStream store (what a power cut does to
    /// writes it acknowledged but had not synced), and starts it again empty on the same port.
    pub(crate) fn kill_wipe_and_restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self._dir.path().join("jetstream"));
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private RabbitMQ node (its own node name, ports, database and log folders).
pub(crate) struct RabbitMq {
    script: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    dir: TempDir,
}

impl RabbitMq {
    /// Starts a node, or `None` (skipped) when `rabbitmq-server` is missing.
    pub(crate) fn start() -> Option<Self> {
        let script = require_binary(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .or_else(|| find_binary("rabbitmq-server", &["/usr/sbin"])),
            "rabbitmq-server",
        )?;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (port, dist) = (free_port(), free_port());
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        let env = vec![
            (
                "RABBITMQ_NODENAME".to_owned(),
                format!("nexus-fault-{}-{port}@localhost", std::process::id()),
            ),
            (
                "RABBITMQ_NODE_IP_ADDRESS".to_owned(),
                "127.0.0.1".to_owned(),
            ),
            ("RABBITMQ_NODE_PORT".to_owned(), port.to_string()),
            ("RABBITMQ_DIST_PORT".to_owned(), dist.to_string()),
            ("RABBITMQ_MNESIA_BASE".to_owned(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".to_owned(), path("log")),
            ("RABBITMQ_CONFIG_FILE".to_owned(), path("rabbitmq.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".to_owned(),
                path("enabled_plugins"),
            ),
            (
                "RABBITMQ_CONF_ENV_FILE".to_owned(),
                path("rabbitmq-env.conf"),
            ),
            ("RABBITMQ_PID_FILE".to_owned(), path("rabbitmq.pid")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE".to_owned(),
                path("advanced.config"),
            ),
        ];
        let mut node = Self {
            script,
            port,
            env,
            child: None,
            dir,
        };
        node.spawn();
        Some(node)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.out")).unwrap();
        let child = Command::new(&self.script)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        wait_port(self.port, "rabbitmq-server", Duration::from_secs(90));
    }

    /// The AMQP URL of the node.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the broker (SIGTERM: a clean broker shutdown), waits `down`, and starts it again
    /// on the same port and database.
    pub(crate) fn restart(&mut self, down: Duration) {
        self.stop(false);
        std::thread::sleep(down);
        self.spawn();
    }

    fn stop(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            let group = child.id();
            if !hard {
                // The Erlang VM shuts the broker down cleanly on SIGTERM; wait for the whole group.
                signal_group(group, "-TERM");
                let _ = wait_exit(&mut child, Duration::from_secs(30));
                let deadline = Instant::now() + Duration::from_secs(30);
                while signal_group(group, "-0") && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            signal_group(group, "-KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop(true);
    }
}
