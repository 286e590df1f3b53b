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
}
