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

fn is_letter(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_alphabetic() } else { c.is_alphabetic() }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.rest.find(is_letter)?;
        let tail = &self.rest[start..];
        let len = tail.find(|c: char| !is_letter(c)).unwrap_or(tail.len());
        let (word, rest) = tail.split_at(len);
        self.rest = rest;
        Some(word)
    }
}
