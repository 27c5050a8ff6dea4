//! The guest memory cap: the container's memory limit applied to the guest's linear
//! memories (all of them together, as a component can have several), so a hungry guest
//! is stopped by the runner with an OOM-style exit rather than by the kernel's OOM killer
//! half-way through a host call.

use wasmtime::ResourceLimiter;

#[derive(Debug, Default)]
pub struct GuestMemoryLimit {
    limit: Option<u64>,
    /// Bytes granted to linear memories so far.
    granted: u64,
    /// The growth granted last, taken back if the grow then fails.
    last_grant: u64,
    /// Set when a growth was refused: (current total, requested total).
    exceeded: Option<(u64, u64)>,
}

impl GuestMemoryLimit {
    pub fn new(limit: Option<u64>) -> Self {
        GuestMemoryLimit {
            limit,
            ..Default::default()
        }
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn exceeded(&self) -> Option<(u64, u64)> {
        self.exceeded
    }
}

impl ResourceLimiter for GuestMemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let wanted = self.granted.saturating_add(growth);
        if let Some(limit) = self.limit
            && wanted > limit
        {
            self.exceeded = Some((self.granted, wanted));
            // An error (not `Ok(false)`) so the guest cannot shrug it off: the limit is the
            // container's memory limit, and exceeding it ends the container.
            return Err(wasmtime::format_err!(
                "guest memory limit of {limit} bytes exceeded"
            ));
        }
        self.granted = wanted;
        self.last_grant = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.granted -= std::mem::take(&mut self.last_grant);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
