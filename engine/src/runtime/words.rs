//! The `count-words` host import: the words of a guest's text, counted at
//! native speed, for SDKs whose languages are slow at it (Python's and
//! JavaScript's `emit.words`). A word is what every SDK's `words` helper
//! finds: a maximal run of Unicode letters (`char::is_alphabetic`), case kept.

use std::collections::HashMap;

/// The longest text one call counts; the SDKs send at most 12 MiB. The
/// call's own memory is a few times that at most (the words' table, and
/// the words and counts returned, when most words are distinct).
pub(crate) const MAX_COUNT_WORDS_BYTES: usize = 16 << 20;

/// Each distinct word of `text`, each followed by a newline, and how many
/// times each occurs, in the same order (which is no particular one); an
/// error naming the limit for a text over [`MAX_COUNT_WORDS_BYTES`].
pub(crate) fn count_words(text: &str) -> Result<(String, Vec<u32>), String> {
    if text.len() > MAX_COUNT_WORDS_BYTES {
        return Err(format!(
            "count-words was given {} bytes of text; one call counts at most {} MiB (send the text in parts)",
            text.len(),
            MAX_COUNT_WORDS_BYTES >> 20
        ));
    }
    let mut counts: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
    for_each_word(text, |word| {
        // At most one word per two bytes, so a count fits in u32.
        *counts.entry(word).or_insert(0) += 1;
    });
    let mut words = String::with_capacity(counts.keys().map(|w| w.len() + 1).sum());
    let mut times = Vec::with_capacity(counts.len());
    for (word, n) in counts {
        words.push_str(word);
        words.push('\n');
        times.push(n);
    }
    Ok((words, times))
}

/// Call `f` with every word of `text`, in order. ASCII is classed a byte at
/// a time; other characters are decoded where they start.
fn for_each_word<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let bytes = text.as_bytes();
    let mut start: Option<usize> = None;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        let (letter, len) = if b.is_ascii() {
            (b.is_ascii_alphabetic(), 1)
        } else {
            match text.get(at..).and_then(|rest| rest.chars().next()) {
                Some(c) => (c.is_alphabetic(), c.len_utf8()),
                // Not at a character boundary: cannot happen for a `str`.
                None => break,
            }
        };
        match (letter, start) {
            (true, None) => start = Some(at),
            (false, Some(s)) => {
                if let Some(word) = text.get(s..at) {
                    f(word);
                }
                start = None;
            }
            _ => {}
        }
        at += len;
    }
    if let Some(word) = start.and_then(|s| text.get(s..)) {
        f(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for_each_word(text, |w| out.push(w));
        out
    }

    #[test]
    fn words_are_runs_of_letters_as_in_the_sdks() {
        assert_eq!(words("It's a café, Ñandú!"), ["It", "s", "a", "café", "Ñandú"]);
        assert_eq!(
            words("  ab1cd--ÉTÉ  x\u{1F600}y  日本語 "),
            ["ab", "cd", "ÉTÉ", "x", "y", "日本語"]
        );
        assert_eq!(words("z"), ["z"]);
        assert!(words("").is_empty() && words("!! 12 _").is_empty());
        // The virama is not Alphabetic; the vowel sign after it is.
        assert_eq!(words("हिन्दी"), ["हिन", "दी"]);
    }

    #[test]
    fn counts_each_distinct_word_and_refuses_too_much_text() {
        let (words, times) = count_words("a b a\nb, a. c").unwrap();
        assert!(words.ends_with('\n'));
        let mut counts: Vec<(String, u32)> = words.lines().map(str::to_string).zip(times).collect();
        counts.sort();
        assert_eq!(
            counts,
            [("a".to_string(), 3), ("b".to_string(), 2), ("c".to_string(), 1)]
        );
        let long = "a ".repeat(MAX_COUNT_WORDS_BYTES / 2 + 1);
        assert!(count_words(&long).unwrap_err().contains("at most 16 MiB"));
    }
}
