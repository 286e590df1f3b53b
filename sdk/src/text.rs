//! Text helpers for jobs over text input.

/// The words of `text`: maximal runs of letters (`char::is_alphabetic`, i.e.
/// Unicode's Alphabetic property), case kept as is.
///
/// ```
/// let words: Vec<&str> = wmr_sdk::text::words("It's a café, Ñandú!").collect();
/// assert_eq!(words, ["It", "s", "a", "café", "Ñandú"]);
/// ```
pub fn words(text: &str) -> Words<'_> {
    Words { text, at: 0 }
}

/// Iterator returned by [`words`].
pub struct Words<'a> {
    text: &'a str,
    /// Where the next word is looked for.
    at: usize,
}

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

/// The 8 bytes at `at` as a little-endian word, zero-padded past the end.
#[inline(always)]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..).and_then(|b| b.first_chunk::<8>()) {
        Some(chunk) => u64::from_le_bytes(*chunk),
        None => bytes
            .get(at..)
            .unwrap_or(&[])
            .iter()
            .rev()
            .fold(0, |w, &b| (w << 8) | u64::from(b)),
    }
}

impl Words<'_> {
    /// The first byte at or after `at` that starts a letter (`letters`) or
    /// a non-letter (`!letters`), or the end. ASCII is classed 8 bytes at a
    /// time; a character outside ASCII is decoded when met.
    #[inline(always)]
    fn boundary(&self, mut at: usize, letters: bool) -> usize {
        let bytes = self.text.as_bytes();
        while at < bytes.len() {
            let word = word_at(bytes, at);
            let letter = ascii_letters(word);
            // Bytes that might end the run: non-ASCII ones always.
            let stop = if letters {
                letter | (word & HIGH_BITS)
            } else {
                !letter & HIGH_BITS
            };
            if stop == 0 {
                // Eight ASCII bytes (or the zero padding past the end).
                at += 8;
                continue;
            }
            let hit = at + (stop.trailing_zeros() / 8) as usize;
            match bytes.get(hit) {
                None => break,
                Some(b) if b.is_ascii() => return hit,
                Some(_) => match self.text.get(hit..).and_then(|s| s.chars().next()) {
                    Some(c) if c.is_alphabetic() == letters => return hit,
                    Some(c) => at = hit + c.len_utf8(),
                    None => break,
                },
            }
        }
        bytes.len()
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let start = self.boundary(self.at, true);
        let end = self.boundary(start, false);
        self.at = end;
        self.text.get(start..end).filter(|w| !w.is_empty())
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
        let text =
            "aaaaaaaaaaaaaaaaaaa;;;;;;;;;;;;;;;;;;;;;ZZZZZZZZZZZZZZ9999999999999999é£££££££££££££xyzxyzxyzxyzxyz";
        let expected: Vec<&str> = text
            .split(|c: char| !c.is_alphabetic())
            .filter(|w| !w.is_empty())
            .collect();
        assert_eq!(words(text).collect::<Vec<_>>(), expected);
        for cut in 0..text.len() {
            if let Some(t) = text.get(cut..) {
                let expected: Vec<&str> = t
                    .split(|c: char| !c.is_alphabetic())
                    .filter(|w| !w.is_empty())
                    .collect();
                assert_eq!(words(t).collect::<Vec<_>>(), expected, "from byte {cut}");
            }
        }
    }

    /// Texts of every length up to 300 bytes, of letters and not, one byte
    /// to four long, split as a char-by-char scan splits them: words and
    /// characters cross every 8-byte boundary.
    #[test]
    fn words_of_mixed_texts_split_like_char_by_char() {
        let pieces = [
            "a",
            "Zq",
            " ",
            "1",
            "é",
            "-",
            "日本",
            "\u{1F600}",
            "xy",
            "\u{10400}",
            ",",
            "ÉTÉ",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..300 {
            for _ in 0..8 {
                let mut text = String::new();
                while text.len() < len {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    text.push_str(pieces[(state % pieces.len() as u64) as usize]);
                }
                let expected: Vec<&str> = text
                    .split(|c: char| !c.is_alphabetic())
                    .filter(|w| !w.is_empty())
                    .collect();
                assert_eq!(words(&text).collect::<Vec<_>>(), expected, "{text:?}");
            }
        }
    }

    /// The ranges of `char::is_alphabetic`, as `(first, last)` pairs.
    fn alphabetic_ranges() -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for c in (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_alphabetic())
        {
            let c = c as u32;
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == c => *last = c,
                _ => ranges.push((c, c)),
            }
        }
        ranges
    }

    /// A regular-expression class of the ranges, each char written by `escape`.
    fn class(escape: impl Fn(u32) -> String) -> String {
        let mut out = String::from("[");
        for (first, last) in alphabetic_ranges() {
            out.push_str(&escape(first));
            if last != first {
                out.push('-');
                out.push_str(&escape(last));
            }
        }
        out.push(']');
        out
    }

    /// Checks (or with `WMR_BLESS=1` writes) a generated file of `sdk/`.
    fn generated(path: &str, contents: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if std::env::var_os("WMR_BLESS").is_some() {
            std::fs::write(&path, contents).unwrap();
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == contents,
            "{} is not what Rust's char::is_alphabetic makes it; regenerate it with \
             `WMR_BLESS=1 cargo test --manifest-path sdk/Cargo.toml`",
            path.display()
        );
    }

    /// The Python and JavaScript SDKs' `words` use Rust's own alphabet, so
    /// a job splits text the same way in every language.
    #[test]
    fn the_other_sdks_share_this_alphabet() {
        let ascii = |c: u32| char::from_u32(c).filter(char::is_ascii_alphanumeric).map(String::from);
        let python = class(|c| {
            ascii(c).unwrap_or_else(|| {
                if c > 0xFFFF {
                    format!("\\U{c:08x}")
                } else {
                    format!("\\u{c:04x}")
                }
            })
        });
        generated(
            "python/wmr/_alphabet.py",
            &format!(
                "# Generated by `WMR_BLESS=1 cargo test --manifest-path sdk/Cargo.toml`: the\n\
                 # characters Rust's char::is_alphabetic accepts (Unicode's Alphabetic\n\
                 # property), as a regular-expression class. Do not edit.\n\
                 ALPHABETIC = \"{python}\"\n"
            ),
        );
        let js = class(|c| ascii(c).unwrap_or_else(|| format!("\\u{{{c:x}}}")));
        generated(
            "js/alphabet.js",
            &format!(
                "// Generated by `WMR_BLESS=1 cargo test --manifest-path sdk/Cargo.toml`: the\n\
                 // characters Rust's char::is_alphabetic accepts (Unicode's Alphabetic\n\
                 // property), as a regular-expression class. Do not edit.\n\
                 export const ALPHABETIC = \"{js}\";\n"
            ),
        );
    }
}
