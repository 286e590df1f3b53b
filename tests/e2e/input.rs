//! Text input edge cases: empty files, CRLF, long lines, invalid UTF-8.

use crate::harness::*;

#[test]
fn edge_case_files_count_exactly_once() {
    let t = TestDir::new();
    let long_line = "word ".repeat(5000);
    let files = [
        ("empty.txt", String::new()),
        ("no-newline.txt", "last line without newline".to_string()),
        ("crlf.txt", "Windows\r\nline endings\r\n".to_string()),
        ("long.txt", format!("short\n{long_line}\nend\n")),
    ];
    let mut texts = vec![];
    for (name, text) in &files {
        t.write(&format!("in/{name}"), text);
        texts.push(text.clone());
    }
    for i in 0..200 {
        let text = format!("tiny file {i}\n");
        t.write(&format!("in/tiny/t{i:03}.txt"), &text);
        texts.push(text);
    }
    let out = t.path("out");
    // Split size far below the long line: the line belongs to one split only.
    wmr_ok(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        t.path("in").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--split-size",
        "1KiB",
        "--reducers",
        "3",
    ]);
    assert_eq!(text_output(&out), as_lines(&reference_wordcount(&texts)));
}

#[test]
fn invalid_utf8_is_replaced_and_counted() {
    let t = TestDir::new();
    t.write("in/bad.txt", b"good words\nbad \xff\xfe bytes\n");
    let out = t.path("out");
    let o = wmr_ok(&[
        "run",
        "--job",
        guest("wordcount").to_str().unwrap(),
        "--input",
        t.path("in").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "text",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["counters"]["input.invalid_utf8_lines"], 1);
    assert_eq!(text_output(&out), ["bad 1", "bytes 1", "good 1", "words 1"]);
}
