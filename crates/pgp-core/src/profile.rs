//! Wall time per kind of op, for the CPU backend's profile (`pgp-wgpu bench unet --profile`).
//!
//! burn's CPU backend (flex) is eager and synchronous: an op has finished when it returns, so a
//! timer around it measures the op itself. On wgpu ops are queued, and a timer measures only
//! the recording, so the profile is refused there (see [`supported`]). Recording is per thread
//! (the thread that runs the network; the backend's own worker threads run inside the ops) and
//! off by default: a disabled scope costs one thread-local read. In the browser there is no
//! clock (`Instant` panics in wasm), so scopes only run their closure there.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use burn::tensor::Device;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TOTALS: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
}

/// The time spent under one key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// Summed wall time.
    pub time: Duration,
    /// How many scopes added to it.
    pub calls: u64,
}

/// The key the pipeline times each UNet call under (a scope around the ops' own scopes).
pub const UNET_CALL: &str = "pipeline: UNet call";

/// Whether timers around ops measure the ops on this device: burn's CPU backend (flex).
pub fn supported(device: &Device) -> bool {
    crate::device::is_cpu(device) && !cfg!(target_arch = "wasm32")
}

/// Starts (or stops) recording on this thread; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        TOTALS.with_borrow_mut(HashMap::clear);
    }
    ENABLED.set(on);
}

/// Runs `f`, adding its wall time under the key `key()` builds (only called when recording).
/// Scopes may nest; an enclosing scope's time includes its inner scopes', so sums over keys
/// are only meaningful over scopes that do not nest (the ops in [`crate::nn`] and
/// [`crate::attention`]).
#[inline]
pub fn scope<T>(key: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !ENABLED.get() {
        return f();
    }
    timed(key, f)
}

#[cfg(not(target_arch = "wasm32"))]
fn timed<T>(key: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    let time = start.elapsed();
    TOTALS.with_borrow_mut(|map| {
        let e = map.entry(key()).or_default();
        e.time += time;
        e.calls += 1;
    });
    out
}

#[cfg(target_arch = "wasm32")]
fn timed<T>(_key: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    f()
}

/// Stops recording on this thread and returns what was recorded, longest first.
pub fn take() -> Vec<(String, Entry)> {
    ENABLED.set(false);
    let mut v: Vec<_> = TOTALS.take().into_iter().collect();
    v.sort_by(|a, b| b.1.time.cmp(&a.1.time).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The kind of an op key: the text before its first space (`conv2d 3x3 …` → `conv2d 3x3`
/// when the second word is a kernel size).
pub fn kind(key: &str) -> &str {
    let mut words = key.splitn(3, ' ');
    let first = words.next().unwrap_or("");
    match words.next() {
        Some(second)
            if second.contains('x') && second.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            &key[..first.len() + 1 + second.len()]
        }
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_add_up_by_key_and_kinds_group_keys() {
        enable(true);
        for _ in 0..3 {
            scope(
                || "linear 4→8".into(),
                || std::thread::sleep(Duration::from_millis(1)),
            );
        }
        let v = scope(|| "conv2d 3x3 4→4 @8²".into(), || 7);
        assert_eq!(v, 7);
        let got = take();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "linear 4→8");
        assert_eq!(got[0].1.calls, 3);
        assert!(got[0].1.time >= Duration::from_millis(3));
        assert_eq!(kind(&got[1].0), "conv2d 3x3");
        assert_eq!(kind("linear 4→8"), "linear");
        assert_eq!(kind("attention 10h"), "attention");
        // Disabled: nothing is recorded.
        scope(|| "linear".into(), || ());
        assert!(take().is_empty());
    }
}
