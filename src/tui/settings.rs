//! The cockpit's own settings, checked where the cockpit lives (the config module knows no
//! cockpit type): every key binding known, no key doing two things in one pane, colours
//! valid; each error located in the user config as `file:line:col`.

use super::keymap::Keymap;
use super::theme::{ColorMode, Theme};
use crate::config::{ConfigError, TuiConfig, UserConfig};
use std::collections::BTreeMap;
use std::path::Path;

pub fn check(cfg: &UserConfig, path: &Path) -> Result<(), ConfigError> {
    let t = &cfg.tui;
    if t.keys.is_empty() && t.theme.is_empty() {
        return Ok(());
    }
    let text = crate::config::read_file(path)?;
    let keys_at =
        |name: &str, message: String| ConfigError::at(path, &text, Some("tui.keys"), name, message);
    for (name, keys) in &t.keys {
        let mut one = TuiConfig::default();
        one.keys.insert(name.clone(), keys.clone());
        Keymap::from_config(&one).map_err(|e| keys_at(name, e))?;
    }
    let km = Keymap::from_config(t).map_err(|e| keys_at("", e))?;
    // Defaults never conflict among themselves: a conflict has a binding of the user's.
    if let Some((key, a, b)) = km
        .conflicts()
        .into_iter()
        .find(|(_, a, b)| t.keys.contains_key(a.name()) || t.keys.contains_key(b.name()))
    {
        let place = |action: super::keymap::Action| {
            if t.keys.contains_key(action.name()) {
                let e = keys_at(action.name(), String::new());
                format!("{}:{}:{}", path.display(), e.line, e.col)
            } else {
                "its default binding".to_string()
            }
        };
        let (first, second) = if t.keys.contains_key(a.name()) {
            (a, b)
        } else {
            (b, a)
        };
        return Err(keys_at(
            first.name(),
            format!(
                "`{key}` would do two things in the same pane: `{}` (here) and `{}` ({}); give one of them another key",
                first.name(),
                second.name(),
                place(second)
            ),
        ));
    }
    for (name, value) in &t.theme {
        let one = BTreeMap::from([(name.clone(), value.clone())]);
        Theme::new(ColorMode::TrueColor, &one)
            .map_err(|e| ConfigError::at(path, &text, Some("tui.theme"), name, e))?;
    }
    Ok(())
}
