//! Background checkpoints of SQLite's write-ahead log, shared by the embedded event store and
//! the SQLite read models.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that commit
//! copies the log back into the database file and syncs it, a stall of several milliseconds
//! now and then. With `wal_autocheckpoint = 0` on the committing connection, a
//! [`WalCheckpointer`] does the copy on a thread of its own, with its own connection, so commits
//! never wait for it. Durability is unchanged: commits are in the log, and a checkpoint syncs
//! the log before it overwrites pages of the database and the database after.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::Connection;

/// Commits between two checkpoints (SQLite's own default, 1000 log pages, is about this many
/// small commits).
const CHECKPOINT_EVERY: u32 = 128;

/// Checkpoints one SQLite file's log in the background. The thread starts on the first
/// checkpoint and ends, its connection closed, when the checkpointer is dropped.
pub(crate) struct WalCheckpointer {
    path: PathBuf,
    commits: u32,
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalCheckpointer {
    /// A checkpointer for the database at `path`.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            commits: 0,
            wake: None,
            thread: None,
        }
    }

    /// Counts a commit; every [`CHECKPOINT_EVERY`] commits, asks for a checkpoint.
    pub(crate) fn committed(&mut self) {
        self.commits += 1;
        if self.commits < CHECKPOINT_EVERY {
            return;
        }
        self.commits = 0;
        if let Some(wake) = &self.wake {
            match wake.try_send(()) {
                Ok(()) | Err(mpsc::TrySendError::Full(())) => return,
                Err(mpsc::TrySendError::Disconnected(())) => self.wake = None,
            }
        }
        let (wake, woken) = mpsc::sync_channel(1);
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("nexus-wal-checkpoint".into())
            .spawn(move || checkpoint_loop(&path, &woken));
        match spawned {
            Ok(thread) => {
                let _ = wake.try_send(());
                self.wake = Some(wake);
                self.thread = Some(thread);
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot start the checkpoint thread");
            }
        }
    }
}

impl Drop for WalCheckpointer {
    /// Stops the thread and waits for it to close its connection, so that nothing holds the
    /// file open any more (a rebuild may delete it).
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies the log into the database file each time it is woken, until the sender is dropped.
fn checkpoint_loop(path: &Path, woken: &mpsc::Receiver<()>) {
    let conn = Connection::open(path).and_then(|conn| {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // NORMAL is enough for a connection that only checkpoints: a checkpoint syncs the log
        // before it overwrites pages of the database, and the database after.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    });
    let conn = match conn {
        Ok(conn) => conn,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot open the database to checkpoint it");
            return;
        }
    };
    while woken.recv().is_ok() {
        // PASSIVE: copies what no reader still needs and never waits for readers or writers.
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(path = %path.display(), error = %err, "checkpoint failed");
        }
    }
}
