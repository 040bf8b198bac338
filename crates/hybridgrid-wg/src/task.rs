//! A spawned tokio task that ends with its owner.

/// Aborts the task when dropped: the daemon's helper tasks (UAPI accept loop, TUN writer, MTU
/// watch) must not outlive what they serve.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
