//! The list of registered losses, for `perplex losses` and for error messages.
//!
//! `typetag` registers how to deserialise each loss; this registry adds a one-line description.
//! Every loss crate (plugins too) submits one [`LossInfo`] per loss with [`inventory::submit!`].

/// A registered loss's name (its `type` in config) and one-line description.
#[derive(Debug, Clone, Copy)]
pub struct LossInfo {
    /// The `type` users write in `[loss]`.
    pub name: &'static str,
    /// One line: what it computes and its source.
    pub description: &'static str,
}

inventory::collect!(LossInfo);

/// Every registered loss, sorted by name.
pub fn registered_losses() -> Vec<LossInfo> {
    let mut v: Vec<LossInfo> = inventory::iter::<LossInfo>.into_iter().copied().collect();
    v.sort_by_key(|i| i.name);
    v.dedup_by_key(|i| i.name);
    v
}
