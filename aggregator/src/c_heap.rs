//! The C heap: glibc's malloc, which the bundled SQLite allocates from (Rust
//! code allocates from mimalloc, or from glibc too when built without it).
//!
//! glibc gives each thread that allocates its own arena, up to eight per core,
//! and an arena keeps the memory freed into it. SQLite runs on one worker
//! thread per pooled connection, so after a flush every worker's arena held
//! that flush's statement and page memory for good: smaps showed the arenas
//! growing from 10 to 51 MiB with 10,000 agents. Two arenas are shared by all
//! threads instead; SQLite's work is serialised by its writer lock anyway.

/// Caps glibc malloc at two arenas. Call it first thing in `main`, before any
/// other thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: mallopt takes no pointers and only sets a malloc parameter; it
        // is called before other threads allocate.
        // It returns 0 only for a parameter glibc does not know; then the
        // default arenas stay, which is only more memory.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}
