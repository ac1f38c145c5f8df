//! The cockpit (`trainctl-tui`): app state and update ([`app`]), key bindings
//! ([`keymap`]), colours ([`theme`]), drawing ([`ui`]), chart series ([`series`]) and the
//! event loop ([`run`]).

pub mod app;
pub mod keymap;
pub mod panes;
pub mod popups;
pub mod run;
pub mod series;
pub mod settings;
pub mod theme;
pub mod ui;

use crate::engine::Engine;
use std::sync::Arc;

/// The launch-form validator for an engine: the provider's own `plan`, no side effect.
pub fn validator(engine: &Engine) -> app::Validator {
    let engine = engine.clone();
    Arc::new(
        move |provider: &str, req: &crate::provider::LaunchRequest| {
            let p = engine.provider(provider).map_err(|e| e.to_string())?;
            p.check(req).map_err(|e| e.to_string())
        },
    )
}

/// A new app wired to `engine`: providers, catalog, default provider, keymap and theme from
/// the user config.
pub fn new_app(
    engine: &Engine,
    readonly: bool,
    project: Option<String>,
    theme: theme::Theme,
) -> Result<app::App, String> {
    let cfg = engine.config();
    let keymap = keymap::Keymap::from_config(&cfg.tui)?;
    let mut a = app::App::new(
        keymap,
        theme,
        readonly,
        cfg.tui.log_scrollback,
        validator(engine),
    );
    a.bell = cfg.tui.bell;
    a.providers = engine.provider_names();
    a.catalog = a
        .providers
        .iter()
        .filter_map(|p| {
            engine
                .provider(p)
                .ok()
                .map(|pr| (p.clone(), pr.instance_types()))
        })
        .collect();
    a.offers = a
        .providers
        .iter()
        .filter_map(|p| engine.provider(p).ok())
        .flat_map(|pr| pr.offers())
        .collect();
    a.default_provider = cfg.default_provider.clone();
    a.project = project;
    Ok(a)
}

#[cfg(test)]
mod tests;
