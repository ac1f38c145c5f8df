//! A masked prompt for an SSH key's passphrase or a login password.

use ratatui_textarea::TextArea;

/// A masked field for an SSH key's passphrase or a login password; the answer goes back
/// to the connection.
pub struct PassphrasePrompt {
    pub asked: crate::ssh::remote::Asked,
    pub input: TextArea<'static>,
    pub(crate) reply: Option<tokio::sync::oneshot::Sender<Option<String>>>,
}

impl std::fmt::Debug for PassphrasePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassphrasePrompt({})", self.asked.subject())
    }
}

impl PassphrasePrompt {
    pub(crate) fn answer(mut self, value: Option<String>) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(value);
        }
    }
}
