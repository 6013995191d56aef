//! One log buffer for a whole test binary (see [`global_logs`]).
#![allow(dead_code)]

/// Every log event of this test binary, from DEBUG up, in one buffer. A global subscriber
/// rather than a per-thread one: tracing caches a callsite's interest, and a callsite first hit
/// by a test thread without a subscriber can be missed by another test's thread-local one.
/// Tests find their own lines by something unique to them (their relay's port).
pub fn global_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || W(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

pub fn log_lines(containing: &str) -> Vec<String> {
    String::from_utf8_lossy(&global_logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(containing))
        .map(str::to_string)
        .collect()
}
