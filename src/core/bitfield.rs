//! A fixed-length set of chunk indices, one bit per chunk.
//!
//! The wire carries it as bytes, most significant bit first (chunk 0 is bit 7 of byte 0),
//! the BitTorrent convention; spare bits in the last byte must be zero so that two encodings
//! of the same set are equal.

/// A set of chunk indices in `0..len`, sized once at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

/// Why a received bitfield was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitfieldError {
    /// The byte length does not match the chunk count.
    WrongLength,
    /// A bit past the last chunk is set.
    SpareBitsSet,
}

impl Bitfield {
    /// An empty set for `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield { bytes: vec![0; Self::byte_len(len)], len, ones: 0 }
    }

    /// A full set for `len` chunks.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Bytes needed on the wire for `len` chunks.
    pub fn byte_len(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    /// Decodes a wire bitfield for `len` chunks, refusing wrong lengths and stray bits.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitfieldError> {
        let mut b = Self::new(len);
        b.copy_from_bytes(bytes)?;
        Ok(b)
    }

    /// Replaces the contents with a wire bitfield of the same length, without allocating.
    pub fn copy_from_bytes(&mut self, bytes: &[u8]) -> Result<(), BitfieldError> {
        if bytes.len() != self.bytes.len() {
            return Err(BitfieldError::WrongLength);
        }
        let spare = (self.bytes.len() * 8) as u32 - self.len;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[bytes.len() - 1] & mask != 0 {
                return Err(BitfieldError::SpareBitsSet);
            }
        }
        self.bytes.copy_from_slice(bytes);
        self.ones = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(())
    }

    /// The wire encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of chunks the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True if the set ranges over no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks in the set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True if every chunk is in the set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// True if chunk `i` is in the set; false for indices out of range.
    #[inline]
    pub fn get(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Adds chunk `i`; returns true if it was not there before. Out of range is ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Removes chunk `i`; returns true if it was there.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    /// Indices in the set, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear_and_count() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0) && b.set(9));
        assert!(!b.set(9), "setting twice reports no change");
        assert!(!b.set(10), "out of range is ignored");
        assert_eq!(b.count(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.clear(0));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![9]);
    }

    #[test]
    fn decode_refuses_wrong_length_and_spare_bits() {
        assert_eq!(Bitfield::from_bytes(10, &[0]), Err(BitfieldError::WrongLength));
        assert_eq!(Bitfield::from_bytes(10, &[0, 0x20]), Err(BitfieldError::SpareBitsSet));
        let b = Bitfield::from_bytes(10, &[0xff, 0xc0]).unwrap();
        assert!(b.is_full());
        assert_eq!(Bitfield::full(10), b);
    }
}
