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

/// [`sanitize_line`] appended to `out` (no allocation of its own for valid UTF-8).
///
/// Runs of text a terminal shows as is are copied whole; only around a control byte, an
/// escape or a C1 control does it go char by char.
pub fn sanitize_into(bytes: &[u8], out: &mut String) {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => sanitize_str(text, out),
        Err(_) => sanitize_str(&String::from_utf8_lossy(bytes), out),
    }
}

/// Whether a byte of UTF-8 text may start something that is not shown as is: a C0
/// control, DEL, or 0xC2 (the lead byte of the C1 controls U+0080..U+009F).
#[inline]
fn special(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == 0xc2
}

/// The position of the first byte of `bytes` for which `hit` holds. Whole blocks are
/// tested at a time (with `hit` inlined the test compiles to vector instructions), then
/// the block that has one byte by byte.
#[inline]
pub(crate) fn first_where(bytes: &[u8], hit: impl Fn(u8) -> bool) -> Option<usize> {
    const BLOCK: usize = 32;
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut at = 0;
    for block in blocks.by_ref() {
        let mut any = false;
        for &b in block {
            any |= hit(b);
        }
        if any {
            break;
        }
        at += BLOCK;
    }
    bytes[at..].iter().position(|&b| hit(b)).map(|p| at + p)
}

fn sanitize_str(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut cur = Cursor { s: text, pos: 0 };
    while cur.pos < bytes.len() {
        // Every special byte is ASCII or a lead byte: the run ends on a char boundary.
        let run = first_where(&bytes[cur.pos..], special).unwrap_or(bytes.len() - cur.pos);
        out.push_str(&text[cur.pos..cur.pos + run]);
        cur.pos += run;
        let Some(c) = cur.next() else { break };
        match c {
            '\u{1b}' => skip_escape(&mut cur),
            // 8-bit CSI / OSC / DCS etc.: treat like their ESC forms.
            '\u{9b}' => skip_csi(&mut cur),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut cur),
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

/// Chars of a text read one at a time, by byte position.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
}

fn skip_escape(chars: &mut Cursor<'_>) {
    match chars.next() {
        Some('[') => skip_csi(chars),
        Some(']') | Some('P') | Some('X') | Some('^') | Some('_') => skip_string(chars),
        // ESC followed by intermediates (0x20-0x2f) then a final byte, e.g. ESC ( B.
        Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
            while let Some(n) = chars.peek() {
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
fn skip_csi(chars: &mut Cursor<'_>) {
    while let Some(c) = chars.next() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            return;
        }
        if !('\u{20}'..='\u{3f}').contains(&c) {
            return;
        }
    }
}

/// OSC/DCS/PM/APC strings end with BEL or ST (ESC \ or 0x9c).
fn skip_string(chars: &mut Cursor<'_>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if chars.peek() == Some('\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// The char-by-char sanitizer this one replaced (runs copied whole): the reference.
    fn reference(bytes: &[u8]) -> String {
        type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;
        fn csi(chars: &mut Chars<'_>) {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) || !('\u{20}'..='\u{3f}').contains(&c) {
                    return;
                }
            }
        }
        fn string(chars: &mut Chars<'_>) {
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
        let text = String::from_utf8_lossy(bytes);
        let mut out = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{1b}' => match chars.next() {
                    Some('[') => csi(&mut chars),
                    Some(']') | Some('P') | Some('X') | Some('^') | Some('_') => string(&mut chars),
                    Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
                        while let Some(&n) = chars.peek() {
                            chars.next();
                            if !('\u{20}'..='\u{2f}').contains(&n) {
                                break;
                            }
                        }
                    }
                    _ => {}
                },
                '\u{9b}' => csi(&mut chars),
                '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => string(&mut chars),
                '\t' => out.push_str("    "),
                c if c.is_control() => {}
                c => out.push(c),
            }
        }
        out
    }

    /// Random bytes rich in escapes, controls, C1 controls (as UTF-8 and raw) and
    /// invalid UTF-8.
    pub(crate) fn nasty_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for _ in 0..len {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let r = *seed;
            match r % 16 {
                0 => buf.push(0x1b),
                1 => buf.push(b"[]P\\(_^X"[(r >> 8) as usize % 8]),
                2 => buf.push((r >> 8) as u8),
                3 => buf.extend_from_slice(&[0xc2, 0x80 + (r >> 8) as u8 % 0x30]),
                4 => buf.push(b"\t\r\n\x07\x7f "[(r >> 8) as usize % 6]),
                5 => buf.extend_from_slice("█é".as_bytes()),
                6 => buf.push(0x30 + (r >> 8) as u8 % 0x50),
                _ => buf.push(b'a' + (r % 26) as u8),
            }
        }
        buf
    }

    #[test]
    fn runs_copied_whole_sanitize_as_char_by_char() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for n in 0..20_000 {
            let buf = nasty_bytes(&mut seed, n % 80);
            assert_eq!(sanitize_line(&buf), reference(&buf), "{buf:?}");
        }
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
