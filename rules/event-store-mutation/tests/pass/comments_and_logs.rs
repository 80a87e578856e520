//! Comments, log lines and error messages that mention SQL never reach a database.
// DELETE FROM events WHERE id = 1 -- this is a comment
/* UPDATE events SET payload = '{}' */
pub fn log(id: i64) -> String {
    tracing::info!("DELETE FROM events WHERE id = {}", id);
    println!("UPDATE events SET payload = $1");
    let message = "DELETE FROM events is never allowed";
    format!("refusing: {message}")
}

pub fn error() -> anyhow::Error {
    anyhow::anyhow!("TRUNCATE events was attempted")
}
