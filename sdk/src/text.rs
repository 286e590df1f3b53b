//! Text helpers for jobs over text input.

/// The words of `text`: maximal runs of letters (`char::is_alphabetic`, i.e.
/// Unicode's Alphabetic property), case kept as is.
///
/// ```
/// let words: Vec<&str> = wmr_sdk::text::words("It's a café, Ñandú!").collect();
/// assert_eq!(words, ["It", "s", "a", "café", "Ñandú"]);
/// ```
pub fn words(text: &str) -> Words<'_> {
    Words { rest: text }
}

/// Iterator returned by [`words`].
pub struct Words<'a> {
    rest: &'a str,
}

/// How `words` sees a byte: ASCII letter, other ASCII, or part of a
/// multi-byte character (decoded only then).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    Letter,
    Other,
    NonAscii,
}

const BYTE_CLASS: [ByteClass; 256] = {
    let mut table = [ByteClass::NonAscii; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = if (b as u8).is_ascii_alphabetic() { ByteClass::Letter } else { ByteClass::Other };
        b += 1;
    }
    table
};

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH_BITS: u64 = ONES * 0x80;

/// The high bit of each byte of `word` that is an ASCII letter. SWAR: with
/// the high bits cleared and case folded (`| 0x20`), adding `0x80 - c` sets a
/// byte's high bit exactly when the byte is at least `c`, and no byte
/// carries into the next.
fn ascii_letters(word: u64) -> u64 {
    let folded = (word & !HIGH_BITS) | (ONES * 0x20);
    let at_least_a = folded + ONES * (0x80 - u64::from(b'a'));
    let past_z = folded + ONES * (0x80 - u64::from(b'z') - 1);
    at_least_a & !past_z & !word & HIGH_BITS
}

/// Skip 8 bytes at a time from `from` while every byte is of the class being
/// skipped: ASCII non-letters when looking for a letter (`letters`), ASCII
/// letters when looking for a non-letter. Stops at or before the boundary.
fn skip_words(bytes: &[u8], mut from: usize, letters: bool) -> usize {
    while let Some(chunk) = bytes.get(from..).and_then(|b| b.first_chunk::<8>()) {
        let word = u64::from_le_bytes(*chunk);
        let letter = ascii_letters(word);
        let stop = if letters { letter | (word & HIGH_BITS) } else { !letter & HIGH_BITS };
        if stop != 0 {
            return from + (stop.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    from
}

impl<'a> Words<'a> {
    /// The character starting at byte `at` (a character boundary), and whether it is a letter.
    fn decode(&self, at: usize) -> Option<(bool, usize)> {
        let c = self.rest.get(at..)?.chars().next()?;
        Some((c.is_alphabetic(), c.len_utf8()))
    }

    /// The first byte at or after `from` that starts a letter (`letters`) or
    /// a non-letter (`!letters`), or the end.
    fn next_boundary(&self, mut from: usize, letters: bool) -> usize {
        let bytes = self.rest.as_bytes();
        let skip = if letters { ByteClass::Other } else { ByteClass::Letter };
        loop {
            from = skip_words(bytes, from, letters);
            while from < bytes.len() && BYTE_CLASS[bytes[from] as usize] == skip {
                from += 1;
            }
            match bytes.get(from).map(|&b| BYTE_CLASS[b as usize]) {
                None => return bytes.len(),
                Some(ByteClass::NonAscii) => match self.decode(from) {
                    Some((is_letter, _)) if is_letter == letters => return from,
                    Some((_, len)) => from += len,
                    None => return bytes.len(),
                },
                Some(_) => return from,
            }
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.next_boundary(0, true);
        if start == self.rest.len() {
            self.rest = "";
            return None;
        }
        let end = self.next_boundary(start, false);
        let rest = self.rest;
        self.rest = rest.get(end..).unwrap_or("");
        rest.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_split_on_every_non_letter() {
        let text = "  ab1cd--ÉTÉ  x\u{1F600}y  日本語 ";
        let got: Vec<&str> = words(text).collect();
        assert_eq!(got, ["ab", "cd", "ÉTÉ", "x", "y", "日本語"]);
        assert_eq!(words("").count(), 0);
        assert_eq!(words("!!").count(), 0);
        assert_eq!(words("z").collect::<Vec<_>>(), ["z"]);
    }

    /// Every byte value at every position of an 8-byte word is classed as
    /// a byte-at-a-time scan classes it.
    #[test]
    fn word_at_a_time_classes_every_byte() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut bytes = [b'.'; 8];
                bytes[pos] = b;
                let letters = super::ascii_letters(u64::from_le_bytes(bytes));
                for (i, &byte) in bytes.iter().enumerate() {
                    let flagged = letters & (0x80 << (8 * i)) != 0;
                    assert_eq!(flagged, byte.is_ascii_alphabetic(), "byte {byte:#x} at {i}");
                }
            }
        }
    }

    #[test]
    fn long_runs_split_like_char_by_char() {
        let text = "aaaaaaaaaaaaaaaaaaa;;;;;;;;;;;;;;;;;;;;;ZZZZZZZZZZZZZZ9999999999999999é£££££££££££££xyzxyzxyzxyzxyz";
        let expected: Vec<&str> = text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).collect();
        assert_eq!(words(text).collect::<Vec<_>>(), expected);
        for cut in 0..text.len() {
            if let Some(t) = text.get(cut..) {
                let expected: Vec<&str> = t.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).collect();
                assert_eq!(words(t).collect::<Vec<_>>(), expected, "from byte {cut}");
            }
        }
    }
}
