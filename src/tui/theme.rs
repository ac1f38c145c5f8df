//! Colours: RGB where the terminal says it has true colour (`COLORTERM`), the nearest of
//! the 256-colour palette otherwise, none at all under `NO_COLOR` (selection and emphasis
//! then use reverse video and bold). The terminal's own background is always kept.

use ratatui::style::{Color, Modifier, Style};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    TrueColor,
    Palette256,
    NoColor,
}

impl ColorMode {
    /// From the environment: `NO_COLOR` (any value) wins, then `COLORTERM`.
    pub fn detect() -> ColorMode {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return ColorMode::NoColor;
        }
        match std::env::var("COLORTERM").as_deref() {
            Ok("truecolor") | Ok("24bit") => ColorMode::TrueColor,
            _ => ColorMode::Palette256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Theme {
    pub mode: ColorMode,
    accent: (u8, u8, u8),
    ok: (u8, u8, u8),
    warn: (u8, u8, u8),
    error: (u8, u8, u8),
    dim: (u8, u8, u8),
    selection: (u8, u8, u8),
}

/// The nearest xterm-256 colour: the 6x6x6 cube or the grey ramp, whichever is closer.
pub fn to_ansi256(r: u8, g: u8, b: u8) -> u8 {
    let level = |v: u8| -> u8 {
        if v < 48 {
            0
        } else if v < 115 {
            1
        } else {
            (v - 35) / 40
        }
    };
    let (lr, lg, lb) = (level(r), level(g), level(b));
    let cube_val = |l: u8| if l == 0 { 0 } else { 55 + 40 * l as i32 };
    let cube = 16 + 36 * lr + 6 * lg + lb;
    let dist = |a: (i32, i32, i32)| {
        (a.0 - r as i32).pow(2) + (a.1 - g as i32).pow(2) + (a.2 - b as i32).pow(2)
    };
    let cube_d = dist((cube_val(lr), cube_val(lg), cube_val(lb)));
    let avg = (r as i32 + g as i32 + b as i32) / 3;
    let grey_i = ((avg - 8).max(0) / 10).min(23);
    let grey_v = 8 + 10 * grey_i;
    let grey_d = dist((grey_v, grey_v, grey_v));
    if grey_d < cube_d {
        232 + grey_i as u8
    } else {
        cube
    }
}

pub fn parse_hex(s: &str) -> Result<(u8, u8, u8), String> {
    let h = s.trim().trim_start_matches('#');
    if h.len() != 6 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not a #rrggbb colour"));
    }
    let p = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| e.to_string());
    Ok((p(0)?, p(2)?, p(4)?))
}

impl Theme {
    pub fn new(mode: ColorMode, overrides: &BTreeMap<String, String>) -> Result<Theme, String> {
        let mut t = Theme {
            mode,
            accent: (0x5f, 0xaf, 0xff),
            ok: (0x5f, 0xd7, 0x87),
            warn: (0xff, 0xd7, 0x5f),
            error: (0xff, 0x5f, 0x5f),
            dim: (0x8a, 0x8a, 0x8a),
            selection: (0x30, 0x40, 0x60),
        };
        for (k, v) in overrides {
            let c = parse_hex(v).map_err(|e| format!("[tui.theme] {k}: {e}"))?;
            match k.as_str() {
                "accent" => t.accent = c,
                "ok" => t.ok = c,
                "warn" => t.warn = c,
                "error" => t.error = c,
                "dim" => t.dim = c,
                "selection" => t.selection = c,
                _ => {
                    return Err(format!(
                        "unknown colour `{k}` in [tui.theme] (accent, ok, warn, error, dim, selection)"
                    ));
                }
            }
        }
        Ok(t)
    }

    fn color(&self, (r, g, b): (u8, u8, u8)) -> Color {
        match self.mode {
            ColorMode::TrueColor => Color::Rgb(r, g, b),
            ColorMode::Palette256 => Color::Indexed(to_ansi256(r, g, b)),
            ColorMode::NoColor => Color::Reset,
        }
    }

    fn fg(&self, c: (u8, u8, u8)) -> Style {
        if self.mode == ColorMode::NoColor {
            Style::default()
        } else {
            Style::default().fg(self.color(c))
        }
    }

    pub fn accent(&self) -> Style {
        self.fg(self.accent).add_modifier(Modifier::BOLD)
    }
    pub fn ok(&self) -> Style {
        self.fg(self.ok)
    }
    pub fn warn(&self) -> Style {
        self.fg(self.warn)
    }
    pub fn error(&self) -> Style {
        self.fg(self.error).add_modifier(Modifier::BOLD)
    }
    pub fn dim(&self) -> Style {
        if self.mode == ColorMode::NoColor {
            Style::default().add_modifier(Modifier::DIM)
        } else {
            self.fg(self.dim)
        }
    }
    pub fn selected(&self) -> Style {
        if self.mode == ColorMode::NoColor {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
                .bg(self.color(self.selection))
                .add_modifier(Modifier::BOLD)
        }
    }
    pub fn header(&self) -> Style {
        self.dim().add_modifier(Modifier::BOLD)
    }
    /// Chart series colours, cycling.
    pub fn series(&self, i: usize) -> Style {
        let palette = [self.accent, self.ok, self.warn, (0xd7, 0x87, 0xff)];
        self.fg(palette[i % palette.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_fallback_is_close() {
        assert_eq!(to_ansi256(0, 0, 0), 16);
        assert_eq!(to_ansi256(255, 255, 255), 231);
        assert_eq!(to_ansi256(0x80, 0x80, 0x80), 244);
        assert_eq!(to_ansi256(0xff, 0x5f, 0x5f), 203);
    }

    #[test]
    fn no_color_uses_no_colour() {
        let t = Theme::new(ColorMode::NoColor, &BTreeMap::new()).unwrap();
        assert_eq!(t.accent().fg, None);
        assert!(t.selected().add_modifier.contains(Modifier::REVERSED));
        let mut bad = BTreeMap::new();
        bad.insert("accent".to_string(), "blue".to_string());
        assert!(Theme::new(ColorMode::TrueColor, &bad).is_err());
    }
}
