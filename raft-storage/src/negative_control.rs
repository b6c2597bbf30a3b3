//! Negative controls: test-only switches that each break one guarantee on purpose, so the
//! Jepsen harness (`jepsen/`) can show that the matching checker catches the breakage. A
//! checker never shown to fail proves nothing.
//!
//! | control         | what breaks                                              | caught by |
//! |-----------------|----------------------------------------------------------|-----------|
//! | `stale-reads`   | sacred reads skip the ReadIndex barrier (node `replica`)  | register (linearizability) |
//! | `skip-fencing`  | the state machine accepts stale fencing tokens           | lease |
//! | `no-dedup`      | the state machine ignores idempotency keys               | idempotent (exactly-once) |
//! | `serve-expired` | the relaxed tier returns expired entries                 | relaxed (TTL) |
//!
//! A control is chosen at run time with the environment variable [`ENV`]
//! (`SEAM_NEGATIVE_CONTROL=stale-reads`), and honoured only by a build with the cargo
//! feature `negative-controls` (`cargo build -p seam-node --features negative-controls`).
//! A build without the feature refuses to start when the variable is set ([`check_env`]),
//! so a control can neither be switched on in production by accident nor be believed to
//! run when it does not. Every node of a cluster must get the same value: `skip-fencing`
//! and `no-dedup` change what the state machine applies.

/// The environment variable that chooses a control.
pub const ENV: &str = "SEAM_NEGATIVE_CONTROL";

/// One deliberately broken guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// Sacred reads are served from local state without the ReadIndex barrier.
    StaleReads,
    /// Writes carrying a fencing token are accepted whatever the key's current token.
    SkipFencing,
    /// Idempotency keys are ignored: a retried request is applied again.
    NoDedup,
    /// The relaxed tier serves entries past their expiry.
    ServeExpired,
}

impl Control {
    /// Every control.
    pub const ALL: [Control; 4] =
        [Control::StaleReads, Control::SkipFencing, Control::NoDedup, Control::ServeExpired];

    /// The control's name, as [`ENV`] spells it.
    pub fn name(self) -> &'static str {
        match self {
            Control::StaleReads => "stale-reads",
            Control::SkipFencing => "skip-fencing",
            Control::NoDedup => "no-dedup",
            Control::ServeExpired => "serve-expired",
        }
    }

    /// The control named `name`.
    pub fn parse(name: &str) -> Option<Control> {
        Control::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Whether this build honours negative controls.
pub const COMPILED: bool = cfg!(feature = "negative-controls");

/// The control chosen by [`ENV`] (`None` when unset or empty), or why the process must
/// not start: the value names no control, or this build was compiled without the
/// `negative-controls` feature and cannot honour it.
pub fn check_env() -> Result<Option<Control>, String> {
    let Some(value) = std::env::var_os(ENV) else { return Ok(None) };
    let value = value.to_string_lossy();
    if value.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = Control::ALL.iter().map(|c| c.name()).collect();
    let Some(control) = Control::parse(&value) else {
        return Err(format!("{ENV}={value:?} names no negative control (known: {})", names.join(", ")));
    };
    if !COMPILED {
        return Err(format!(
            "{ENV}={value} is set, but this binary was built without negative controls; \
             unset it, or build the test binary with \
             `cargo build -p seam-node --features negative-controls`"
        ));
    }
    tracing::warn!(
        control = control.name(),
        "NEGATIVE CONTROL ACTIVE: this node breaks a guarantee on purpose"
    );
    Ok(Some(control))
}

/// Whether `control` is switched on in this process (read once from [`ENV`]).
#[cfg(feature = "negative-controls")]
pub fn active(control: Control) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<Control>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| std::env::var(ENV).ok().and_then(|value| Control::parse(&value))) == Some(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for control in Control::ALL {
            assert_eq!(Control::parse(control.name()), Some(control));
        }
        assert_eq!(Control::parse("stale"), None);
    }
}
