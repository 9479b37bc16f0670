//! The Markdown subset messages may use, parsed into a small tree that the view turns into DOM
//! nodes. Nothing here produces HTML: every piece of user text ends up as a text node, so
//! `<script>` in a message is shown, never run.
//!
//! Blocks: paragraphs (line breaks kept), ```` ``` ```` code blocks and `>` quotes.
//! Inline: `*emphasis*` / `_emphasis_`, `**strong**`, `` `code` ``, `[text](url)` and bare
//! `http://` / `https://` links. A link whose target is not http or https (`javascript:`,
//! `data:` …) stays plain text.

/// A block of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Lines of text; each inner vector is one line.
    Paragraph(Vec<Vec<Inline>>),
    /// A fenced code block, shown as it is.
    Code(String),
    /// `> ` lines, parsed as blocks of their own.
    Quote(Vec<Block>),
}

/// A run of text within a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inline {
    Text(String),
    Emphasis(Vec<Inline>),
    Strong(Vec<Inline>),
    Code(String),
    /// Only http and https targets become links.
    Link {
        text: String,
        href: String,
    },
}

/// Parses a message body.
pub fn parse(body: &str) -> Vec<Block> {
    let lines: Vec<&str> = body.split('\n').collect();
    parse_lines(&lines, 0)
}

/// Quotes nest; beyond this depth `>` is text, so a hostile message cannot recurse deeply.
const MAX_QUOTE_DEPTH: usize = 4;

fn parse_lines(lines: &[&str], depth: usize) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut paragraph: Vec<Vec<Inline>> = Vec::new();
    let mut i = 0;
    let flush = |paragraph: &mut Vec<Vec<Inline>>, blocks: &mut Vec<Block>| {
        // Trailing empty lines of a paragraph are dropped; inner ones are kept.
        while paragraph.last().is_some_and(Vec::is_empty) {
            paragraph.pop();
        }
        if !paragraph.is_empty() {
            blocks.push(Block::Paragraph(std::mem::take(paragraph)));
        }
    };
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            flush(&mut paragraph, &mut blocks);
            let mut code = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                code.push(lines[i]);
                i += 1;
            }
            // An unclosed fence runs to the end of the message.
            i += 1;
            blocks.push(Block::Code(code.join("\n")));
            continue;
        }
        if depth < MAX_QUOTE_DEPTH && trimmed.starts_with('>') {
            flush(&mut paragraph, &mut blocks);
            let mut quoted = Vec::new();
            while i < lines.len() {
                let Some(rest) = lines[i].trim_start().strip_prefix('>') else {
                    break;
                };
                quoted.push(rest.strip_prefix(' ').unwrap_or(rest));
                i += 1;
            }
            blocks.push(Block::Quote(parse_lines(&quoted, depth + 1)));
            continue;
        }
        if line.trim().is_empty() && paragraph.is_empty() {
            i += 1;
            continue;
        }
        paragraph.push(parse_inline(line));
        i += 1;
    }
    flush(&mut paragraph, &mut blocks);
    blocks
}

/// Whether a link target may be followed: absolute http or https only.
pub fn is_safe_href(href: &str) -> bool {
    let lower = href.trim().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && !href.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Parses one line's inline markup.
pub fn parse_inline(text: &str) -> Vec<Inline> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    inline_into(&chars, &mut out, 0);
    merge_text(out)
}

const MAX_INLINE_DEPTH: usize = 4;

fn push_text(out: &mut Vec<Inline>, text: &str) {
    if let Some(Inline::Text(last)) = out.last_mut() {
        last.push_str(text);
    } else if !text.is_empty() {
        out.push(Inline::Text(text.to_owned()));
    }
}

fn merge_text(items: Vec<Inline>) -> Vec<Inline> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Inline::Text(text) => push_text(&mut out, &text),
            other => out.push(other),
        }
    }
    out
}

fn find(chars: &[char], from: usize, needle: &[char]) -> Option<usize> {
    (from..chars.len().saturating_sub(needle.len() - 1))
        .find(|&at| chars[at..].starts_with(needle) && at > from)
}

