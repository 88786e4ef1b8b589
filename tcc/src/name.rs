//! Service names: [`Name`].

/// A service's name: up to 23 bytes are stored inline, so naming a service
/// costs no allocation of its own, and copies are cheap.
pub(crate) type Name = smol_str::SmolStr;

/// A [`Name`] holding `text`.
pub(crate) fn name(text: &str) -> Name {
    Name::new(text)
}
