//! How many connected peers hold each chunk, and how many of them are on our LAN: what
//! rarest-first ranks by, and what keeps a chunk a LAN peer holds off the site's WAN link.

/// Holder counts per chunk.
pub(super) struct Availability {
    all: Vec<u16>,
    on_lan: Vec<u16>,
}

impl Availability {
    pub(super) fn new(chunks: usize) -> Self {
        Availability { all: vec![0; chunks], on_lan: vec![0; chunks] }
    }

    /// A peer (beyond our LAN or not) now holds `chunk`.
    pub(super) fn add(&mut self, chunk: u32, beyond_lan: bool) {
        self.all[chunk as usize] += 1;
        if !beyond_lan {
            self.on_lan[chunk as usize] += 1;
        }
    }

    /// A peer that held `chunk` no longer does (or left).
    pub(super) fn remove(&mut self, chunk: u32, beyond_lan: bool) {
        self.all[chunk as usize] -= 1;
        if !beyond_lan {
            self.on_lan[chunk as usize] -= 1;
        }
    }

    /// Connected peers holding `chunk`.
    pub(super) fn holders(&self, chunk: u32) -> u16 {
        self.all[chunk as usize]
    }

    /// Connected peers on our LAN holding `chunk`.
    pub(super) fn lan_holders(&self, chunk: u32) -> u16 {
        self.on_lan[chunk as usize]
    }
}