fn inline_into(chars: &[char], out: &mut Vec<Inline>, depth: usize) {
    let mut i = 0;
    let mut text = String::new();
    while i < chars.len() {
        let c = chars[i];
        // `code`: nothing inside is markup.
        if c == '`' {
            if let Some(end) = chars[i + 1..].iter().position(|&d| d == '`') {
                if end > 0 {
                    push_text(out, &std::mem::take(&mut text));
                    out.push(Inline::Code(chars[i + 1..i + 1 + end].iter().collect()));
                    i += end + 2;
                    continue;
                }
            }
        }
        // **strong**
        if depth < MAX_INLINE_DEPTH && c == '*' && chars.get(i + 1) == Some(&'*') {
            if let Some(end) = find(chars, i + 2, &['*', '*']) {
                if end > i + 2 {
                    push_text(out, &std::mem::take(&mut text));
                    let mut inner = Vec::new();
                    inline_into(&chars[i + 2..end], &mut inner, depth + 1);
                    out.push(Inline::Strong(merge_text(inner)));
                    i = end + 2;
                    continue;
                }
            }
        }
        // *emphasis* or _emphasis_, opening before a non-space, not inside a word for `_`.
        if depth < MAX_INLINE_DEPTH
            && (c == '*' || c == '_')
            && chars
                .get(i + 1)
                .is_some_and(|n| !n.is_whitespace() && *n != c)
            && (c == '*' || i == 0 || !chars[i - 1].is_alphanumeric())
        {
            if let Some(end) = find(chars, i + 1, &[c]) {
                let closes_word =
                    c == '*' || chars.get(end + 1).is_none_or(|n| !n.is_alphanumeric());
                if !chars[end - 1].is_whitespace() && closes_word {
                    push_text(out, &std::mem::take(&mut text));
                    let mut inner = Vec::new();
                    inline_into(&chars[i + 1..end], &mut inner, depth + 1);
                    out.push(Inline::Emphasis(merge_text(inner)));
                    i = end + 1;
                    continue;
                }
            }
        }
        // [text](url)
        if c == '[' {
            if let Some(close) = chars[i + 1..].iter().position(|&d| d == ']') {
                let close = i + 1 + close;
                if chars.get(close + 1) == Some(&'(') {
                    if let Some(paren) = chars[close + 2..].iter().position(|&d| d == ')') {
                        let paren = close + 2 + paren;
                        let label: String = chars[i + 1..close].iter().collect();
                        let href: String = chars[close + 2..paren].iter().collect();
                        if is_safe_href(&href) && !label.is_empty() {
                            push_text(out, &std::mem::take(&mut text));
                            out.push(Inline::Link { text: label, href });
                        } else {
                            // Not followable: shown exactly as typed.
                            text.extend(&chars[i..=paren]);
                        }
                        i = paren + 1;
                        continue;
                    }
                }
            }
        }
        // Bare http(s) links, starting a word.
        if (c == 'h' || c == 'H') && (i == 0 || !chars[i - 1].is_alphanumeric()) {
            let rest: String = chars[i..chars.len().min(i + 8)].iter().collect();
            let lower = rest.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                let mut end = i;
                while end < chars.len() && !chars[end].is_whitespace() && chars[end] != '<' {
                    end += 1;
                }
                // Punctuation ending a sentence is not part of the link.
                while end > i && matches!(chars[end - 1], '.' | ',' | ')' | '!' | '?' | ';' | ':') {
                    end -= 1;
                }
                let href: String = chars[i..end].iter().collect();
                if is_safe_href(&href) && href.len() > 8 {
                    push_text(out, &std::mem::take(&mut text));
                    out.push(Inline::Link {
                        text: href.clone(),
                        href,
                    });
                    i = end;
                    continue;
                }
            }
        }
        text.push(c);
        i += 1;
    }
    push_text(out, &text);
}

/// The plain text of a message, for notifications and the live region.
pub fn plain_text(body: &str) -> String {
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Inline {
        Inline::Text(s.into())
    }

    #[test]
    fn html_is_text() {
        let blocks = parse("<script>alert(1)</script> <b>hi</b>");
        assert_eq!(
            blocks,
            vec![Block::Paragraph(vec![vec![text(
                "<script>alert(1)</script> <b>hi</b>"
            )]])]
        );
    }

    #[test]
    fn emphasis_strong_and_code() {
        assert_eq!(
            parse_inline("a *b* **c** `d *e*` _f_"),
            vec![
                text("a "),
                Inline::Emphasis(vec![text("b")]),
                text(" "),
                Inline::Strong(vec![text("c")]),
                text(" "),
                Inline::Code("d *e*".into()),
                text(" "),
                Inline::Emphasis(vec![text("f")]),
            ]
        );
        // Not markup: lone stars, snake_case, 2 * 3 * 4.
        assert_eq!(
            parse_inline("snake_case_name"),
            vec![text("snake_case_name")]
        );
        assert_eq!(parse_inline("2 * 3 * 4"), vec![text("2 * 3 * 4")]);
        assert_eq!(parse_inline("*"), vec![text("*")]);
        assert_eq!(parse_inline("``"), vec![text("``")]);
    }

    #[test]
    fn only_http_links_are_links() {
        assert_eq!(
            parse_inline("see [docs](https://example.com/a?b=1) or http://x.org/p."),
            vec![
                text("see "),
                Inline::Link {
                    text: "docs".into(),
                    href: "https://example.com/a?b=1".into()
                },
                text(" or "),
                Inline::Link {
                    text: "http://x.org/p".into(),
                    href: "http://x.org/p".into()
                },
                text("."),
            ]
        );
        for hostile in [
            "[click](javascript:alert(1))",
            "[click](JaVaScRiPt:alert(1))",
            "[x](data:text/html,hi)",
            "javascript:alert(1)",
        ] {
            let parsed = parse_inline(hostile);
            assert!(
                parsed.iter().all(|i| matches!(i, Inline::Text(_))),
                "{hostile}: {parsed:?}"
            );
            let joined: String = parsed
                .iter()
                .map(|i| match i {
                    Inline::Text(t) => t.as_str(),
                    _ => "",
                })
                .collect();
            let joined = joined.to_ascii_lowercase();
            assert!(joined.contains("javascript:") || joined.contains("data:"));
        }
        assert!(!is_safe_href("https://a b"));
        assert!(is_safe_href("HTTPS://example.com"));
    }

    #[test]
    fn blocks_code_and_quotes() {
        let blocks = parse("hi\nthere\n\n```\nlet x = 1;\n<b>\n```\n> quoted *a*\n> more\nafter");
        assert_eq!(
            blocks,
            vec![
                Block::Paragraph(vec![vec![text("hi")], vec![text("there")]]),
                Block::Code("let x = 1;\n<b>".into()),
                Block::Quote(vec![Block::Paragraph(vec![
                    vec![text("quoted "), Inline::Emphasis(vec![text("a")])],
                    vec![text("more")],
                ])]),
                Block::Paragraph(vec![vec![text("after")]]),
            ]
        );
        // Deep quotes stop nesting.
        let deep = parse(&">".repeat(50));
        assert_eq!(deep.len(), 1);
        // Unclosed fences and odd input never panic.
        for odd in [
            "```", "**", "[", "[a](", "`", "_", "> ", "\n\n", "é*ü*", "**a*b**",
        ] {
            let _ = parse(odd);
        }
    }
}
