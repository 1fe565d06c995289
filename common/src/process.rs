//! What the binaries' `main` functions share: printing an error with its causes,
//! and turning SIGINT or SIGTERM into a shutdown signal.

/// `error: cause: cause ...` on one line, for messages to a person.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM, then calls `stop` once.
pub async fn on_termination(stop: impl FnOnce()) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("Stopping.");
    stop();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::tls::TlsError::Read {
            path: "/x.pem".into(),
            source: inner,
        };
        assert_eq!(error_chain(&outer), "cannot read /x.pem: disk on fire");
    }
}
