//! Remote text is untrusted: strip terminal control sequences before anything displays it.
//!
//! Removes ANSI/VT escape sequences (CSI, OSC, DCS/PM/APC strings, two-byte ESC forms),
//! C0 controls other than tab, DEL and C1 controls. Invalid UTF-8 becomes U+FFFD.

/// A line made safe for a terminal. Tabs become spaces so column math stays simple.
pub fn sanitize_line(bytes: &[u8]) -> String {
    let mut out = String::new();
    sanitize_into(bytes, &mut out);
    out
}

/// Whether `bytes` is text a terminal shows as is: valid UTF-8 with no C0 control
/// (tab included: it is expanded), no DEL and no C1 control (U+0080..U+009F).
fn plain_text(bytes: &[u8]) -> Option<&str> {
    // Simple byte tests first (they run many bytes a cycle), the UTF-8 check after.
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    // C1 controls are U+0080..U+009F, encoded 0xC2 0x80..0x9F.
    if bytes.contains(&0xc2) && text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return None;
    }
    Some(text)
}

/// [`sanitize_line`] appended to `out` (no allocation of its own for plain text).
pub fn sanitize_into(bytes: &[u8], out: &mut String) {
    if let Some(t) = plain_text(bytes) {
        out.push_str(t);
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    out.reserve(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            // 8-bit CSI / OSC / DCS etc.: treat like their ESC forms.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_escape(chars: &mut Chars<'_>) {
    match chars.next() {
        Some('[') => skip_csi(chars),
        Some(']') | Some('P') | Some('X') | Some('^') | Some('_') => skip_string(chars),
        // ESC followed by intermediates (0x20-0x2f) then a final byte, e.g. ESC ( B.
        Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
            while let Some(&n) = chars.peek() {
                chars.next();
                if !('\u{20}'..='\u{2f}').contains(&n) {
                    break;
                }
            }
        }
        _ => {}
    }
}

/// CSI: parameters and intermediates (0x20-0x3f), then one final byte (0x40-0x7e).
fn skip_csi(chars: &mut Chars<'_>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            return;
        }
        if !('\u{20}'..='\u{3f}').contains(&c) {
            return;
        }
    }
}

/// OSC/DCS/PM/APC strings end with BEL or ST (ESC \ or 0x9c).
fn skip_string(chars: &mut Chars<'_>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours_titles_and_controls() {
        assert_eq!(sanitize_line(b"\x1b[31mred\x1b[0m ok"), "red ok");
        assert_eq!(sanitize_line(b"\x1b]0;evil title\x07after"), "after");
        assert_eq!(
            sanitize_line(b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"),
            "link"
        );
        assert_eq!(sanitize_line(b"a\x08b\x00c\x7fd"), "abcd");
        assert_eq!(sanitize_line(b"\x1bPq#0;2;0;0;0\x1b\\x"), "x");
        assert_eq!(sanitize_line("\u{9b}2Jz".as_bytes()), "z");
        assert_eq!(sanitize_line(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
        assert_eq!(sanitize_line(b"a\tb"), "a    b");
        // The plain-text fast path leaves C1 controls to the slow one.
        assert_eq!(
            sanitize_line("ok \u{85}x \u{a0}y █".as_bytes()),
            "ok x \u{a0}y █"
        );
        assert_eq!(sanitize_line("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn no_escape_survives_any_input() {
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(match seed % 5 {
                    0 => 0x1b,
                    1 => b'[',
                    2 => (seed >> 8) as u8,
                    _ => b'a' + (seed % 26) as u8,
                });
            }
            let s = sanitize_line(&buf);
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        }
    }
}
