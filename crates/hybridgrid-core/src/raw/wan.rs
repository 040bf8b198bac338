//! `wan:` (at the top and per site): the raw words of the emulated WAN's conditions.

use marked_yaml::Node;

use super::{NumberOrWord, Reader, Sp, pos_of};
use crate::diag::Pos;

/// `wan: { latency, jitter, loss, bandwidth }` as written.
#[derive(Debug, Clone, Default)]
pub struct RawWan {
    pub pos: Pos,
    pub latency: Option<Sp<NumberOrWord>>,
    pub jitter: Option<Sp<NumberOrWord>>,
    pub loss: Option<Sp<NumberOrWord>>,
    pub bandwidth: Option<Sp<NumberOrWord>>,
}

impl Reader {
    pub(super) fn wan(&mut self, node: &Node, path: &str) -> RawWan {
        let mut w = RawWan {
            pos: pos_of(node),
            ..RawWan::default()
        };
        let Some(m) = self.map(node, path, &["latency", "jitter", "loss", "bandwidth"]) else {
            return w;
        };
        w.latency = self.number_or_word(&m, "latency");
        w.jitter = self.number_or_word(&m, "jitter");
        w.loss = self.number_or_word(&m, "loss");
        w.bandwidth = self.number_or_word(&m, "bandwidth");
        w
    }
}
